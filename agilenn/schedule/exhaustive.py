"""The optimum of the schedule program by exhaustive search, to check on small graphs that
:func:`~agilenn.schedule.milp.solve` really finds the optimum. Exponential in the graph: meant
for graphs of about eight nodes, never for planning.

It models the program of :mod:`agilenn.schedule.milp`, decision for decision: a dynamic
program over the stages whose state is what RAM holds at a stage's start and what is in flash,
trying every recomputation, page-in and keep, with Checkmate's memory accounting tensor by
tensor. A page-out costs the same whenever it happens and takes no RAM, so a tensor is
charged its page-out the first time it is paged in, as if it had been paged out when first
computed: the same optimum, with no page-out decisions to enumerate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator

from .costs import DeviceCosts
from .graph import Node, TrainingGraph
from .milp import SolveOptions
from .program import needed_after

Front = list[tuple[float, float]]  # (objective, seconds): none better in both than another


def brute_force(graph: TrainingGraph, costs: DeviceCosts, options: SolveOptions) -> float | None:
    """The least objective of any schedule within the budgets; None if no schedule fits."""
    size = len(graph)
    last = needed_after(graph)
    sizes = [node.size_bytes for node in graph.nodes]
    users = graph.consumers()
    room = options.memory_budget - graph.resident_bytes
    energy = options.objective == "energy"
    # Without a time budget, seconds decide nothing: counting them as zero keeps one value a state.
    timed = 1.0 if math.isfinite(options.time_budget) else 0.0
    compute = [(costs.compute_joules(node.macs) if energy else costs.compute_seconds(node.macs),
                timed * costs.compute_seconds(node.macs)) for node in graph.nodes]
    paging = [(sizes[i] * costs.read_joules_per_byte if energy else costs.page_in_seconds(sizes[i]),
               timed * costs.page_in_seconds(sizes[i])) for i in range(size)]
    writing = [(sizes[i] * costs.write_joules_per_byte if energy else costs.page_out_seconds(sizes[i]),
                timed * costs.page_out_seconds(sizes[i])) for i in range(size)]
    bytes_of = [sum(sizes[i] for i in _members(mask)) for mask in range(1 << size)]
    users_of = [_mask(users[i]) for i in range(size)]
    deps_of = [_mask(node.deps) for node in graph.nodes]

    # (RAM at the stage's start, tensors whose page-out is already charged) -> front
    states: dict[tuple[int, int], Front] = {(0, 0): [(0.0, 0.0)]}
    for t in range(size):
        live = _mask(i for i in range(t) if last[i] >= t)
        carried = _mask(i for i in range(t + 1) if last[i] >= t + 1)
        following: dict[tuple[int, int], Front] = {}
        for (ram, flash), front in states.items():
            for extra in _subsets(live & ~ram if options.allow_recompute else 0):
                computed = extra | 1 << t
                order = list(_members(computed))
                needed = 0
                for k in order:
                    needed |= deps_of[k]
                for paged_in in _subsets(live & ~ram & ~extra if options.allow_paging else 0):
                    if needed & ~(computed | ram | paged_in):
                        continue
                    step = [sum(compute[k][j] for k in order) + sum(paging[i][j] for i in _members(paged_in))
                            + sum(writing[i][j] for i in _members(paged_in & ~flash)) for j in (0, 1)]
                    # Tensors each computed node may free: itself and its inputs, unless a later
                    # node of the stage reads them (the program's FREE may drop them no earlier).
                    frees = [(k, _mask(i for i in (*graph.nodes[k].deps, k)
                                       if not users_of[i] & computed & ~((2 << k) - 1))) for k in order]
                    start = bytes_of[ram | paged_in]
                    next_flash = (flash | paged_in) & carried
                    for keep in _subsets((ram | computed | paged_in) & carried):
                        if _fits(start, frees, keep, sizes, bytes_of, room):
                            into = following.setdefault((keep, next_flash), [])
                            for objective, seconds in front:
                                _add(into, objective + step[0], seconds + step[1], options.time_budget)
        states = following
    return min((objective for front in states.values() for objective, _ in front), default=None)


def _fits(start: int, frees: list[tuple[int, int]], keep: int, sizes: list[int], bytes_of: list[int],
          room: int) -> bool:
    """Checkmate's accounting: the RAM in use right after each computation stays within room."""
    in_use, freed = start, 0
    for k, candidates in frees:
        in_use += sizes[k] - freed
        if in_use > room:
            return False
        freed = bytes_of[candidates & ~keep]  # what the next stage keeps is never freed
    return True


def _add(front: Front, objective: float, seconds: float, time_budget: float) -> None:
    if seconds > time_budget or any(o <= objective and s <= seconds for o, s in front):
        return
    front[:] = [(o, s) for o, s in front if not (objective <= o and seconds <= s)]
    front.append((objective, seconds))


def _mask(indexes: Iterable[int]) -> int:
    mask = 0
    for i in indexes:
        mask |= 1 << i
    return mask


def _members(mask: int) -> Iterator[int]:
    i = 0
    while mask >> i:
        if mask >> i & 1:
            yield i
        i += 1


def _subsets(mask: int) -> Iterator[int]:
    subset = mask
    while True:
        yield subset
        if not subset:
            return
        subset = (subset - 1) & mask


def random_training_graph(rng: random.Random) -> TrainingGraph:
    """Forward nodes (the last one the loss), then a backward node for each of the last few, as
    :func:`~agilenn.schedule.graph.trace_training_graph` makes them: a backward node reads its
    operation's inputs and the backward nodes of the operation's consumers. At most 8 nodes."""
    forward = rng.randint(2, 5)
    backward = rng.randint(1, min(forward, 8 - forward))
    skips = rng.random() < 0.5
    scale = rng.choice([1, 1000])  # a step of microjoules, or of millijoules and megabytes
    nodes: list[Node] = []
    for j in range(forward):
        deps = [j - 1] if j else []
        if skips and j >= 2 and rng.random() < 0.6:
            deps.append(rng.randrange(j - 1))
        # Spread over decades, so that paging is sometimes cheaper than recomputing and sometimes not.
        size = 4 if j == forward - 1 else scale * 64 * round(2 ** rng.uniform(0, 6))
        macs = scale * round(10 ** rng.uniform(3, 6))
        nodes.append(Node(j, f"f{j}", False, tuple(sorted(deps)), size, macs, f"f{j}"))
    gradient_of: dict[int, int] = {}
    for j in range(forward - 1, forward - 1 - backward, -1):
        op = nodes[j]
        consumers = [c.index for c in nodes[:forward] if j in c.deps]
        inputs = {*op.deps, *(gradient_of[c] for c in consumers)}
        index = len(nodes)
        gradient_of[j] = index
        nodes.append(Node(index, f"f{j}'", True, tuple(sorted(inputs)),
                          sum(nodes[d].size_bytes for d in op.deps), 3 * op.macs, op.fx_name))
    return TrainingGraph(nodes, 256 * rng.randint(0, 4))
