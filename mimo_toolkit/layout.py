"""Per-module parallel layouts as plain arithmetic, validated before any process group exists.

A MIMO job has modules (encoders and one language model). Each module gets a grid of
``tp x cp x dp x pp`` ranks starting at ``rank_offset`` (ranks are numbered with TP
innermost, then CP, then DP, then PP outermost: the order megatron-core's HyperCommGrid uses
with ``dim_names=["tp", "cp", "dp", "pp"]``). Three deployment modes place the grids:

* ``homogeneous``: every module has the same (tp, cp, pp, dp) over all ranks.
* ``colocated``: every module spans all ranks, each with its own tp/cp/pp/dp.
* ``heterogeneous``: modules own disjoint rank ranges that tile ``[0, world)`` exactly.

This module imports neither torch nor megatron; the runtime builds its HyperCommGrids from
the same numbers (``mimo_toolkit.runtime.parallel.grids``), and the rank map printed by
``mimo-toolkit show`` is computed by the same :meth:`ModuleParallelismConfig.coordinates`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .errors import LayoutError

if TYPE_CHECKING:  # pragma: no cover
    from .config import JobConfig

DeploymentMode = Literal["colocated", "homogeneous", "heterogeneous"]

#: The order of grid dimensions, innermost first.
GRID_DIMS = ("tp", "cp", "dp", "pp")

#: Short names used by ``--set layout.<module>.<short>`` and the layout table.
SHORT_NAMES = {
    "tp": "tensor_parallel",
    "pp": "pipeline_parallel",
    "cp": "context_parallel",
    "ep": "expert_parallel",
    "dp": "data_parallel",
    "rank_offset": "rank_offset",
    "scalable": "scalable",
}


@dataclass(kw_only=True)
class ModuleParallelismConfig:
    """How one module is split over its ranks."""

    tensor_parallel: int = 1
    """Tensor-parallel size (tp); must divide the module's attention heads."""
    pipeline_parallel: int = 1
    """Pipeline-parallel size (pp); must divide the module's layers."""
    context_parallel: int = 1
    """Context-parallel size (cp), splitting the sequence (LLM only)."""
    expert_parallel: int = 1
    """Expert-parallel size (ep) for mixture-of-experts layers; must divide cp x dp."""
    data_parallel: int | None = None
    """Data-parallel size (dp); derived from the world size when None (not heterogeneous)."""
    rank_offset: int = 0
    """First global rank of the module (heterogeneous mode)."""
    scalable: bool = False
    """`--nodes` grows this module's dp (tp/cp/pp kept) in heterogeneous mode."""

    @property
    def model_parallel_size(self) -> int:
        """Ranks of one replica: tp x cp x pp."""
        return self.tensor_parallel * self.context_parallel * self.pipeline_parallel

    @property
    def dp(self) -> int:
        if self.data_parallel is None:
            raise LayoutError("data_parallel is not resolved yet; call finalize() first")
        return self.data_parallel

    @property
    def size(self) -> int:
        """Ranks the module occupies: tp x cp x pp x dp."""
        return self.model_parallel_size * self.dp

    @property
    def ranks(self) -> range:
        return range(self.rank_offset, self.rank_offset + self.size)

    @property
    def shape(self) -> list[int]:
        """Grid shape in :data:`GRID_DIMS` order."""
        return [self.tensor_parallel, self.context_parallel, self.dp, self.pipeline_parallel]

    def coordinates(self, rank: int) -> dict[str, int] | None:
        """The (tp, cp, dp, pp) coordinates of a global rank, or None outside the module."""
        if rank not in self.ranks:
            return None
        local = rank - self.rank_offset
        coords = {}
        for name, size in zip(GRID_DIMS, self.shape):
            coords[name] = local % size
            local //= size
        return coords

    def rank_at(self, tp: int = 0, cp: int = 0, dp: int = 0, pp: int = 0) -> int:
        """The global rank at the given coordinates (inverse of :meth:`coordinates`)."""
        t, c, d, _ = self.shape
        return self.rank_offset + tp + t * (cp + c * (dp + d * pp))

    def sizes(self) -> dict[str, int | None]:
        return {
            "tp": self.tensor_parallel,
            "cp": self.context_parallel,
            "pp": self.pipeline_parallel,
            "ep": self.expert_parallel,
            "dp": self.data_parallel,
        }


