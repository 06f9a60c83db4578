"""Issue #11's figures: the memory scheduler on AgileNN's device part and on ResNet-18.

    python tools/schedule_figures.py --out docs/schedule

(a) The device part of AgileNN (extractor and local predictor), full update,
    ``--batch`` MNIST images, ``--device`` costs: the mixed program (POET) solved
    at ``--budgets`` budgets from the smallest feasible one to plain training's
    peak, each plan run by the executor on the real batch: planned against
    measured peak and bytes paged, and the gradients against plain autograd's.
(b) The smallest budget at which that step has a schedule (bisection on bytes;
    ``InfeasibleSchedule`` one byte below it), against plain training's peak
    (the store-all schedule's simulated peak).
(c) ResNet-18 for 32x32 inputs, ``--resnet-batch`` images, the mixed program
    with ``--time-limit`` at the budget that halves what store-all holds above
    the resident bytes (half of store-all's whole peak is below the weights and
    Adam state alone; that budget's refusal is reported too).
(d) The five strategies on the device part at the same budgets, each program
    solved once for energy and once for time; every plan executed and checked.

Prints a table to stderr and one JSON line to stdout, and writes
``schedule_figures.json`` (a-c), ``strategies_vs_memory.json`` (d's points) and
``energy_time_vs_memory.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from agilenn.adapt.selection import DevicePart
from agilenn.bench.devices import get_device
from agilenn.data import load_mnist_sample
from agilenn.pretrained import load_checkpoint
from agilenn.schedule.costs import DEVICES, DeviceCosts, device_costs
from agilenn.schedule.executor import Executor, gradients_match, plain_step
from agilenn.schedule.graph import TrainingGraph, trace_training_graph
from agilenn.schedule.milp import InfeasibleSchedule, SolveOptions, solve
from agilenn.schedule.models import ResNet18
from agilenn.schedule.program import Event, Plan
from agilenn.schedule.strategies import STRATEGIES, run_strategy

SOLVE_GOAL_SECONDS = 10.0  # (a): the device part's program proved optimal within this
HEURISTICS = ("store-all", "checkpoint-all")  # no program: the objective does not change them
FITS = ("optimal", "feasible")
# mixed often equals recompute-only and store-all is one point: thin dashes over a wide line keep both seen
STYLE: dict[str, dict[str, Any]] = {
    "store-all": {"marker": "*", "markersize": 14, "linestyle": "none"},
    "checkpoint-all": {"marker": "s"},
    "recompute-only": {"marker": "o", "linewidth": 4, "markersize": 8, "alpha": 0.6},
    "page-only": {"marker": "^"},
    "mixed": {"marker": "x", "linestyle": "--", "color": "black"},
}


def device_part_step(batch: int) -> tuple[TrainingGraph, Tensor, Tensor]:
    """The full update of AgileNN's device part on the first ``batch`` shipped MNIST images."""
    part = DevicePart(load_checkpoint("pretrained:mnist").build_model()).eval()
    sample = load_mnist_sample()
    if not 0 < batch <= len(sample):
        raise ValueError(f"--batch must lie in 1..{len(sample)}")
    x, y = sample.batch(slice(0, batch))
    return trace_training_graph(part, x, y), x, y


def store_all_peak(graph: TrainingGraph, costs: DeviceCosts) -> int:
    plan = run_strategy("store-all", graph, costs, SolveOptions(2**62)).plan
    assert plan is not None
    return plan.simulate(graph).peak_bytes


def smallest_budget(graph: TrainingGraph, costs: DeviceCosts, feasible: int) -> dict[str, Any]:
    """The smallest budget in bytes with a mixed schedule, by bisection from one that has one.

    Bisection is sound because a larger budget only loosens the program. It starts from the
    resident bytes (surely infeasible: nothing else fits) rather than from the solver's own
    lower bound, so that the search does not take the pre-check's word for it."""
    started = time.perf_counter()
    low, high, solves = graph.resident_bytes - 1, feasible, 0
    while high - low > 1:
        middle = (low + high) // 2
        solves += 1
        try:
            solve(graph, costs, SolveOptions(middle))
            high = middle
        except InfeasibleSchedule:
            low = middle
    try:
        solve(graph, costs, SolveOptions(high - 1))
        below = "feasible (bisection broken)"
    except InfeasibleSchedule as error:
        below = str(error)
    return {"smallest_budget_bytes": high, "solves": solves + 1, "reason_one_byte_below": below,
            "search_seconds": time.perf_counter() - started}


