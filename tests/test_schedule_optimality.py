"""The MILP scheduler finds the optimum: on small random training graphs its objective equals an
exhaustive search's under every budget and variant, and on a hand-made graph it equals the
value worked out by hand."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from agilenn.schedule.costs import DeviceCosts, device_costs
from agilenn.schedule.exhaustive import brute_force, random_training_graph
from agilenn.schedule.graph import Node, TrainingGraph
from agilenn.schedule.milp import InfeasibleSchedule, Solution, SolveOptions, solve
from agilenn.schedule.program import Event

# allow_recompute, allow_paging; both twice as often, as the scheduler runs by default
VARIANTS = [(True, True), (True, True), (True, False), (False, True), (False, False)]
BUDGET_SHARES = [-0.02, 0.0, 0.05, 0.1, 0.2, 0.35, 0.6, 1.0]  # of the way from the floor to plain training
DEVICES = ["stm32f746", "esp32", "rpi-zero"]
GRAPHS = 48
CASES_PER_GRAPH = 5
# HiGHS lets a row exceed its bound by 1e-7, and milp.py writes the time row in shares of the budget.
TIME_TOLERANCE = 1e-6


def _smallest_working_set(graph: TrainingGraph) -> int:
    return graph.resident_bytes + max(node.size_bytes + sum(graph.nodes[d].size_bytes for d in node.deps)
                                      for node in graph.nodes)


def _milp_objective(graph: TrainingGraph, costs: DeviceCosts, options: SolveOptions) -> float | None:
    """The solver's objective, None when it finds the budgets infeasible; its plan is checked to
    keep within them and to cost what the solver says."""
    try:
        solution = solve(graph, costs, options)
    except InfeasibleSchedule:
        return None
    assert solution.status == "optimal"
    assert solution.plan.simulate(graph).peak_bytes <= options.memory_budget
    assert solution.plan.objective(graph, costs, options.objective) == pytest.approx(solution.objective,
                                                                                     rel=1e-9)
    assert solution.plan.objective(graph, costs, "time") <= options.time_budget * (1 + TIME_TOLERANCE)
    return solution.objective


def _time_budget(graph: TrainingGraph, costs: DeviceCosts, memory: SolveOptions, rng: random.Random) -> float:
    """Between the fastest schedule's seconds and those of the cheapest in energy, where the
    energy optimum must give way, when they differ; else below the fastest (infeasible) or loose.
    A random point, unlikely to fall within HiGHS's tolerance of some schedule's time."""
    fastest = brute_force(graph, costs, replace(memory, objective="time"))
    if fastest is None:
        return math.inf
    try:
        thrifty = solve(graph, costs, memory).plan.objective(graph, costs, "time")
    except InfeasibleSchedule:
        thrifty = fastest
    if thrifty > 1.001 * fastest:
        return fastest + rng.uniform(0.2, 0.8) * (thrifty - fastest)
    return rng.choice([0.9, 1.3]) * fastest


@pytest.mark.parametrize("seed", range(GRAPHS))
def test_the_milp_finds_the_exhaustive_searchs_optimum_on_small_graphs(seed: int) -> None:
    rng = random.Random(seed)
    graph = random_training_graph(rng)
    costs = device_costs(rng.choice(DEVICES), 124e6)
    floor, plain = _smallest_working_set(graph), graph.plain_peak_bytes
    for _ in range(CASES_PER_GRAPH):
        # From below the smallest working set (infeasible) to plain training's peak (store all).
        budget = max(1, int(floor + rng.choice(BUDGET_SHARES) * (plain - floor)))
        allow_recompute, allow_paging = rng.choice(VARIANTS)
        memory = SolveOptions(budget, allow_recompute=allow_recompute, allow_paging=allow_paging)
        for time_budget in (math.inf, _time_budget(graph, costs, memory, rng)):
            for objective in ("energy", "time"):
                options = replace(memory, time_budget=time_budget, objective=objective)
                expected = brute_force(graph, costs, options)
                found = _milp_objective(graph, costs, options)
                assert (found is None) == (expected is None), (options, expected, found)
                if expected is not None:
                    assert found == pytest.approx(expected, rel=1e-6), options


def _two_layers() -> tuple[TrainingGraph, int]:
    """Two layers and a loss: ``f0`` (1024 bytes out), ``f1`` (4096), the loss ``f2``, then their
    backward nodes. Plain training holds ``f0`` while ``f2'`` turns ``f1`` into its gradient:
    1024 + 4096 + 4096 bytes, while no node by itself needs more than 8192, the budget's room."""
    nodes = [
        Node(0, "f0", False, (), 1024, 300_000, "f0"),
        Node(1, "f1", False, (0,), 4096, 2_000_000, "f1"),
        Node(2, "f2", False, (1,), 4, 1_000, "f2"),
        Node(3, "f2'", True, (1,), 4096, 3_000, "f2"),
        Node(4, "f1'", True, (0, 3), 1024, 6_000_000, "f1"),
        Node(5, "f0'", True, (4,), 0, 900_000, "f0"),
    ]
    resident = 2048
    return TrainingGraph(nodes, resident), resident + 8192


