"""From what the user typed to a validated job: recipe -> preset -> overrides -> nodes.

:func:`resolve_job` is the one function every CLI command calls before showing, rendering
or submitting anything; it raises :class:`UserError` (one line, exit 2) for any mistake, so
nothing is written for a job that would not run.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import __version__
from .config import JobConfig
from .errors import LayoutError, UserError
from .hf.pretrained import apply_pretrained
from .layout import RankInfo, rank_map, scale_layout
from .overrides import apply_env, apply_overrides
from .provenance import preset_file
from .recipe import load_recipe
from .validation import check_batch_fit, check_config, check_model_fit


@dataclass
class ResolvedJob:
    """A validated job with its world size and node count."""

    config: JobConfig
    world_size: int
    nodes: int
    procs_per_node: int
    toolkit_version: str = __version__
    recipe_file: str | None = None
    """The file defining the preset (provenance and code snapshots)."""
    _rank_map: list[RankInfo] | None = field(default=None, repr=False)

    @property
    def rank_map(self) -> list[RankInfo]:
        if self._rank_map is None:
            self._rank_map = rank_map(self.config.layout, self.procs_per_node)
        return self._rank_map

    @property
    def node_procs(self) -> list[int]:
        """Ranks on each node: procs_per_node on every node, fewer on the last one when the
        layout does not fill it (``cluster.allow_partial_nodes``)."""
        last = self.world_size - self.procs_per_node * (self.nodes - 1)
        return [self.procs_per_node] * (self.nodes - 1) + [last]

    @property
    def uses_gpus(self) -> bool:
        return self.config.cluster.gpus_per_node > 0

    def manifest(self) -> dict:
        """The resolved config file a job reads (``job.json``)."""
        return {
            "toolkit_version": self.toolkit_version,
            "config_hash": self.config.config_hash(),
            "world_size": self.world_size,
            "nodes": self.nodes,
            "procs_per_node": self.procs_per_node,
            "job": self.config.to_dict(),
        }


def validate(job: JobConfig, world_size: int | None = None) -> ResolvedJob:
    """Check ``job`` (config, model fit, layout, batch, node fit) and return it finalized:
    a copy whose unset dp sizes and node count are filled in. ``job`` is not changed."""
    job = copy.deepcopy(job)
    apply_pretrained(job)  # architecture fields from pretrained checkpoints, before any check uses them
    check_config(job)
    if world_size is None and job.cluster.nodes is not None:
        world_size = job.cluster.nodes * job.cluster.procs_per_node
    check_model_fit(job)
    world = job.layout.finalize(world_size)
    check_batch_fit(job)
    ppn = job.cluster.procs_per_node
    if world % ppn and not job.cluster.allow_partial_nodes:
        raise LayoutError(
            f"the world size {world} does not fill whole nodes of cluster.procs_per_node={ppn} "
            f"(cluster.allow_partial_nodes=true runs {world % ppn} process(es) on the last node)"
        )
    nodes = -(-world // ppn)
    job.cluster.nodes = nodes
    return ResolvedJob(config=job, world_size=world, nodes=nodes, procs_per_node=ppn)


def scale_to_nodes(job: JobConfig, nodes: int) -> ResolvedJob:
    """``job`` resized to ``nodes`` nodes and validated, or a failure naming node counts that
    work. ``job`` is not changed."""
    if nodes < 1:
        raise UserError(f"--nodes {nodes}: must be >= 1")
    check_config(job)
    job.layout.check_sizes()  # before scaling divides by a size; not a node-count problem
    as_is = _as_is(job)
    if as_is is not None and as_is.nodes == nodes:
        return as_is  # the layout's own node count: nothing to scale, whatever the mode
    try:
        return _scaled(job, nodes)
    except LayoutError as exc:
        limit = max(4 * nodes, 16)
        working: list[int] = []
        for n in range(1, limit + 1):
            if len(working) == 10:  # enough to choose from
                break
            if n != nodes and _fits(job, n):
                working.append(n)
        hint = f"node counts that work: {', '.join(map(str, working))}" if working else f"no node count up to {limit} works"
        raise LayoutError(f"--nodes {nodes}: {exc}; {hint}") from None


def _scaled(job: JobConfig, nodes: int) -> ResolvedJob:
    world = nodes * job.cluster.procs_per_node
    layout = scale_layout(job.layout, world)  # a copy
    cluster = dataclasses.replace(job.cluster, nodes=nodes)
    return validate(dataclasses.replace(job, layout=layout, cluster=cluster), world)


def _as_is(job: JobConfig) -> ResolvedJob | None:
    """The job validated without scaling, or None when it does not validate as it is."""
    try:
        return validate(job)
    except LayoutError:
        return None


def _fits(job: JobConfig, nodes: int) -> bool:
    try:
        _scaled(job, nodes)
        return True
    except LayoutError:
        return False


def resolve_job(
    recipe: str,
    preset: str | None = None,
    *,
    nodes: int | None = None,
    sets: Sequence[str] = (),
    env: Sequence[str] = (),
    job_name: str | None = None,
) -> ResolvedJob:
    """Load ``recipe``/``preset``, apply ``--set``/``--env``/``--job-name``, scale to
    ``--nodes`` and validate everything."""
    source = load_recipe(recipe)
    job = source.build(preset)
    apply_overrides(job, sets)
    apply_env(job, env)
    if job_name is not None:
        if not job_name.strip():
            raise UserError("--job-name: must not be empty")
        job.job_name = job_name
    resolved = scale_to_nodes(job, nodes) if nodes is not None else validate(job)
    resolved.recipe_file = preset_file(source, preset)
    return resolved


def load_manifest(data: dict) -> ResolvedJob:
    """Rebuild a ResolvedJob from a ``job.json`` written by render/submit."""
    job = JobConfig.from_dict(data["job"])
    resolved = validate(job, data.get("world_size"))
    resolved.toolkit_version = data.get("toolkit_version", __version__)
    return resolved
