"""POET's schedule as a mixed-integer program, solved with HiGHS (``scipy.optimize.milp``).

Stages ``t = 0 .. T-1``; stage ``t`` computes node ``t`` for the first time,
and may recompute earlier nodes. Binary variables, as in POET:

- ``R[t,i]``: node ``i`` is computed in stage ``t`` (``i <= t``; ``R[t,t] = 1``);
- ``S[t,i]``: its output is in RAM at the start of stage ``t`` (``i < t``);
- ``F[t,i]``: its output is in flash at the start of stage ``t``;
- ``IN[t,i]``: it is paged in during stage ``t``; ``OUT[t,i]``: paged out.

Constraints: an input is at hand when its consumer runs (computed earlier in
the stage, in RAM, or paged in); RAM at the next stage holds only what was in
RAM, computed or paged in; flash only what was there or paged out; a page-out
needs the tensor in RAM and a page-in needs it in flash. **Memory**: in every
stage, what is in RAM, computed or paged in (POET's ``U``; we count a tensor
computed in a stage as live to the stage's end, which frees nothing early and
so over-counts, never under-counts: the executor's peak stays within it)
fits the budget less the resident bytes. **Time**: compute *plus paging* fits
the time budget (POET's deadline leaves paging out). The objective is energy
or time.

When the solver's time limit hits before it proves optimality, its best
schedule is kept and the gap reported. With no schedule found by then, the LP
relaxation is solved and rounded into one (``status`` ``feasible``,
``method`` ``lp-rounding``), as Checkmate does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from .costs import DeviceCosts
from .graph import TrainingGraph
from .program import Plan, needed_after, plan_from_keep

OBJECTIVES = ("energy", "time")


class InfeasibleSchedule(ValueError):
    """No schedule fits: the reason says which budget and by how much."""


@dataclass(frozen=True)
class SolveOptions:
    memory_budget: int
    time_budget: float = float("inf")  # seconds on the device; inf: none
    objective: str = "energy"
    time_limit: float = 60.0
    allow_recompute: bool = True
    allow_paging: bool = True

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}")
        if self.memory_budget <= 0 or not self.time_budget > 0 or not self.time_limit > 0:
            raise ValueError("the memory budget, time budget and time limit must be positive")


@dataclass(frozen=True)
class Solution:
    plan: Plan
    status: str  # optimal | feasible
    objective: float
    gap: float  # relative, 0 when proved optimal
    solve_seconds: float
    method: str  # milp | lp-rounding
    variables: int
    constraints: int


class _Variables:
    """Indexes of the program's variables in scipy's flat vector. ``FREE[t,i,k]`` frees node
    ``i`` right after node ``k`` runs in stage ``t`` (``k`` a user of ``i``, or ``i`` itself), and
    ``U[t,k]`` is the RAM in use right after node ``k`` runs: Checkmate's accounting."""

    def __init__(self, graph: TrainingGraph, allow_recompute: bool, allow_paging: bool) -> None:
        self.index: dict[tuple[str, int, Any], int] = {}
        self.continuous: list[int] = []
        last = needed_after(graph)  # a tensor no later node reads is never kept, paged or recomputed
        for t in range(len(graph)):
            for i in range(t + 1):
                if i == t or (allow_recompute and last[i] >= t):
                    self._add("R", t, i)
                if i < t and last[i] >= t:
                    self._add("S", t, i)
                    if allow_paging:
                        self._add("F", t, i)
                        self._add("IN", t, i)
                if allow_paging and last[i] > t:
                    self._add("OUT", t, i)
            for k in range(t + 1):
                if self.get("R", t, k) is None:
                    continue
                for i in (*graph.nodes[k].deps, k):
                    self._add("FREE", t, (i, k))
                self.continuous.append(len(self.index))
                self._add("U", t, k)

    def _add(self, kind: str, t: int, i: Any) -> None:
        self.index[(kind, t, i)] = len(self.index)

    def get(self, kind: str, t: int, i: Any) -> int | None:
        return self.index.get((kind, t, i))

    def __len__(self) -> int:
        return len(self.index)


