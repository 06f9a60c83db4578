"""Issue #11's optimality figure: the MILP's optimum against an exhaustive search's.

    python tools/schedule_optimality.py --graphs 200

Random training graphs of at most eight nodes (chains and skip connections,
forward then backward as ``trace_training_graph`` makes them), each under
several memory budgets from below the smallest working set to plain training's
peak, every recompute/paging variant, and both objectives. Prints how many
cases agree (same optimum within 1e-6, or both infeasible) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence

from agilenn.schedule.costs import device_costs
from agilenn.schedule.exhaustive import brute_force, random_training_graph
from agilenn.schedule.milp import InfeasibleSchedule, SolveOptions, solve

SHARES = (-0.02, 0.0, 0.05, 0.1, 0.2, 0.35, 0.6, 1.0)
DEVICES = ("stm32f746", "esp32", "rpi-zero")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args(argv)
    cases = agree = infeasible = 0
    largest = 0
    disagreements = []
    started = time.perf_counter()
    for seed in range(args.seed, args.seed + args.graphs):
        rng = random.Random(seed)
        graph = random_training_graph(rng)
        largest = max(largest, len(graph))
        costs = device_costs(rng.choice(DEVICES), 124e6)
        floor = graph.resident_bytes + max(node.size_bytes + sum(graph.nodes[d].size_bytes for d in node.deps)
                                           for node in graph.nodes)
        for share in SHARES:
            budget = max(1, int(floor + share * (graph.plain_peak_bytes - floor)))
            for recompute, paging in ((True, True), (True, False), (False, True)):
                for objective in ("energy", "time"):
                    options = SolveOptions(budget, objective=objective, allow_recompute=recompute,
                                           allow_paging=paging)
                    expected = brute_force(graph, costs, options)
                    try:
                        found: float | None = solve(graph, costs, options).objective
                    except InfeasibleSchedule:
                        found = None
                    cases += 1
                    infeasible += expected is None
                    same = found is None and expected is None or (
                        found is not None and expected is not None
                        and abs(found - expected) <= 1e-6 * expected)
                    agree += same
                    if not same:
                        disagreements.append({"seed": seed, "budget": budget, "objective": objective,
                                              "exhaustive": expected, "milp": found})
    seconds = time.perf_counter() - started
    print(f"{agree} of {cases} cases agree ({infeasible} infeasible by both counts), graphs of at most "
          f"{largest} nodes, {seconds:.0f} s", file=sys.stderr)
    print(json.dumps({"graphs": args.graphs, "cases": cases, "agree": agree, "infeasible": infeasible,
                      "largest_graph": largest, "seconds": seconds, "disagreements": disagreements[:10]}))
    return 0 if agree == cases else 1


if __name__ == "__main__":
    raise SystemExit(main())