def budget_range(low: int, high: int, count: int) -> list[int]:
    if count < 2:
        return [high]
    return sorted({low + (high - low) * k // (count - 1) for k in range(count)})


def execute(graph: TrainingGraph, executor: Executor, plan: Plan, x: Tensor, y: Tensor,
            reference: dict[str, Tensor], budget: int) -> dict[str, Any]:
    """What the plan promises against what the executor measures running it."""
    simulation = plan.simulate(graph)
    execution = executor.run(plan, x, y)
    row: dict[str, Any] = {"planned_peak_bytes": simulation.peak_bytes,
                           "measured_peak_bytes": execution.peak_bytes,
                           "planned_paged_in": simulation.bytes_paged_in,
                           "measured_paged_in": execution.bytes_paged_in,
                           "planned_paged_out": simulation.bytes_paged_out,
                           "measured_paged_out": execution.bytes_paged_out,
                           "gradients_match": gradients_match(execution, reference), "macs": simulation.macs,
                           "computations": simulation.computations, "plan_bytes": len(plan.to_bytes())}
    row["unused_paged_out_bytes"] = unused_page_outs(graph, plan)
    row["problems"] = problems(row, budget)
    return row


def unused_page_outs(graph: TrainingGraph, plan: Plan) -> int:
    """Bytes written to flash and never read back: cost a solver stopped short of optimal leaves."""
    read = {node for kind, node in plan.events if kind is Event.PAGE_IN}
    return sum(graph.nodes[node].size_bytes for kind, node in plan.events
               if kind is Event.PAGE_OUT and node not in read)


def problems(row: dict[str, Any], budget: int) -> list[str]:
    found = []
    if row["measured_peak_bytes"] > budget:
        found.append(f"measured peak {row['measured_peak_bytes']} above the budget {budget}")
    if row["measured_peak_bytes"] > row["planned_peak_bytes"]:
        found.append(f"measured peak {row['measured_peak_bytes']} above planned {row['planned_peak_bytes']}")
    for kind in ("paged_in", "paged_out"):
        if row[f"measured_{kind}"] != row[f"planned_{kind}"]:
            found.append(f"{kind}: measured {row[f'measured_{kind}']} != planned {row[f'planned_{kind}']}")
    if not row["gradients_match"]:
        found.append("gradients differ from plain autograd's")
    return found


def strategy_points(graph: TrainingGraph, costs: DeviceCosts, budgets: list[int], x: Tensor, y: Tensor,
                    reference: dict[str, Tensor]) -> list[dict[str, Any]]:
    """(d), and (a) as its mixed-for-energy rows: every strategy at every budget, executed."""
    executor = Executor(graph)
    points = []
    for budget in budgets:
        for strategy in STRATEGIES:
            for objective in ("energy",) if strategy in HEURISTICS else ("energy", "time"):
                outcome = run_strategy(strategy, graph, costs, SolveOptions(budget, objective=objective))
                point: dict[str, Any] = {"budget_bytes": budget, "strategy": strategy, "objective": objective,
                                         "status": outcome.status, "solve_seconds": outcome.solve_seconds,
                                         "gap": outcome.gap}
                if outcome.plan is not None:
                    point["energy_j"] = outcome.plan.objective(graph, costs, "energy")
                    point["time_s"] = outcome.plan.objective(graph, costs, "time")
                    # store-all over budget is run too: its peak is plain training's, not a promise
                    point.update(execute(graph, executor, outcome.plan, x, y, reference,
                                         budget if outcome.status in FITS else 2**62))
                points.append(point)
    return points


def resnet_figure(batch: int, width: int, costs: DeviceCosts, time_limit: float, seed: int,
                  ) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = ResNet18(width=width).eval()
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    graph = trace_training_graph(model, x, y)
    peak = store_all_peak(graph, costs)
    row: dict[str, Any] = {"batch": batch, "width": width, "nodes": len(graph),
                           "parameters": sum(p.numel() for p in model.parameters()),
                           "resident_bytes": graph.resident_bytes, "store_all_peak_bytes": peak,
                           "time_limit_s": time_limit}
    try:
        solve(graph, costs, SolveOptions(peak // 2, time_limit=time_limit))
        row["half_peak"] = "feasible"
    except InfeasibleSchedule as error:
        row["half_peak"] = str(error)
    budget = graph.resident_bytes + (peak - graph.resident_bytes) // 2
    row["budget_bytes"] = budget
    started = time.perf_counter()
    try:
        solution = solve(graph, costs, SolveOptions(budget, time_limit=time_limit))
    except InfeasibleSchedule as error:
        row.update(status="infeasible", reason=str(error), solve_seconds=time.perf_counter() - started)
        return row
    row.update(status=solution.status, gap=solution.gap, method=solution.method,
               solve_seconds=solution.solve_seconds, variables=solution.variables,
               constraints=solution.constraints, objective_j=solution.objective,
               store_all_energy_j=costs.compute_joules(sum(n.macs for n in graph.nodes)))
    _, reference = plain_step(graph, x, y)
    row.update(execute(graph, Executor(graph), solution.plan, x, y, reference, budget))
    return row


def plot(points: list[dict[str, Any]], smallest: int, plain: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a benchmark machine
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, objective, key, scale, unit in ((axes[0], "energy", "energy_j", 1e3, "energy per step (mJ)"),
                                               (axes[1], "time", "time_s", 1.0, "time per step (s)")):
        for strategy in STRATEGIES:
            wanted = "energy" if strategy in HEURISTICS else objective
            mine = [p for p in points if p["strategy"] == strategy and p["objective"] == wanted
                    and p["status"] in FITS]
            if mine:
                axis.plot([p["budget_bytes"] / 1024 for p in mine], [p[key] * scale for p in mine],
                          label=strategy, **STYLE[strategy])
        for bound, label in ((smallest, "smallest feasible"), (plain, "plain training")):
            axis.axvline(bound / 1024, color="grey", linestyle=":", linewidth=1)
            axis.annotate(label, (bound / 1024, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                          rotation=90, va="top", ha="right", color="grey")
        axis.set_xlabel("memory budget (KiB, resident included)")
        axis.set_ylabel(unit)
        axis.set_title(f"minimising {objective}")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="center right")
    figure.suptitle("AgileNN device part, full update: schedules within a memory budget")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _json(value: Any, indent: int | None = None) -> str:
    """Strict JSON: HiGHS reports an unknown gap as NaN, which json.dumps would write bare."""
    def clean(item: Any) -> Any:
        if isinstance(item, float) and item != item:
            return None
        if isinstance(item, dict):
            return {key: clean(entry) for key, entry in item.items()}
        if isinstance(item, list):
            return [clean(entry) for entry in item]
        return item

    return json.dumps(clean(value), indent=indent, allow_nan=False)


def _kib(value: int) -> str:
    return f"{value / 1024:,.1f}"


def print_table(summary: dict[str, Any], points: list[dict[str, Any]]) -> None:
    out = sys.stderr
    a, b, c = summary["device_part"], summary["smallest"], summary["resnet18"]
    print(f"(a) device part, batch {a['batch']}, {a['nodes']} nodes, resident {_kib(a['resident_bytes'])} "
          f"KiB, {summary['device']}; mixed program for energy, executed", file=out)
    print(f"{'budget KiB':>11} {'status':>8} {'solve s':>8} {'peak plan':>10} {'peak meas':>10} "
          f"{'in plan/meas KiB':>17} {'out plan/meas KiB':>18} {'grads':>6} {'mJ':>7}", file=out)
    for row in a["schedules"]:
        if "planned_peak_bytes" not in row:
            print(f"{_kib(row['budget_bytes']):>11} {row['status']:>8}", file=out)
            continue
        print(f"{_kib(row['budget_bytes']):>11} {row['status']:>8} {row['solve_seconds']:>8.2f} "
              f"{_kib(row['planned_peak_bytes']):>10} {_kib(row['measured_peak_bytes']):>10} "
              f"{_kib(row['planned_paged_in']) + '/' + _kib(row['measured_paged_in']):>17} "
              f"{_kib(row['planned_paged_out']) + '/' + _kib(row['measured_paged_out']):>18} "
              f"{'ok' if row['gradients_match'] else 'DIFFER':>6} {row['energy_j'] * 1e3:>7.3f}", file=out)
    print(f"    slowest solve {a['slowest_solve_seconds']:.2f} s; all optimal within "
          f"{SOLVE_GOAL_SECONDS:.0f} s: {a['all_optimal_within_goal']}", file=out)
    print(f"(b) smallest budget {b['smallest_budget_bytes']:,} B ({_kib(b['smallest_budget_bytes'])} KiB) vs "
          f"plain training's peak {b['plain_peak_bytes']:,} B: ratio {b['ratio']:.3f} "
          f"({b['solves']} solves, {b['search_seconds']:.1f} s)", file=out)
    print(f"    one byte below: {b['reason_one_byte_below']}", file=out)
    if c.get("skipped"):
        print("(c) ResNet-18 skipped (--no-resnet)", file=out)
    else:
        line = (f"(c) ResNet-18 width {c['width']}, batch {c['batch']}: {c['nodes']} nodes, resident "
                f"{_kib(c['resident_bytes'])} KiB, store-all {_kib(c['store_all_peak_bytes'])} KiB, budget "
                f"{_kib(c['budget_bytes'])} KiB: {c['status']}")
        if "variables" in c:
            line += (f" ({c['method']}), gap {c['gap']:.4f}, {c['solve_seconds']:.1f} s, {c['variables']:,} "
                     f"variables, {c['constraints']:,} constraints; peak planned/measured "
                     f"{_kib(c['planned_peak_bytes'])}/{_kib(c['measured_peak_bytes'])} KiB, paged in/out "
                     f"{_kib(c['planned_paged_in'])}/{_kib(c['planned_paged_out'])} KiB (never read back: "
                 f"{_kib(c['unused_paged_out_bytes'])} KiB), gradients "
                     f"{'match' if c['gradients_match'] else 'DIFFER'}")
        print(line, file=out)
        print(f"    half of store-all's peak: {c['half_peak']}", file=out)
    print("(d) strategies (energy mJ / time s; '-' does not fit)", file=out)
    budgets = sorted({p["budget_bytes"] for p in points})
    print(f"{'strategy':>16} {'objective':>9} " + " ".join(f"{_kib(bud):>15}" for bud in budgets), file=out)
    for strategy in STRATEGIES:
        for objective in ("energy",) if strategy in HEURISTICS else ("energy", "time"):
            cells = []
            for budget in budgets:
                (p,) = [p for p in points if p["strategy"] == strategy and p["objective"] == objective
                        and p["budget_bytes"] == budget]
                cells.append(f"{p['energy_j'] * 1e3:.2f}/{p['time_s']:.3f}" if p["status"] in FITS else "-")
            print(f"{strategy:>16} {objective:>9} " + " ".join(f"{cell:>15}" for cell in cells), file=out)
    for problem in summary["problems"]:
        print(f"PROBLEM: {problem}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/schedule"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="stm32f746", choices=DEVICES)
    parser.add_argument("--budgets", type=int, default=8, help="budgets for (a) and (d)")
    parser.add_argument("--resnet-batch", type=int, default=1)
    parser.add_argument("--resnet-width", type=int, default=64)
    parser.add_argument("--time-limit", type=float, default=60.0, help="ResNet-18's solver limit, seconds")
    parser.add_argument("--no-resnet", action="store_true", help="skip (c), the slow part")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the benchmark machines share two cores; more threads thrash
    started = time.perf_counter()
    costs = device_costs(args.device, get_device(args.device).macs_per_second)

    graph, x, y = device_part_step(args.batch)
    _, reference = plain_step(graph, x, y)
    plain = store_all_peak(graph, costs)
    smallest = smallest_budget(graph, costs, plain)
    smallest.update(plain_peak_bytes=plain, ratio=smallest["smallest_budget_bytes"] / plain,
                    graph_plain_peak_bytes=graph.plain_peak_bytes)
    budgets = budget_range(smallest["smallest_budget_bytes"], plain, args.budgets)
    points = strategy_points(graph, costs, budgets, x, y, reference)
    schedules = [p for p in points if p["strategy"] == "mixed" and p["objective"] == "energy"]
    solved = [p["solve_seconds"] for p in schedules]
    within = all(p["status"] == "optimal" and p["solve_seconds"] <= SOLVE_GOAL_SECONDS for p in schedules)
    device_part = {"batch": args.batch, "nodes": len(graph), "resident_bytes": graph.resident_bytes,
                   "schedules": schedules, "slowest_solve_seconds": max(solved),
                   "all_optimal_within_goal": within}
    resnet: dict[str, Any] = {"skipped": True}
    if not args.no_resnet:
        resnet = resnet_figure(args.resnet_batch, args.resnet_width, costs, args.time_limit, args.seed)
    found = [f"{p['strategy']}/{p['objective']} at {p['budget_bytes']} B: {problem}"
             for p in points for problem in p.get("problems", [])]
    found += [f"resnet18 at {resnet['budget_bytes']} B: {problem}" for problem in resnet.get("problems", [])]
    summary = {"device": args.device, "device_part": device_part, "smallest": smallest, "resnet18": resnet,
               "problems": found, "seconds": time.perf_counter() - started}

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "strategies_vs_memory.json").write_text(_json(points, indent=1) + "\n")
    (args.out / "schedule_figures.json").write_text(_json(summary, indent=1) + "\n")
    plot(points, smallest["smallest_budget_bytes"], plain, args.out / "energy_time_vs_memory.png")
    print_table(summary, points)
    compact = {"device_part": {k: v for k, v in device_part.items() if k != "schedules"},
               "smallest": smallest, "resnet18": resnet, "problems": found, "seconds": summary["seconds"]}
    print(_json(compact))
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