class _Rows:
    """Sparse ``lower <= A x <= upper`` rows, built row by row."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.values: list[float] = []
        self.lower: list[float] = []
        self.upper: list[float] = []

    def add(self, terms: list[tuple[int | None, float]], lower: float, upper: float) -> None:
        present = [(column, value) for column, value in terms if column is not None]
        if not present:
            return
        row = len(self.lower)
        for column, value in present:
            self.rows.append(row)
            self.cols.append(column)
            self.values.append(value)
        self.lower.append(lower)
        self.upper.append(upper)

    def constraint(self, columns: int) -> LinearConstraint:
        matrix = coo_matrix((self.values, (self.rows, self.cols)), shape=(len(self.lower), columns)).tocsr()
        return LinearConstraint(matrix, np.array(self.lower), np.array(self.upper))


def _program(graph: TrainingGraph, costs: DeviceCosts, options: SolveOptions,
             ) -> tuple[_Variables, np.ndarray, _Rows, np.ndarray, float]:
    """The program: variables, objective (over ``scale``), rows, fixed lower bounds, ``scale``."""
    size = len(graph)
    variables = _Variables(graph, options.allow_recompute, options.allow_paging)
    users = graph.consumers()
    v = variables.get
    sizes = [node.size_bytes for node in graph.nodes]
    # Memory in shares of the room and the objective over its largest cost: with bytes (1e6) and
    # joules (1e-9) side by side, HiGHS's presolve called a worse plan optimal.
    room = max(options.memory_budget - graph.resident_bytes, 1)  # 0 bytes of room: only empty tensors
    shares = [size / room for size in sizes]
    energy = np.zeros(len(variables))
    seconds = np.zeros(len(variables))
    for (kind, _, i), column in variables.index.items():
        if kind == "R":
            energy[column] = costs.compute_joules(graph.nodes[i].macs)
            seconds[column] = costs.compute_seconds(graph.nodes[i].macs)
        elif kind == "IN":
            energy[column] = sizes[i] * costs.read_joules_per_byte
            seconds[column] = costs.page_in_seconds(sizes[i])
        elif kind == "OUT":
            energy[column] = sizes[i] * costs.write_joules_per_byte
            seconds[column] = costs.page_out_seconds(sizes[i])
    rows = _Rows()
    for t in range(size):
        for node in graph.nodes[:t + 1]:
            for dep in node.deps:  # an input is at hand when its consumer runs
                rows.add([(v("R", t, node.index), 1), (v("R", t, dep), -1), (v("S", t, dep), -1),
                          (v("IN", t, dep), -1)], -np.inf, 0)
        for i in range(t + 1):
            if t + 1 < size:
                rows.add([(v("S", t + 1, i), 1), (v("S", t, i), -1), (v("R", t, i), -1), (v("IN", t, i), -1)],
                         -np.inf, 0)
                rows.add([(v("F", t + 1, i), 1), (v("F", t, i), -1), (v("OUT", t, i), -1)], -np.inf, 0)
            rows.add([(v("OUT", t, i), 1), (v("S", t, i), -1), (v("R", t, i), -1)], -np.inf, 0)
            rows.add([(v("IN", t, i), 1), (v("F", t, i), -1)], -np.inf, 0)
            for first, second in (("S", "R"), ("S", "IN"), ("R", "IN")):
                if v(first, t, i) is not None and v(second, t, i) is not None:
                    rows.add([(v(first, t, i), 1), (v(second, t, i), 1)], -np.inf, 1)
        _memory_rows(rows, v, graph, users, t, shares)
    if np.isfinite(options.time_budget):  # in shares of the budget, for the same reason
        rows.add([(column, float(value) / options.time_budget) for column, value in enumerate(seconds)
                  if value], -np.inf, 1.0)
    fixed = np.zeros(len(variables))
    for t in range(size):
        computes = v("R", t, t)
        assert computes is not None
        fixed[computes] = 1.0
    objective = energy if options.objective == "energy" else seconds
    scale = max(float(objective.max()), 1e-30)
    return variables, objective / scale, rows, fixed, scale


def _memory_rows(rows: _Rows, v: Any, graph: TrainingGraph, users: dict[int, list[int]], t: int,
                 sizes: list[float]) -> None:
    """``U[t,k]``: what stage ``t`` holds right after node ``k`` runs, in shares of the room the
    resident bytes leave (at most 1), and when ``FREE`` may drop a tensor: after its last user in
    the stage, if the next stage does not keep it."""
    previous: tuple[int, int] | None = None  # U's column and node of the last node run
    for k in range(t + 1):
        u = v("U", t, k)
        if u is None:
            continue
        terms: list[tuple[int | None, float]] = [(u, 1.0), (v("R", t, k), -float(sizes[k]))]
        if previous is None:  # what the stage starts with: kept and paged in
            terms += [(v(kind, t, i), -float(sizes[i])) for i in range(t) for kind in ("S", "IN")]
        else:
            column, last = previous
            terms.append((column, -1.0))
            terms += [(v("FREE", t, (i, last)), float(sizes[i])) for i in (*graph.nodes[last].deps, last)]
        rows.add(terms, 0, 0)
        for i in (*graph.nodes[k].deps, k):
            free = v("FREE", t, (i, k))
            rows.add([(free, 1), (v("R", t, k), -1)], -np.inf, 0)
            if t + 1 < len(graph):
                rows.add([(free, 1), (v("S", t + 1, i), 1)], -np.inf, 1)
            for later in users[i]:
                if k < later <= t:
                    rows.add([(free, 1), (v("R", t, later), 1)], -np.inf, 1)
        previous = (u, k)


def _check_reachable(graph: TrainingGraph, options: SolveOptions) -> None:
    """Budgets no schedule can meet, said plainly before any solving."""
    room = options.memory_budget - graph.resident_bytes
    if room < 0:
        raise InfeasibleSchedule(f"the memory budget of {options.memory_budget} bytes is below the "
                                 f"{graph.resident_bytes} bytes held whatever the schedule "
                                 "(weights, optimizer state, the batch)")
    for node in graph.nodes:
        working = node.size_bytes + sum(graph.nodes[d].size_bytes for d in node.deps)
        if working > room:
            raise InfeasibleSchedule(
                f"node {node.name} needs {working} bytes of inputs and output at once; the budget "
                f"leaves {room} after the {graph.resident_bytes} resident bytes "
                f"(at least {graph.resident_bytes + working} needed)")


def solve(graph: TrainingGraph, costs: DeviceCosts, options: SolveOptions) -> Solution:
    """The cheapest schedule within the budgets; :class:`InfeasibleSchedule` if there is none."""
    _check_reachable(graph, options)
    started = time.perf_counter()
    variables, objective, rows, fixed, scale = _program(graph, costs, options)
    upper = np.ones(len(variables))
    integrality = np.ones(len(variables))
    integrality[variables.continuous] = 0
    constraint = rows.constraint(len(variables))
    # Building counts too, and HiGHS stops a little after its limit.
    left = max(1e-3, 0.97 * (options.time_limit - (time.perf_counter() - started)))
    result = milp(objective, integrality=integrality, bounds=Bounds(fixed, upper),
                  constraints=constraint, options={"time_limit": left, "disp": False, "mip_rel_gap": 1e-9})
    if result.status == 2:
        raise InfeasibleSchedule(f"no schedule fits {options.memory_budget} bytes and "
                                 f"{options.time_budget} s (HiGHS proved it infeasible)")
    if result.x is None:  # the time limit hit with no schedule: round the LP relaxation
        relaxed = milp(objective, integrality=np.zeros(len(variables)), bounds=Bounds(fixed, upper),
                       constraints=constraint)
        if relaxed.x is None:
            raise InfeasibleSchedule(f"no schedule fits {options.memory_budget} bytes and "
                                     f"{options.time_budget} s (the LP relaxation is infeasible)")
        plan = _rounded(graph, variables, relaxed.x, options)
        if plan.objective(graph, costs, "time") > options.time_budget:
            raise InfeasibleSchedule(f"the solver found no schedule in {options.time_limit} s, and "
                                     "rounding its relaxation went over the time budget")
        return _solution(graph, costs, options, plan, "feasible", relaxed.fun * scale, started,
                         "lp-rounding", len(variables), len(rows.lower))
    plan = _plan(graph, variables, result.x).without_unread_page_outs()
    bound = float(result.fun) if result.status == 0 else float(getattr(result, "mip_dual_bound", result.fun))
    return _solution(graph, costs, options, plan, "optimal" if result.status == 0 else "feasible",
                     bound * scale, started, "milp", len(variables), len(rows.lower))


def _solution(graph: TrainingGraph, costs: DeviceCosts, options: SolveOptions, plan: Plan, status: str,
              bound: float, started: float, method: str, variables: int, constraints: int) -> Solution:
    """The plan's own cost, and its gap to the solver's lower bound."""
    value = plan.objective(graph, costs, options.objective)
    gap = 0.0 if status == "optimal" or not value else max(0.0, (value - bound) / value)
    return Solution(plan, status, value, gap, time.perf_counter() - started, method, variables, constraints)


def _chosen(variables: _Variables, x: np.ndarray, kind: str, t: int, i: int) -> bool:
    column = variables.get(kind, t, i)
    return column is not None and x[column] > 0.5


def _plan(graph: TrainingGraph, variables: _Variables, x: np.ndarray) -> Plan:
    size = len(graph)
    return Plan.from_stages(graph, [
        ([i for i in range(t + 1) if _chosen(variables, x, "R", t, i)],
         [i for i in range(t) if _chosen(variables, x, "IN", t, i)],
         [i for i in range(t + 1) if _chosen(variables, x, "OUT", t, i)],
         [i for i in range(t + 1) if t + 1 < size and _chosen(variables, x, "S", t + 1, i)])
        for t in range(size)])


def _rounded(graph: TrainingGraph, variables: _Variables, x: np.ndarray, options: SolveOptions) -> Plan:
    """Checkmate's rounding: keep in RAM what the relaxation keeps at least half, in flash what
    it pages out at least half; recompute or page in the rest as needed."""
    size = len(graph)

    def keep(t: int, i: int) -> bool:
        return t + 1 < size and _chosen(variables, x, "S", t + 1, i)

    def to_flash(t: int, i: int) -> bool:
        return t + 1 < size and _chosen(variables, x, "F", t + 1, i)

    plan = plan_from_keep(graph, keep, to_flash if options.allow_paging else None, options.memory_budget)
    if plan is None:
        raise InfeasibleSchedule("the solver found no schedule in its time limit and rounding its "
                                 "relaxation did not fit the memory budget")
    return plan
