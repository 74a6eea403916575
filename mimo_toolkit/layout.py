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
from typing import Literal

from .errors import LayoutError

DeploymentMode = Literal["colocated", "homogeneous", "heterogeneous"]

#: The order of grid dimensions, innermost first.
GRID_DIMS = ("tp", "cp", "dp", "pp")

#: The layout fields ``--set layout.<module>.<key>`` addresses (the field names themselves).
LAYOUT_KEYS = ("tp", "pp", "cp", "ep", "dp", "rank_offset", "scalable")


@dataclass(kw_only=True)
class ModuleParallelismConfig:
    """How one module is split over its ranks. The field names are the ones the command
    line uses (``--set layout.llm.tp=2``); megatron-core's names
    (``tensor_model_parallel_size`` ...) appear only where its configs are built."""

    tp: int = 1
    """Tensor-parallel size; must divide the module's attention heads."""
    pp: int = 1
    """Pipeline-parallel size; must divide the module's layers."""
    cp: int = 1
    """Context-parallel size, splitting the sequence (LLM only)."""
    ep: int = 1
    """Expert-parallel size for mixture-of-experts layers; must divide cp x dp."""
    dp: int | None = None
    """Data-parallel size; derived from the world size when None (not heterogeneous)."""
    rank_offset: int = 0
    """First global rank of the module (heterogeneous mode)."""
    scalable: bool = False
    """`--nodes` grows this module's dp (tp/cp/pp kept) in heterogeneous mode."""

    @property
    def model_parallel_size(self) -> int:
        """Ranks of one replica: tp x cp x pp."""
        return self.tp * self.cp * self.pp

    @property
    def size(self) -> int:
        """Ranks the module occupies: tp x cp x pp x dp."""
        if self.dp is None:
            raise LayoutError("layout: dp is not resolved yet; finalize() the layout first")
        return self.model_parallel_size * self.dp

    @property
    def ranks(self) -> range:
        return range(self.rank_offset, self.rank_offset + self.size)

    @property
    def shape(self) -> list[int]:
        """Grid shape in :data:`GRID_DIMS` order."""
        return [self.tp, self.cp, self.dp, self.pp]

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
            "tp": self.tp,
            "cp": self.cp,
            "pp": self.pp,
            "ep": self.ep,
            "dp": self.dp,
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
            sizes = {m.size for m in self.module_parallelisms.values() if m.dp is not None}
            if not sizes:
                raise LayoutError("the world size is unknown: set layout.<module>.dp or pass --nodes")
            world_size = max(sizes)
        for name, m in self.module_parallelisms.items():
            mp = m.model_parallel_size
            if m.dp is None:
                if world_size % mp:
                    raise LayoutError(
                        f"layout.{name}: tp*cp*pp={mp} does not divide the world size {world_size}"
                    )
                m.dp = world_size // mp
            if m.size != world_size:
                raise LayoutError(
                    f"layout.{name}: tp*cp*pp*dp={m.tp}*{m.cp}*"
                    f"{m.pp}*{m.dp}={m.size} must equal the world size "
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
            if m.dp is None:
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
            ep = m.ep
            if ep > 1 and (m.cp * m.dp) % ep:
                raise LayoutError(
                    f"layout.{name}.ep={ep} must divide cp*dp={m.cp}*{m.dp}"
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
            m.dp = None
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
        m.dp = dp_times // current
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