@dataclass(kw_only=True)
class MimoParallelismConfig:
    """The layout of every module of a MIMO model and how the modules share ranks."""

    module_parallelisms: dict[str, ModuleParallelismConfig]
    """Layout of each module, by module name."""
    language_module: str = "llm"
    """Name of the language module (the LLM the encoders feed)."""
    deployment_mode: DeploymentMode = "colocated"
    """colocated, homogeneous or heterogeneous (see the module docstring)."""
    special_token_ids: dict[str, int] = field(default_factory=dict)
    """Placeholder token id of each encoder module in the LLM's input ids."""

    @property
    def language(self) -> ModuleParallelismConfig:
        return self.module_parallelisms[self.language_module]

    @property
    def encoder_names(self) -> list[str]:
        return [n for n in self.module_parallelisms if n != self.language_module]

    # ---- validation ------------------------------------------------------------------
    def finalize(self, world_size: int | None = None) -> int:
        """Validate the layout, derive unset DP sizes, and return the world size.

        ``world_size`` is required in colocated and homogeneous modes when some DP size is
        unset; in heterogeneous mode it is the sum of the module sizes and, when given,
        must equal it.
        """
        self.check_sizes()
        if self.deployment_mode == "heterogeneous":
            return self._finalize_heterogeneous(world_size)
        return self._finalize_shared(world_size)

    def check_sizes(self) -> None:
        """The language module exists, sizes are >= 1 and offsets >= 0 (before any arithmetic
        divides by a size)."""
        if self.language_module not in self.module_parallelisms:
            raise LayoutError(
                f"layout.language_module={self.language_module!r} is not among the modules "
                f"{sorted(self.module_parallelisms)}"
            )
        for name, m in self.module_parallelisms.items():
            for short, value in m.sizes().items():
                if value is not None and value < 1:
                    raise LayoutError(f"layout.{name}.{short}={value} must be >= 1")
            if m.rank_offset < 0:
                raise LayoutError(f"layout.{name}.rank_offset={m.rank_offset} must be >= 0")

    def _finalize_shared(self, world_size: int | None) -> int:
        mode = self.deployment_mode
        for name, m in self.module_parallelisms.items():
            if m.rank_offset != 0:
                raise LayoutError(f"layout.{name}.rank_offset={m.rank_offset}: {mode} modules start at rank 0")
        if world_size is None:
            sizes = {m.size for m in self.module_parallelisms.values() if m.data_parallel is not None}
            if not sizes:
                raise LayoutError("the world size is unknown: set layout.<module>.dp or pass --nodes")
            world_size = max(sizes)
        for name, m in self.module_parallelisms.items():
            mp = m.model_parallel_size
            if m.data_parallel is None:
                if world_size % mp:
                    raise LayoutError(
                        f"layout.{name}: tp*cp*pp={mp} does not divide the world size {world_size}"
                    )
                m.data_parallel = world_size // mp
            if m.size != world_size:
                raise LayoutError(
                    f"layout.{name}: tp*cp*pp*dp={m.tensor_parallel}*{m.context_parallel}*"
                    f"{m.pipeline_parallel}*{m.data_parallel}={m.size} must equal the world size "
                    f"{world_size} in {mode} mode"
                )
        if mode == "homogeneous":
            ref_name = self.language_module
            ref = self.language.sizes()
            for name, m in self.module_parallelisms.items():
                for short in ("tp", "cp", "pp", "dp"):
                    if m.sizes()[short] != ref[short]:
                        raise LayoutError(
                            f"layout.{name}.{short}={m.sizes()[short]} differs from "
                            f"layout.{ref_name}.{short}={ref[short]}: homogeneous modules share one layout"
                        )
        self._check_dp_ratios()
        self._check_expert_parallel()
        return world_size

    def _finalize_heterogeneous(self, world_size: int | None) -> int:
        for name, m in self.module_parallelisms.items():
            if m.data_parallel is None:
                raise LayoutError(f"layout.{name}.dp must be set in heterogeneous mode")
        spans = sorted((m.rank_offset, m.rank_offset + m.size, name) for name, m in self.module_parallelisms.items())
        cursor = 0
        for start, end, name in spans:
            if start < cursor:
                other = next(n for s, e, n in spans if n != name and s < end and start < e)
                raise LayoutError(
                    f"layout.{name}: ranks [{start}, {end}) overlap layout.{other}'s ranks "
                    f"[{self.module_parallelisms[other].rank_offset}, "
                    f"{self.module_parallelisms[other].rank_offset + self.module_parallelisms[other].size})"
                )
            if start > cursor:
                raise LayoutError(
                    f"layout.{name}.rank_offset={start}: ranks [{cursor}, {start}) belong to no module"
                )
            cursor = end
        total = cursor
        if world_size is not None and world_size != total:
            raise LayoutError(
                f"the modules cover ranks [0, {total}) but the world size is {world_size}: "
                f"ranks [{min(total, world_size)}, {max(total, world_size)}) "
                + ("belong to no module" if world_size > total else "do not exist")
            )
        self._check_dp_ratios()
        self._check_expert_parallel()
        return total

    def _check_dp_ratios(self) -> None:
        """Encoder and LLM DP sizes must divide one another (the bridge fans in or out)."""
        lm_dp = self.language.dp
        for name in self.encoder_names:
            dp = self.module_parallelisms[name].dp
            if lm_dp % dp and dp % lm_dp:
                raise LayoutError(
                    f"layout.{name}.dp={dp} and layout.{self.language_module}.dp={lm_dp} must "
                    f"divide one another"
                )

    def _check_expert_parallel(self) -> None:
        for name, m in self.module_parallelisms.items():
            ep = m.expert_parallel
            if ep > 1 and (m.context_parallel * m.dp) % ep:
                raise LayoutError(
                    f"layout.{name}.ep={ep} must divide cp*dp={m.context_parallel}*{m.dp}"
                )

    # ---- queries ---------------------------------------------------------------------
    def world_size(self) -> int:
        return max(m.rank_offset + m.size for m in self.module_parallelisms.values())

    def modules_of_rank(self, rank: int) -> list[str]:
        """Modules a rank takes part in, in declaration order."""
        return [n for n, m in self.module_parallelisms.items() if rank in m.ranks]

    def copy(self) -> "MimoParallelismConfig":
        return dataclasses.replace(
            self,
            module_parallelisms={n: dataclasses.replace(m) for n, m in self.module_parallelisms.items()},
            special_token_ids=dict(self.special_token_ids),
        )