# Every node once: 300e3 + 2e6 + 1e3 + 3e3 + 6e6 + 900e3 MACs.
ONCE_MACS = 9_204_000
F0_MACS = 300_000


def _pages(solution: Solution) -> list[tuple[Event, int]]:
    return [event for event in solution.plan.events if event[0] in (Event.PAGE_OUT, Event.PAGE_IN)]


def _computes(solution: Solution) -> list[int]:
    return [node for kind, node in solution.plan.events if kind is Event.COMPUTE]


def test_a_budget_that_cannot_hold_f0_through_f2_backward_costs_one_recompute_or_one_page() -> None:
    graph, budget = _two_layers()
    # 0.40 W at 124e6 MAC/s; flash reads 10 MB/s at 0.10 W and writes 4 MB/s at 0.20 W.
    costs = device_costs("stm32f746", 124e6)
    assert graph.plain_peak_bytes > budget
    once = ONCE_MACS * 0.40 / 124e6
    # Only recomputing: f0 leaves RAM before f2' and is recomputed (300e3 MACs more) for f1'.
    recompute = solve(graph, costs, SolveOptions(budget, allow_paging=False))
    assert recompute.objective == pytest.approx(once + F0_MACS * 0.40 / 124e6, rel=1e-9)
    assert _computes(recompute) == [0, 1, 2, 3, 0, 4, 5] and _pages(recompute) == []
    # With paging, f0's 1024 bytes go out (0.20 W / 4e6 B/s a byte) and back (0.10 W / 10e6 B/s):
    # 1024 * 6e-8 J = 61 uJ, below the 968 uJ of recomputing it.
    paged = solve(graph, costs, SolveOptions(budget))
    assert paged.objective == pytest.approx(once + 1024 * (0.20 / 4e6 + 0.10 / 10e6), rel=1e-9)
    assert _pages(paged) == [(Event.PAGE_OUT, 0), (Event.PAGE_IN, 0)]
    assert _computes(paged) == [0, 1, 2, 3, 4, 5]
    for solution in (recompute, paged):
        assert solution.plan.simulate(graph).peak_bytes <= budget
    # Neither helps, so no schedule fits: HiGHS proves it and the search agrees.
    neither = SolveOptions(budget, allow_recompute=False, allow_paging=False)
    with pytest.raises(InfeasibleSchedule, match="HiGHS proved it infeasible"):
        solve(graph, costs, neither)
    assert brute_force(graph, costs, neither) is None
    only_recompute = brute_force(graph, costs, SolveOptions(budget, allow_paging=False))
    assert only_recompute == pytest.approx(recompute.objective, rel=1e-9)


