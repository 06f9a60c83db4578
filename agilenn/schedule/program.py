"""A schedule as a program of events, what it costs, and its bytes on a device. Pure.

A :class:`Plan` is a list of events in order: ``COMPUTE i``, ``PAGE_IN i``,
``PAGE_OUT i`` and ``FREE i`` (drop node ``i``'s output from RAM). It is built
stage by stage from a solver's decisions (:meth:`Plan.from_stages`): within a
stage a page-in happens just before its first use, a page-out as soon as the
tensor is at hand, and a tensor leaves RAM right after its last use in the
stage unless the next stage keeps it. :meth:`Plan.simulate` replays it and
gives the peak RAM, the bytes paged and the compute; the executor
(:mod:`agilenn.schedule.executor`) runs the same events on real tensors.

On a device a plan is ``b"AGS" + version + graph fingerprint (8 bytes) +
node count + event count + events``, two bytes an event (two bits of kind,
fourteen of node): a few hundred bytes for the device part of AgileNN.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .costs import DeviceCosts
from .graph import TrainingGraph

MAGIC = b"AGS"
VERSION = 1
MAX_NODES = 1 << 14


class Event(enum.IntEnum):
    COMPUTE = 0
    PAGE_IN = 1
    PAGE_OUT = 2
    FREE = 3


Stage = tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[int]]  # computed, in, out, kept


@dataclass(frozen=True)
class Simulation:
    peak_bytes: int  # resident included
    bytes_paged_in: int
    bytes_paged_out: int
    macs: int
    computations: int

    @property
    def bytes_paged(self) -> int:
        return self.bytes_paged_in + self.bytes_paged_out


@dataclass(frozen=True)
class Plan:
    fingerprint: bytes
    node_count: int
    events: tuple[tuple[Event, int], ...]

    @classmethod
    def from_stages(cls, graph: TrainingGraph, stages: Sequence[Stage]) -> Plan:
        """Events from per-stage decisions; ValueError if a decision uses what is not at hand."""
        events: list[tuple[Event, int]] = []
        ram: set[int] = set()
        flash: set[int] = set()
        for t, (computed, paged_in, paged_out, kept) in enumerate(stages):
            computed, wanted_in, kept_next = sorted(computed), set(paged_in), set(kept)
            out_pending = set(paged_out)
            last_use: dict[int, int] = {}
            for position, node in enumerate(computed):
                for dep in graph.nodes[node].deps:
                    last_use[dep] = position
            for node in sorted(ram & out_pending):
                events.append((Event.PAGE_OUT, node))
                flash.add(node)
                out_pending.discard(node)
            for node in sorted(ram):
                if node not in kept_next and node not in last_use:
                    events.append((Event.FREE, node))
                    ram.discard(node)
            for position, node in enumerate(computed):
                for dep in graph.nodes[node].deps:
                    if dep in ram:
                        continue
                    if dep in wanted_in and dep in flash:
                        events.append((Event.PAGE_IN, dep))
                        ram.add(dep)
                        wanted_in.discard(dep)
                        continue
                    raise ValueError(f"stage {t}: {graph.nodes[node].name} needs {graph.nodes[dep].name}, "
                                     "which is neither in RAM nor paged in")
                events.append((Event.COMPUTE, node))
                ram.add(node)
                if node in out_pending:
                    events.append((Event.PAGE_OUT, node))
                    flash.add(node)
                    out_pending.discard(node)
                for done in sorted({*graph.nodes[node].deps, node}):
                    if done in ram and done not in kept_next and last_use.get(done, -1) <= position:
                        events.append((Event.FREE, done))
                        ram.discard(done)
            for node in sorted(wanted_in & flash):  # paged in to be kept, not used here
                events.append((Event.PAGE_IN, node))
                ram.add(node)
            missing = kept_next - ram
            if missing or out_pending:
                raise ValueError(f"stage {t}: keeps {sorted(missing)} or pages out {sorted(out_pending)} "
                                 "without having them")
        events += [(Event.FREE, node) for node in sorted(ram)]
        return cls(graph.fingerprint(), len(graph), tuple(events))

    def without_unread_page_outs(self) -> Plan:
        """The plan less the page-outs nothing pages in again: a solver stopped short of optimal
        leaves some, and each costs a write for nothing."""
        read = {node for kind, node in self.events if kind is Event.PAGE_IN}
        events = tuple(e for e in self.events if not (e[0] is Event.PAGE_OUT and e[1] not in read))
        return Plan(self.fingerprint, self.node_count, events) if len(events) < len(self.events) else self

    def simulate(self, graph: TrainingGraph) -> Simulation:
        self._check_graph(graph)
        sizes = [node.size_bytes for node in graph.nodes]
        ram: set[int] = set()
        flash: set[int] = set()
        live = peak = paged_in = paged_out = macs = computations = 0
        for kind, node in self.events:
            if kind is Event.COMPUTE:
                missing = [d for d in graph.nodes[node].deps if d not in ram]
                if missing or node in ram:
                    raise ValueError(f"{graph.nodes[node].name} computed without its inputs {missing} "
                                     "or over its own output")
                ram.add(node)
                live += sizes[node]
                macs += graph.nodes[node].macs
                computations += 1
            elif kind is Event.PAGE_IN:
                if node not in flash or node in ram:
                    raise ValueError(f"{graph.nodes[node].name} paged in from nowhere or twice")
                ram.add(node)
                live += sizes[node]
                paged_in += sizes[node]
            elif kind is Event.PAGE_OUT:
                if node not in ram:
                    raise ValueError(f"{graph.nodes[node].name} paged out without being in RAM")
                flash.add(node)
                paged_out += sizes[node]
            else:
                if node not in ram:
                    raise ValueError(f"{graph.nodes[node].name} freed without being in RAM")
                ram.discard(node)
                live -= sizes[node]
            peak = max(peak, live)
        return Simulation(graph.resident_bytes + peak, paged_in, paged_out, macs, computations)

    def objective(self, graph: TrainingGraph, costs: DeviceCosts, objective: str) -> float:
        """Joules (``energy``) or seconds (``time``) the plan costs on the device."""
        simulation = self.simulate(graph)
        if objective == "time":
            return costs.compute_seconds(simulation.macs) + costs.page_in_seconds(simulation.bytes_paged_in) \
                + costs.page_out_seconds(simulation.bytes_paged_out)
        return (costs.compute_joules(simulation.macs) + simulation.bytes_paged_in * costs.read_joules_per_byte
                + simulation.bytes_paged_out * costs.write_joules_per_byte)

    def to_bytes(self) -> bytes:
        if self.node_count >= MAX_NODES:
            raise ValueError(f"a stored plan holds at most {MAX_NODES - 1} nodes")
        header = MAGIC + bytes([VERSION]) + self.fingerprint + struct.pack("<HH", self.node_count,
                                                                            len(self.events))
        return header + b"".join(struct.pack("<H", (int(kind) << 14) | node) for kind, node in self.events)

    @classmethod
    def from_bytes(cls, data: bytes) -> Plan:
        if len(data) < 16 or data[:3] != MAGIC or data[3] != VERSION:
            raise ValueError("not a stored schedule (magic or version)")
        node_count, count = struct.unpack_from("<HH", data, 12)
        if node_count >= MAX_NODES:
            raise ValueError(f"a stored plan holds at most {MAX_NODES - 1} nodes, not {node_count}")
        if len(data) != 16 + 2 * count:
            raise ValueError(f"a schedule of {count} events is {16 + 2 * count} bytes, not {len(data)}")
        events = []
        for (word,) in struct.iter_unpack("<H", data[16:]):
            node = word & (MAX_NODES - 1)
            if node >= node_count:
                raise ValueError(f"event on node {node} of {node_count}")
            events.append((Event(word >> 14), node))
        return cls(data[4:12], node_count, tuple(events))

    def _check_graph(self, graph: TrainingGraph) -> None:
        if self.fingerprint != graph.fingerprint() or self.node_count != len(graph):
            raise ValueError("this schedule was made for another training graph")


def needed_after(graph: TrainingGraph) -> list[int]:
    """For each node, the last stage whose first computation reads it (-1: none)."""
    last = [-1] * len(graph)
    for node in graph.nodes:
        for dep in node.deps:
            last[dep] = max(last[dep], node.index)
    return last


def plan_from_keep(graph: TrainingGraph, keep: Callable[[int, int], bool],
                   to_flash: Callable[[int, int], bool] | None, memory_budget: int) -> Plan | None:
    """A schedule from a keep-policy: ``keep(t, i)`` holds node ``i`` in RAM into stage ``t + 1``,
    ``to_flash(t, i)`` pages it out (None: no paging); what a stage lacks is paged in when in
    flash, else recomputed. A stage over ``memory_budget`` stops keeping its largest carried
    tensor (paging it instead when it may) and the plan is made again; None when nothing helps."""
    last = needed_after(graph)
    dropped: set[int] = set()
    for _ in range(len(graph) ** 2):
        stages, over = _stages(graph, keep, to_flash, dropped, last, memory_budget)
        if over is None:
            return Plan.from_stages(graph, stages)
        if not over:
            return None
        dropped.add(max(over, key=lambda i: graph.nodes[i].size_bytes))
    return None


def _stages(graph: TrainingGraph, keep: Callable[[int, int], bool],
            to_flash: Callable[[int, int], bool] | None, dropped: set[int], last: list[int],
            memory_budget: int) -> tuple[list[Stage], list[int] | None]:
    """The stages under a policy, and None, or the carried tensors of the first stage over budget."""
    room = memory_budget - graph.resident_bytes
    ram: set[int] = set()
    flash: set[int] = set()
    stages: list[Stage] = []
    for t in range(len(graph)):
        computed, paged_in = _gather(graph, t, ram, flash)
        plan = Plan.from_stages(graph, [*stages, (sorted(computed), sorted(paged_in), [], [])])
        if plan.simulate(graph).peak_bytes - graph.resident_bytes > room:
            return stages, sorted(ram - dropped)
        at_hand = ram | computed | paged_in
        carried = {i for i in at_hand if last[i] > t}
        kept = {i for i in carried if keep(t, i) and i not in dropped}
        out = set()
        if to_flash is not None:
            out = {i for i in carried - kept - flash if to_flash(t, i) or i in dropped}
        flash |= out
        stages.append((sorted(computed), sorted(paged_in), sorted(out), sorted(kept)))
        ram = kept
    return stages, None


def _gather(graph: TrainingGraph, t: int, ram: set[int], flash: set[int]) -> tuple[set[int], set[int]]:
    """What stage ``t`` computes and pages in to run node ``t``: inputs missing from RAM come
    from flash when they are there, else are recomputed, recursively."""
    computed: set[int] = set()
    paged_in: set[int] = set()

    def ensure(node: int) -> None:
        if node in ram or node in computed or node in paged_in:
            return
        if node in flash:
            paged_in.add(node)
            return
        for dep in graph.nodes[node].deps:
            ensure(dep)
        computed.add(node)

    for dep in graph.nodes[t].deps:
        ensure(dep)
    computed.add(t)
    return computed, paged_in
