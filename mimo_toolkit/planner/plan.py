"""``mimo-toolkit plan`` as a library call: recipe -> problem -> search -> validated plan.

:func:`make_plan` loads the recipe and preset, applies ``--set``, picks the machine (a
built-in GPU or a calibration profile), runs the search with the project's validation as the
final check, and predicts the preset's own layout at the same node count for comparison.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..config import JobConfig
from ..errors import UserError
from ..overrides import apply_overrides
from ..recipe import load_recipe
from ..layout import scale_layout
from ..resolve import validate
from ..validation import check_config
from .calibration import load_profile, machine_from_profile
from .candidate import Candidate, evaluate_layout
from .hardware import MACHINE_KINDS, Machine, builtin_machine
from .rules import REASONS, check_candidate
from .search import SearchResult, search
from .workload import Assumptions, Problem, make_problem


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked for (the CLI's options)."""

    recipe: str
    preset: str | None = None
    nodes: int | None = None
    gpus_per_node: int | None = None
    gpu: str | None = None
    """h100, h200, a100 or cpu; default: h100 for a GPU recipe, cpu for a CPU one."""
    top: int = 3
    sets: tuple[str, ...] = ()
    profile: str | None = None
    assumptions: Assumptions = field(default_factory=Assumptions)


@dataclass
class Plan:
    """A finished plan: the search result and what is needed to write it out."""

    request: PlanRequest
    recipe_spec: str
    """How a preset file refers to the recipe (a built-in name or an absolute path)."""
    recipe_name: str
    preset: str
    job: JobConfig
    """The base job (preset + --set); its layout is the preset's, not the plan's."""
    machine: Machine
    nodes: int
    gpus_per_node: int
    result: SearchResult
    current: Candidate | None = None
    """The preset's own layout scaled to ``nodes``, where that is valid."""

    @property
    def problem(self) -> Problem:
        return self.result.problem

    @property
    def uses_gpus(self) -> bool:
        return self.machine.name != "cpu"

    @property
    def best(self) -> Candidate:
        return self.result.top[0]


def _recipe_spec(spec: str) -> str:
    target, sep, attr = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if target.endswith(".py") or os.sep in target:
        return os.path.abspath(target) + sep + attr
    return spec


def _machine(req: PlanRequest, job: JobConfig) -> Machine:
    kind = req.gpu or ("h100" if job.cluster.gpus_per_node else "cpu")
    if kind not in MACHINE_KINDS:
        raise UserError(f"--gpu {kind}: unknown; choose one of {', '.join(MACHINE_KINDS)}")
    if req.profile is None:
        return builtin_machine(kind)
    profile = load_profile(req.profile)
    if req.gpu is not None and profile.machine.device != req.gpu:
        raise UserError(f"--gpu {req.gpu}, but --profile {req.profile} was measured on {profile.machine.device}")
    return machine_from_profile(profile, req.profile)


def _check_rates(machine: Machine, problem: Problem, profile: str | None) -> None:
    if machine.peak_flops is not None:
        return
    missing = sorted({w.kind for w in problem.modules} - set(machine.module_rates))
    if missing:
        raise UserError(f"--profile {profile}: no measured rate for module kind(s) {', '.join(missing)}")


def make_plan(req: PlanRequest) -> Plan:
    """Plan ``req``; raises :class:`UserError` for bad input or when no layout is valid."""
    if req.top < 1:
        raise UserError(f"--top {req.top}: must be >= 1")
    recipe = load_recipe(req.recipe)
    job = recipe.build(req.preset)
    apply_overrides(job, req.sets)
    check_config(job)
    machine = _machine(req, job)
    nodes = req.nodes if req.nodes is not None else (job.cluster.nodes or 1)
    gpn = req.gpus_per_node if req.gpus_per_node is not None else job.cluster.procs_per_node
    if nodes < 1 or gpn < 1:
        raise UserError(f"--nodes {nodes} --gpus-per-node {gpn}: both must be >= 1")
    problem = make_problem(job, machine, nodes, gpn, req.assumptions)
    _check_rates(machine, problem, req.profile)
    scratch = job.copy()

    def accept(candidate: Candidate) -> str | None:
        try:
            check_candidate(scratch, candidate, nodes, gpn, machine.name != "cpu")
        except UserError as exc:
            return str(exc)
        return None

    result = search(problem, req.top, accept)
    if not result.top:
        counts = result.log.layouts.most_common(3)
        why = "; ".join(f"{REASONS[k]}: {n:,}" for k, n in counts) or "no module shape fits the model"
        raise UserError(
            f"no valid layout of {recipe.name}:{job.preset} on {nodes} x {gpn} {machine.name} ({why})"
        )
    plan = Plan(req, _recipe_spec(req.recipe), recipe.name, job.preset, job, machine, nodes, gpn, result)
    plan.current = _current_layout(plan)
    return plan


def _current_layout(plan: Plan) -> Candidate | None:
    """The preset's own layout, scaled to ``--nodes`` as ``render`` would, if that works
    (without ``scale_to_nodes``' search for node counts that would: a user error here is
    only a missing comparison)."""
    job = plan.job.copy()
    if job.cluster.procs_per_node != plan.gpus_per_node:
        return None
    world = plan.nodes * plan.gpus_per_node
    try:
        job.layout = scale_layout(job.layout, world)
        job.cluster.nodes = plan.nodes
        resolved = validate(job, world)
    except UserError:
        return None
    return evaluate_layout(plan.problem, resolved.config.layout, job.train.micro_batch_size, job.train.recompute)
