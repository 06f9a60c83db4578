"""The memory scheduler on the real device part: plans run in PyTorch, give a plain step's
gradients, stay within budget, page what they planned, and store in a few hundred bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agilenn.adapt.selection import DevicePart
from agilenn.cli import main
from agilenn.data import load_mnist_sample
from agilenn.pretrained import load_checkpoint
from agilenn.schedule import milp as milp_module
from agilenn.schedule.costs import device_costs
from agilenn.schedule.executor import Executor, gradients_match, plain_step
from agilenn.schedule.graph import trace_training_graph
from agilenn.schedule.milp import InfeasibleSchedule, SolveOptions, solve
from agilenn.schedule.program import Event, Plan
from agilenn.schedule.strategies import STRATEGIES, run_strategy

PART = DevicePart(load_checkpoint("pretrained:mnist").build_model()).eval()
IMAGES, LABELS = load_mnist_sample().batch(slice(0, 8))
GRAPH = trace_training_graph(PART, IMAGES, LABELS)
COSTS = device_costs("stm32f746", 124e6)
PLAIN_LOSS, PLAIN_GRADIENTS = plain_step(GRAPH, IMAGES, LABELS)


def _smallest_feasible(**variant: bool) -> int:
    low, high = GRAPH.resident_bytes, GRAPH.plain_peak_bytes
    while high - low > 4096:
        middle = (low + high) // 2
        try:
            solve(GRAPH, COSTS, SolveOptions(middle, **variant))
            high = middle
        except InfeasibleSchedule:
            low = middle
    return high


SMALLEST = _smallest_feasible()


@pytest.mark.parametrize("share", [1.0, 0.7, 0.0])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategys_plan_runs_to_a_plain_steps_gradients_within_its_budget(strategy: str,
                                                                                 share: float) -> None:
    budget = int(SMALLEST + share * (GRAPH.plain_peak_bytes - SMALLEST))
    outcome = run_strategy(strategy, GRAPH, COSTS, SolveOptions(budget, time_limit=30))
    if outcome.plan is None:
        assert strategy in ("recompute-only", "checkpoint-all") and outcome.status == "infeasible"
        return
    planned = outcome.plan.simulate(GRAPH)
    execution = Executor(GRAPH).run(outcome.plan, IMAGES, LABELS)
    assert gradients_match(execution, PLAIN_GRADIENTS)
    assert execution.loss == pytest.approx(PLAIN_LOSS)
    assert execution.peak_bytes == planned.peak_bytes  # measured by holding the real tensors
    assert (execution.bytes_paged_in, execution.bytes_paged_out) == (planned.bytes_paged_in,
                                                                     planned.bytes_paged_out)
    if outcome.status != "over-budget":
        assert execution.peak_bytes <= budget


def test_at_the_smallest_budget_the_mixed_plan_pages_and_recomputes_and_is_optimal() -> None:
    solution = solve(GRAPH, COSTS, SolveOptions(SMALLEST, time_limit=30))
    kinds = {kind for kind, _ in solution.plan.events}
    simulation = solution.plan.simulate(GRAPH)
    assert solution.status == "optimal" and solution.gap == 0.0
    assert simulation.peak_bytes <= SMALLEST < GRAPH.plain_peak_bytes
    assert simulation.computations > len(GRAPH) or Event.PAGE_OUT in kinds  # it had to do something
    with pytest.raises(InfeasibleSchedule):
        solve(GRAPH, COSTS, SolveOptions(SMALLEST - 8192, time_limit=30))


def test_the_time_budget_counts_paging_and_is_honoured() -> None:
    paging = solve(GRAPH, COSTS, SolveOptions(SMALLEST, objective="energy", allow_recompute=False))
    seconds = paging.plan.objective(GRAPH, COSTS, "time")
    assert paging.plan.simulate(GRAPH).bytes_paged > 0
    compute_only = COSTS.compute_seconds(paging.plan.simulate(GRAPH).macs)
    with pytest.raises(InfeasibleSchedule):  # enough for its compute, not for its paging too
        solve(GRAPH, COSTS, SolveOptions(SMALLEST, time_budget=(compute_only + seconds) / 2,
                                         allow_recompute=False))
    timed = solve(GRAPH, COSTS, SolveOptions(SMALLEST, time_budget=seconds * 1.01))
    assert timed.plan.objective(GRAPH, COSTS, "time") <= seconds * 1.01


def test_a_sparse_update_plans_only_the_backward_it_needs() -> None:
    head = {"local_predictor.linear.weight", "local_predictor.linear.bias"}
    graph = trace_training_graph(PART, IMAGES, LABELS, head)
    assert sum(node.backward for node in graph.nodes) == 2  # the loss's and the linear layer's
    solution = solve(graph, COSTS, SolveOptions(graph.plain_peak_bytes))
    execution = Executor(graph).run(solution.plan, IMAGES, LABELS)
    assert gradients_match(execution, plain_step(graph, IMAGES, LABELS)[1])
    assert set(execution.gradients) == head


def test_a_stored_plan_is_a_few_hundred_bytes_and_refuses_another_graph_or_damage() -> None:
    plan = solve(GRAPH, COSTS, SolveOptions(SMALLEST)).plan
    data = plan.to_bytes()
    assert len(data) < 400 and Plan.from_bytes(data) == plan
    other = trace_training_graph(PART, IMAGES[:4], LABELS[:4])
    with pytest.raises(ValueError, match="another training graph"):
        plan.simulate(other)
    for damaged in (data[:-1], b"XYZ" + data[3:], data[:12] + b"\xff\xff" + data[14:]):
        with pytest.raises(ValueError):
            Plan.from_bytes(damaged)


def test_a_budget_below_the_resident_bytes_is_refused_plainly() -> None:
    with pytest.raises(InfeasibleSchedule, match="held whatever the schedule"):
        solve(GRAPH, COSTS, SolveOptions(GRAPH.resident_bytes - 1))


def test_the_command_reports_every_figure_and_says_infeasible_plainly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stored = tmp_path / "plan.ags"
    budget = str(int(_smallest_feasible_for_batch(32) * 1.05))
    assert main(["schedule", "--memory-budget", budget, "--json", str(tmp_path / "out.json"),
                 "--schedule-out", str(stored), "--time-limit", "30"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "out.json").read_text())
    assert report["status"] == "optimal" and report["gradients_match"] is True and report["within_budget"]
    assert report["peak_memory_bytes_measured"] == report["peak_memory_bytes_planned"] <= int(budget)
    assert report["bytes_paged_measured"] == report["bytes_paged_planned"]
    assert report["schedule_bytes"] == stored.stat().st_size < 400
    assert main(["schedule", "--memory-budget", "48KB"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["status"] == "infeasible" and "infeasible" in captured.err


def _smallest_feasible_for_batch(batch: int) -> int:
    images, labels = load_mnist_sample().batch(slice(0, batch))
    graph = trace_training_graph(PART, images, labels)
    low, high = graph.resident_bytes, graph.plain_peak_bytes
    while high - low > 16384:
        middle = (low + high) // 2
        try:
            solve(graph, COSTS, SolveOptions(middle))
            high = middle
        except InfeasibleSchedule:
            low = middle
    return high


def test_the_executor_pages_through_real_files(tmp_path: Path) -> None:
    plan = solve(GRAPH, COSTS, SolveOptions(SMALLEST, allow_recompute=False)).plan
    assert any(kind is Event.PAGE_OUT for kind, _ in plan.events)
    execution = Executor(GRAPH).run(plan, IMAGES, LABELS, folder=tmp_path)
    assert execution.bytes_paged_out > 0 and gradients_match(execution, PLAIN_GRADIENTS)
    assert list(tmp_path.iterdir()) == []  # the scratch store is gone afterwards
    assert torch.isfinite(torch.tensor(execution.loss))


def test_when_the_solver_runs_out_of_time_the_rounded_relaxation_still_runs_correctly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    budget = (SMALLEST + GRAPH.plain_peak_bytes) // 2
    exact = solve(GRAPH, COSTS, SolveOptions(budget))
    real_milp = milp_module.milp

    def out_of_time(*args: Any, **kwargs: Any) -> Any:
        """HiGHS stopped by its time limit before any schedule: a fault a fast host rarely shows."""
        result = real_milp(*args, **kwargs)
        if np.any(kwargs["integrality"]):
            result.status, result.x = 1, None
        return result

    monkeypatch.setattr(milp_module, "milp", out_of_time)
    rounded = solve(GRAPH, COSTS, SolveOptions(budget))
    assert (rounded.status, rounded.method) == ("feasible", "lp-rounding")
    assert 0 <= rounded.gap < 1 and rounded.objective >= exact.objective * (1 - 1e-9)
    execution = Executor(GRAPH).run(rounded.plan, IMAGES, LABELS)
    assert execution.peak_bytes <= budget and gradients_match(execution, PLAIN_GRADIENTS)


def test_an_in_place_operation_is_refused_before_it_could_corrupt_a_kept_tensor() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10), torch.nn.ReLU(inplace=True))
    with pytest.raises(ValueError, match="in place"):
        trace_training_graph(model, IMAGES, LABELS)
