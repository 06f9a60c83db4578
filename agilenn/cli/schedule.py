"""``agilenn schedule``: plan a training step of the device part within a memory and time budget.

Traces one training step of the device part (forward, loss, backward and the
optimizer's update) for the chosen update, writes POET's program over
recomputation and paging to flash, solves it with HiGHS, then runs the
schedule in PyTorch on a real batch and checks it: the gradients equal a
plain step's, the measured peak stays within the budget, and the bytes paged
are the ones planned. Prints one JSON object (``--json PATH`` also writes it).

Costs: MACs over the ``--device`` profile's MAC rate, and that device's paging
bandwidth and energy (see ``agilenn.schedule.costs`` for the assumptions).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..adapt.adapter import METHODS, AdaptConfig, choose_selection
from ..adapt.selection import DevicePart
from ..bench.devices import get_device
from ..data import DATASET_HELP, dataset_spec, load_dataset, load_mnist_sample
from ..errors import AgileNNError
from ..pretrained import DEFAULT_MODEL, load_checkpoint
from ..schedule.costs import DEVICES, device_costs
from ..schedule.executor import Executor, gradients_match, plain_step
from ..schedule.graph import trace_training_graph
from ..schedule.milp import OBJECTIVES, InfeasibleSchedule, SolveOptions, solve
from .adapt import memory_size
from .common import fail, print_json, write_atomically


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn schedule", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--part", choices=("device",), default="device", help="what trains on the device")
    parser.add_argument("--method", choices=METHODS, default="full",
                        help="what updates (sparse and elastic choose on --dataset)")
    parser.add_argument("--dataset", type=dataset_spec, default="mnist-sample", help=DATASET_HELP)
    parser.add_argument("--data-dir", help="dataset folder (default: $AGILENN_DATA)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--memory-budget", type=memory_size, required=True, help="e.g. 1.5MB")
    parser.add_argument("--time-budget", type=float, default=math.inf, help="seconds on --device")
    parser.add_argument("--device", choices=DEVICES, default="stm32f746")
    parser.add_argument("--objective", choices=OBJECTIVES, default="energy")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds HiGHS may take")
    parser.add_argument("--no-recompute", action="store_true")
    parser.add_argument("--no-paging", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--schedule-out", type=Path, help="write the schedule a device would store")
    parser.add_argument("--plot", type=Path, help="folder for a plot of RAM in use, planned and measured")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.batch < 1:
            raise ValueError("--batch must be at least 1")
        torch.set_num_threads(1)
        model = load_checkpoint(args.model).build_model()
        dataset = load_dataset(args.dataset, "train", args.data_dir) if args.dataset != "mnist-sample" \
            else load_mnist_sample()
        images, labels = dataset.batch(slice(0, args.batch))
        selection, _ = choose_selection(model, dataset.head(max(args.batch, 200)),
                                        AdaptConfig(method=args.method, batch_size=args.batch))
        graph = trace_training_graph(DevicePart(model).eval(), images, labels, set(selection.ratios))
        costs = device_costs(args.device, get_device(args.device).macs_per_second)
        options = SolveOptions(args.memory_budget, args.time_budget, args.objective, args.time_limit,
                               not args.no_recompute, not args.no_paging)
    except (AgileNNError, OSError, ValueError) as exc:
        return fail(str(exc))
    time_budget = args.time_budget if math.isfinite(args.time_budget) else None
    report: dict[str, Any] = {"method": args.method, "device": args.device, "objective_kind": args.objective,
                              "nodes": len(graph), "memory_budget_bytes": args.memory_budget,
                              "time_budget_seconds": time_budget,
                              "plain_peak_memory_bytes": graph.plain_peak_bytes,
                              "resident_bytes": graph.resident_bytes}
    try:
        solution = solve(graph, costs, options)
    except InfeasibleSchedule as exc:
        report.update(status="infeasible", reason=str(exc))
        _emit(report, args.json)
        return fail(f"infeasible: {exc}")
    plan = solution.plan
    planned = plan.simulate(graph)
    execution = Executor(graph).run(plan, images, labels)
    _, reference = plain_step(graph, images, labels)
    schedule = plan.to_bytes()
    if args.schedule_out:
        write_atomically(args.schedule_out, schedule)
    report.update({
        "status": solution.status, "objective": solution.objective, "gap": solution.gap,
        "solve_seconds": round(solution.solve_seconds, 3), "solver": solution.method,
        "variables": solution.variables, "constraints": solution.constraints,
        "peak_memory_bytes_planned": planned.peak_bytes, "peak_memory_bytes_measured": execution.peak_bytes,
        "within_budget": execution.peak_bytes <= args.memory_budget,
        "bytes_paged_planned": planned.bytes_paged, "bytes_paged_measured": execution.bytes_paged,
        "recomputations": planned.computations - len(graph),
        "time_seconds_planned": plan.objective(graph, costs, "time"),
        "energy_joules_planned": plan.objective(graph, costs, "energy"),
        "gradients_match": gradients_match(execution, reference), "schedule_bytes": len(schedule),
    })
    _emit(report, args.json)
    if args.plot:
        _plot(graph, plan, args.plot)
    return 0


def _emit(report: dict[str, Any], path: Path | None) -> None:
    print_json(report)
    if path is not None:
        write_atomically(path, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())


def _plot(graph: Any, plan: Any, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..schedule.program import Event

    sizes = [node.size_bytes for node in graph.nodes]
    live, trace = 0, []
    for kind, node in plan.events:
        if kind in (Event.COMPUTE, Event.PAGE_IN):
            live += sizes[node]
        elif kind is Event.FREE:
            live -= sizes[node]
        trace.append((graph.resident_bytes + live) / 1024)
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.plot(trace, drawstyle="steps-post")
    axis.set_xlabel("event")
    axis.set_ylabel("RAM in use (KiB)")
    folder.mkdir(parents=True, exist_ok=True)
    figure.savefig(folder / "schedule_memory.png", dpi=120, bbox_inches="tight")
