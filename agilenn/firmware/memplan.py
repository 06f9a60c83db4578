"""A static memory plan: buffers with lifetimes placed in one arena, none overlapping while alive.

Greedy by size, first fit: the largest buffer is placed first, each at the lowest aligned offset
where it overlaps no placed buffer whose lifetime meets its own. Not optimal in general, but for
the firmware's chain of four activation buffers it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ALIGN = 4


@dataclass(frozen=True)
class Buffer:
    name: str
    size: int
    first_use: int  # steps are inclusive: a buffer read and written in step s is alive at s
    last_use: int

    def __post_init__(self) -> None:
        if self.size < 0 or self.first_use > self.last_use:
            raise ValueError(f"buffer {self.name!r} needs size >= 0 and first_use <= last_use")

    def alive_with(self, other: Buffer) -> bool:
        return self.first_use <= other.last_use and other.first_use <= self.last_use


@dataclass(frozen=True)
class MemoryPlan:
    offsets: dict[str, int]
    arena_bytes: int


def _aligned(value: int, align: int) -> int:
    return -(-value // align) * align


def plan_memory(buffers: Sequence[Buffer], align: int = ALIGN) -> MemoryPlan:
    names = [b.name for b in buffers]
    if len(set(names)) != len(names):
        raise ValueError(f"buffer names must be unique: {names}")
    placed: list[tuple[Buffer, int]] = []
    order = sorted(range(len(buffers)), key=lambda i: (-buffers[i].size, i))
    for index in order:
        buffer = buffers[index]
        # Live neighbours sorted by offset; walk the gaps between them for the first that fits.
        busy = sorted((offset, offset + other.size) for other, offset in placed
                      if other.alive_with(buffer) and other.size > 0)
        offset = 0
        for start, end in busy:
            if offset + buffer.size <= start:
                break
            offset = max(offset, _aligned(end, align))
        placed.append((buffer, offset))
    arena = max((_aligned(offset + b.size, align) for b, offset in placed), default=0)
    return MemoryPlan({b.name: offset for b, offset in placed}, arena)