# --------------------------------------------------------------------------------------
# Checks that need the model and the training settings
# --------------------------------------------------------------------------------------


def check_model_fit(job: "JobConfig") -> None:
    """TP divides heads (and query groups), PP divides layers, CP splits the sequence and
    EP divides the experts. Needs no resolved DP, so it runs before :meth:`finalize`."""
    layout, train = job.layout, job.train
    layout.check_sizes()
    for name, m in layout.module_parallelisms.items():
        arch = job.model[name]
        tp, pp, cp = m.tensor_parallel, m.pipeline_parallel, m.context_parallel
        if arch.num_attention_heads % tp:
            raise LayoutError(
                f"layout.{name}.tp={tp} does not divide model.{name}.num_attention_heads="
                f"{arch.num_attention_heads}"
            )
        if arch.query_groups % tp:
            raise LayoutError(
                f"layout.{name}.tp={tp} does not divide model.{name}.num_query_groups={arch.query_groups}"
            )
        if arch.num_layers % pp:
            raise LayoutError(
                f"layout.{name}.pp={pp} does not divide model.{name}.num_layers={arch.num_layers}"
            )
        if cp > 1 and name != layout.language_module:
            raise LayoutError(f"layout.{name}.cp={cp}: context parallelism applies to the language module only")
        if cp > 1 and train.seq_length % (2 * cp):
            raise LayoutError(
                f"layout.{name}.cp={cp}: train.seq_length={train.seq_length} must be divisible by 2*cp={2 * cp}"
            )
        if m.expert_parallel > 1:
            experts = getattr(arch, "num_moe_experts", None) or 0
            if not experts or experts % m.expert_parallel:
                raise LayoutError(
                    f"layout.{name}.ep={m.expert_parallel} needs a mixture-of-experts model whose "
                    f"expert count it divides (model.{name} has {experts} experts)"
                )