def test_a_time_budget_makes_the_energy_optimum_recompute_what_it_would_rather_page() -> None:
    graph, budget = _two_layers()
    # 0.24 W at 124e6 MAC/s; flash reads 8 MB/s and writes 0.3 MB/s, at 0.05 W either way.
    costs = device_costs("esp32", 124e6)
    once_seconds, once_joules = ONCE_MACS / 124e6, ONCE_MACS * 0.24 / 124e6
    # Paging f0 takes 1024 / 0.3e6 + 1024 / 8e6 = 3.541 ms for 0.05 W * 3.541 ms = 177 uJ;
    # recomputing it takes 300e3 / 124e6 = 2.419 ms for 0.24 W * 2.419 ms = 581 uJ.
    page_seconds = 1024 / 0.3e6 + 1024 / 8e6
    recompute_seconds = F0_MACS / 124e6
    thrifty = solve(graph, costs, SolveOptions(budget))
    assert thrifty.objective == pytest.approx(once_joules + 0.05 * page_seconds, rel=1e-9)
    assert _pages(thrifty) == [(Event.PAGE_OUT, 0), (Event.PAGE_IN, 0)]
    fastest = solve(graph, costs, SolveOptions(budget, objective="time"))
    assert fastest.objective == pytest.approx(once_seconds + recompute_seconds, rel=1e-9)
    # 3 ms over computing each node once leaves no time to page f0, but enough to recompute it.
    within = SolveOptions(budget, time_budget=once_seconds + 3e-3)
    constrained = solve(graph, costs, within)
    assert constrained.objective == pytest.approx(once_joules + 0.24 * recompute_seconds, rel=1e-9)
    assert _computes(constrained) == [0, 1, 2, 3, 0, 4, 5] and _pages(constrained) == []
    assert brute_force(graph, costs, within) == pytest.approx(constrained.objective, rel=1e-9)
    # 2 ms leaves time for neither.
    too_short = SolveOptions(budget, time_budget=once_seconds + 2e-3)
    with pytest.raises(InfeasibleSchedule):
        solve(graph, costs, too_short)
    assert brute_force(graph, costs, too_short) is None


def test_a_budget_below_the_largest_working_set_is_infeasible_and_says_the_bytes_needed() -> None:
    graph, budget = _two_layers()  # f2' holds f1 and its gradient: 8192 bytes beyond the resident
    costs = device_costs("stm32f746", 124e6)
    below = SolveOptions(budget - 1)
    with pytest.raises(InfeasibleSchedule, match=rf"f2' needs 8192 bytes .* \(at least {budget} needed\)"):
        solve(graph, costs, below)
    assert brute_force(graph, costs, below) is None
    with pytest.raises(InfeasibleSchedule, match=f"below the {graph.resident_bytes} bytes held"):
        solve(graph, costs, SolveOptions(graph.resident_bytes - 1))
    assert brute_force(graph, costs, SolveOptions(graph.resident_bytes - 1)) is None


def _microjoule_graph() -> tuple[TrainingGraph, DeviceCosts, SolveOptions, float]:
    """A layer, a loss and the layer's backward node, whose whole step costs 7.6 uJ. Keeping
    f0 in RAM fits the budget, so every node runs once: 3930 MACs at 0.24 / 124e6 J each."""
    nodes = [Node(0, "f0", False, (), 1984, 50, "f0"), Node(1, "f1", False, (0,), 4, 970, "f1"),
             Node(2, "f1'", True, (0,), 1984, 2910, "f1")]
    return (TrainingGraph(nodes, 768), device_costs("esp32", 124e6), SolveOptions(768 + 1984 + 1984),
            3930 * 0.24 / 124e6)


def test_the_exhaustive_search_finds_the_optimum_of_a_microjoule_step() -> None:
    graph, costs, options, optimum = _microjoule_graph()
    assert brute_force(graph, costs, options) == pytest.approx(optimum, rel=1e-9)


def test_the_milp_finds_the_optimum_of_a_microjoule_step() -> None:
    # Within HiGHS's absolute gap (1e-6) of the optimum when the objective went in joules unscaled.
    graph, costs, options, optimum = _microjoule_graph()
    assert solve(graph, costs, options).objective == pytest.approx(optimum, rel=1e-6)
