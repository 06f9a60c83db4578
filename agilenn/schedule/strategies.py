"""The five ways to fit a training step in memory that the figures compare.

- ``store-all``: plain training, every tensor kept until the backward pass no
  longer needs it (no budget honoured: it is what it is);
- ``checkpoint-all``: Chen et al.'s sqrt(n) checkpointing, every
  ``ceil(sqrt(n))``-th forward output kept, the rest recomputed; within the
  budget or not at all;
- ``recompute-only``: the program without paging (Checkmate);
- ``page-only``: the program without recomputation;
- ``mixed``: the whole program (POET).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from .costs import DeviceCosts
from .graph import TrainingGraph
from .milp import InfeasibleSchedule, SolveOptions, solve
from .program import Plan, plan_from_keep

STRATEGIES = ("store-all", "checkpoint-all", "recompute-only", "page-only", "mixed")


@dataclass(frozen=True)
class Outcome:
    strategy: str
    plan: Plan | None  # None: does not fit
    status: str  # optimal | feasible | infeasible | over-budget (store-all beyond the budget)
    solve_seconds: float = 0.0
    gap: float = 0.0


def _heuristic(graph: TrainingGraph, options: SolveOptions, name: str,
               keep: Callable[[int, int], bool]) -> Outcome:
    plan = plan_from_keep(graph, keep, None, options.memory_budget if name != "store-all" else 2**62)
    if plan is None:
        return Outcome(name, None, "infeasible")
    if name == "store-all" and plan.simulate(graph).peak_bytes > options.memory_budget:
        return Outcome(name, plan, "over-budget")
    return Outcome(name, plan, "feasible")


def run_strategy(name: str, graph: TrainingGraph, costs: DeviceCosts, options: SolveOptions) -> Outcome:
    if name == "store-all":
        return _heuristic(graph, options, name, lambda t, i: True)
    if name == "checkpoint-all":
        forward = [node.index for node in graph.nodes if not node.backward]
        every = max(1, math.ceil(math.sqrt(len(forward))))
        checkpoints = set(forward[::every]) | {node.index for node in graph.nodes if node.backward}
        return _heuristic(graph, options, name, lambda t, i: i in checkpoints)
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; pick one of {', '.join(STRATEGIES)}")
    variant = replace(options, allow_paging=name != "recompute-only", allow_recompute=name != "page-only")
    try:
        solution = solve(graph, costs, variant)
    except InfeasibleSchedule:
        return Outcome(name, None, "infeasible")
    return Outcome(name, solution.plan, solution.status, solution.solve_seconds, solution.gap)