def check_batch_fit(job: "JobConfig") -> None:
    """After :meth:`finalize`: the global batch is accumulated from global micro-batches of ``mbs x llm.dp`` samples;
    every module's replicas take equal contiguous slices of each global micro-batch."""
    layout, train = job.layout, job.train
    lm_name = layout.language_module
    lm_dp = layout.language.dp
    mbs, gbs = train.micro_batch_size, train.global_batch_size
    per_micro = mbs * lm_dp
    if gbs % per_micro:
        raise LayoutError(
            f"train.global_batch_size={gbs} is not divisible by train.micro_batch_size={mbs} x "
            f"layout.{lm_name}.dp={lm_dp} = {per_micro}"
        )
    for name in layout.encoder_names:
        dp = layout.module_parallelisms[name].dp
        if per_micro % dp:
            raise LayoutError(
                f"layout.{name}.dp={dp} cannot split a micro-batch of train.micro_batch_size={mbs} x "
                f"layout.{lm_name}.dp={lm_dp} = {per_micro} samples evenly; use a micro_batch_size "
                f"divisible by {dp // lm_dp}"
            )


# --------------------------------------------------------------------------------------
# Scaling to a node count
# --------------------------------------------------------------------------------------


def scale_layout(layout: MimoParallelismConfig, world_size: int) -> MimoParallelismConfig:
    """A copy of ``layout`` resized to ``world_size`` ranks, keeping every tp/cp/pp.

    colocated and homogeneous: every module's dp becomes ``world / (tp*cp*pp)``.
    heterogeneous: the modules marked ``scalable`` share the ranks the fixed modules leave,
    their dp multiplied by one common factor; ranges are re-packed in their original order.
    Raises :class:`LayoutError` when that is impossible.
    """
    new = layout.copy()
    if new.deployment_mode != "heterogeneous":
        for m in new.module_parallelisms.values():
            m.data_parallel = None
        new.finalize(world_size)
        return new
    scalable = [n for n, m in new.module_parallelisms.items() if m.scalable]
    if not scalable:
        raise LayoutError("no module is marked scalable (layout.<module>.scalable=true) to fill more ranks")
    fixed = sum(m.size for n, m in new.module_parallelisms.items() if n not in scalable)
    current = sum(new.module_parallelisms[n].size for n in scalable)
    room = world_size - fixed
    if room <= 0 or (room * new.module_parallelisms[scalable[0]].dp) % current:
        raise LayoutError(f"{world_size} ranks cannot be shared by the scalable modules {scalable}")
    for n in scalable:
        m = new.module_parallelisms[n]
        dp_times = m.dp * room
        if dp_times % current:
            raise LayoutError(f"layout.{n}.dp={m.dp} cannot be scaled to fill {world_size} ranks")
        m.data_parallel = dp_times // current
    cursor = 0
    for name, m in sorted(new.module_parallelisms.items(), key=lambda kv: kv[1].rank_offset):
        m.rank_offset = cursor
        cursor += m.size
    new.finalize(world_size)
    return new


# --------------------------------------------------------------------------------------
# The rank map
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankInfo:
    """Where one global rank runs and what it does."""

    rank: int
    node: int
    local_rank: int
    modules: dict[str, dict[str, int]]
    """Coordinates (tp, cp, dp, pp) in each module the rank takes part in."""


def rank_map(layout: MimoParallelismConfig, procs_per_node: int) -> list[RankInfo]:
    """The node, local rank and module coordinates of every global rank."""
    out = []
    for rank in range(layout.world_size()):
        modules = {}
        for name, m in layout.module_parallelisms.items():
            coords = m.coordinates(rank)
            if coords is not None:
                modules[name] = coords
        out.append(RankInfo(rank, rank // procs_per_node, rank % procs_per_node, modules))
    return out
