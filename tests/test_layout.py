"""Every layout rule has a failing case here, with its exact one-line message.

The rules live in mimo_toolkit/layout.py (rank arithmetic) and mimo_toolkit/validation.py; each
case below breaks exactly one of them starting from a built-in preset, through the same
``resolve_job`` every CLI command calls.
"""

import pytest

from mimo_toolkit.errors import LayoutError, UserError
from mimo_toolkit.layout import MimoParallelismConfig, ModuleParallelismConfig
from mimo_toolkit.resolve import resolve_job

CASES = {
    "sizes >= 1 (tp)": (
        ("llava", "1node", ["layout.llm.tp=0"], None),
        "layout.llm.tp=0 must be >= 1",
    ),
    "sizes >= 1 (dp)": (
        ("llava", "4node", ["layout.vision.dp=0"], None),
        "layout.vision.dp=0 must be >= 1",
    ),
    "sizes >= 1 before --nodes scaling": (
        ("llava", "4node", ["layout.llm.pp=0"], 8),
        "layout.llm.pp=0 must be >= 1",
    ),
    "offset >= 0": (
        ("llava", "4node", ["layout.vision.rank_offset=-1"], None),
        "layout.vision.rank_offset=-1 must be >= 0",
    ),
    "language module is a language model": (
        ("llava", "1node", ["layout.language_module=vision"], None),
        "layout.language_module='vision' is not a language model in model",
    ),
    "colocated sizes = world": (
        ("llava", "1node", ["layout.llm.dp=1"], None),
        "layout.llm: tp*cp*pp*dp=4*1*1*1=4 must equal the world size 8 in colocated mode",
    ),
    "colocated tp*cp*pp divides the world": (
        ("llava", "1node", ["layout.llm.pp=4"], None),
        "layout.llm: tp*cp*pp=16 does not divide the world size 8",
    ),
    "colocated world size known": (
        ("llava", "1node", ["cluster.nodes=none"], None),
        "the world size is unknown: set layout.<module>.dp or pass --nodes",
    ),
    "homogeneous modules identical": (
        ("llava", "1node", ["layout.mode=homogeneous"], None),
        "layout.vision.tp=1 differs from layout.llm.tp=4: homogeneous modules share one layout",
    ),
    "heterogeneous dp explicit": (
        ("llava", "4node", ["layout.vision.dp=none"], None),
        "layout.vision.dp must be set in heterogeneous mode",
    ),
    "heterogeneous ranges disjoint": (
        ("llava", "4node", ["layout.llm.rank_offset=4"], None),
        "layout.llm: ranks [4, 28) overlap layout.vision's ranks [0, 8)",
    ),
    "heterogeneous no gap": (
        ("llava", "4node", ["layout.llm.rank_offset=9"], None),
        "layout.llm.rank_offset=9: ranks [8, 9) belong to no module",
    ),
    "heterogeneous ranges tile the world": (
        ("llava", "4node", ["layout.llm.dp=5"], None),
        "the modules cover ranks [0, 28) but the world size is 32: ranks [28, 32) belong to no module",
    ),
    "dp sizes divide one another": (
        ("llava", "4node", ["layout.vision.tp=2", "layout.vision.dp=4"], None),
        "layout.vision.dp=4 and layout.llm.dp=6 must divide one another",
    ),
    "tp divides attention heads": (
        ("llava", "1node", ["layout.llm.tp=3"], None),
        "layout.llm.tp=3 does not divide model.llm.num_attention_heads=32",
    ),
    "tp divides query groups": (
        ("llava", "1node", ["model.llm.num_query_groups=2"], None),
        "layout.llm.tp=4 does not divide model.llm.num_query_groups=2",
    ),
    "pp divides layers": (
        ("llava", "1node", ["layout.llm.pp=3"], None),
        "layout.llm.pp=3 does not divide model.llm.num_layers=32",
    ),
    "cp only for the language module": (
        ("llava", "1node", ["layout.vision.cp=2"], None),
        "layout.vision.cp=2: context parallelism applies to the language module only",
    ),
    "sequence divisible by 2*cp": (
        ("llava", "tiny", ["train.seq_length=60", "layout.llm.cp=4"], None),
        "layout.llm.cp=4: train.seq_length=60 must be divisible by 2*cp=8",
    ),
    "ep needs experts": (
        ("llava", "1node", ["layout.llm.ep=2"], None),
        "layout.llm.ep=2: expert parallelism needs mixture-of-experts layers, which no model here has",
    ),
    "encoders are one pipeline stage": (
        ("llava", "tiny", ["layout.vision.pp=2"], None),
        "layout.vision.pp=2: encoders run as one pipeline stage (megatron-core 0.16.1's CLIPViTModel has no "
        "stages); use tp or dp",
    ),
    "homogeneous pp > 1 pipelines the encoders too": (
        ("llava", "tiny", ["layout.mode=homogeneous", "layout.llm.tp=1", "layout.llm.pp=2", "layout.vision.pp=2"], None),
        "layout.vision.pp=2: encoders run as one pipeline stage (megatron-core 0.16.1's CLIPViTModel has no "
        "stages); use tp or dp (homogeneous modules share the LLM's pp: use colocated to pipeline only the LLM)",
    ),
    "no context parallelism in the runtime": (
        ("llava", "tiny", ["layout.llm.tp=1", "layout.llm.cp=2"], None),
        "layout.llm.cp=2: context parallelism is not implemented by the runtime (it does not split the sequence "
        "per cp rank); split the language model with tp or pp instead",
    ),
    "something trains": (
        ("llava", "tiny", ["freeze.vision=true", "freeze.vision_projector=true", "freeze.llm=true"], None),
        "freeze: every module and projector is frozen; there is nothing to train",
    ),
    "global batch divisible by micro batch x llm dp": (
        ("llava", "1node", ["train.global_batch_size=250"], None),
        "train.global_batch_size=250 is not divisible by train.micro_batch_size=16 x layout.llm.dp=2 = 32",
    ),
    "encoder dp splits the micro batch": (
        ("multi_encoder", "1node", ["train.micro_batch_size=1", "train.global_batch_size=256"], None),
        "layout.vision.dp=8 cannot split a micro-batch of train.micro_batch_size=1 x layout.llm.dp=2 = 2 "
        "samples evenly; use a micro_batch_size divisible by 4",
    ),
    "--nodes >= 1": (
        ("llava", "1node", [], 0),
        "--nodes 0: must be >= 1",
    ),
    "--nodes scaling suggests node counts": (
        ("llava", "4node", [], 512),
        "--nodes 512: train.global_batch_size=288 is not divisible by train.micro_batch_size=4 x "
        "layout.llm.dp=1022 = 4088; node counts that work: 2, 3, 4, 5, 7, 10, 13, 19, 37",
    ),
    "--nodes needs a scalable module": (
        ("llava", "4node", ["layout.llm.scalable=false"], 8),
        "--nodes 8: no module is marked scalable (layout.<module>.scalable=true) to fill more ranks; "
        "no node count up to 32 works",
    ),
    "nodes filled by procs_per_node": (
        ("llava", "4node", ["cluster.nodes=none", "layout.vision.tp=2", "layout.llm.rank_offset=4"], None),
        "the world size 28 does not fill whole nodes of cluster.procs_per_node=8 (cluster.allow_partial_nodes=true runs 4 process(es) on the last node)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_layout_rule(case):
    (recipe, preset, sets, nodes), message = CASES[case]
    with pytest.raises(UserError) as info:
        resolve_job(recipe, preset, sets=sets, nodes=nodes)
    assert str(info.value) == message


def test_language_module_present_in_layout():
    layout = MimoParallelismConfig(
        module_parallelisms={"vision": ModuleParallelismConfig()}, language_module="llm"
    )
    with pytest.raises(LayoutError, match=r"^layout.language_module='llm' is not among the modules \['vision'\]$"):
        layout.finalize(8)


@pytest.mark.parametrize(
    "recipe, preset, nodes, world",
    [("llava", "4node", 8, 64), ("llava", "1node", 2, 16), ("multi_encoder", "4node", 2, 16)],
)
def test_nodes_scaling_that_works(recipe, preset, nodes, world):
    """The passing side of the --nodes rule: tp/cp/pp kept, dp grown, ranges re-packed."""
    job = resolve_job(recipe, preset, nodes=nodes, sets=["train.global_batch_size=2016"] if nodes == 8 else [])
    assert (job.world_size, job.nodes) == (world, nodes)
    llm = job.config.layout.language
    assert llm.tp == 4 and llm.rank_offset + llm.size == world
