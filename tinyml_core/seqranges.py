"""A set of sequence numbers kept as sorted, disjoint, inclusive ranges.

What a collector has taken of one node's stream: in order, it is one range; every message lost
on the way (a broker's full queue, a crash) splits it, until the sender fills the hole. The
collector sends these ranges back as a confirmation, so the node knows exactly what arrived,
not only the highest number (which says nothing about the holes below it).

Bounded: past ``max_ranges`` the lowest ranges are forgotten (a hole that old is not filled any
more; forgetting it only means a very late re-send is taken once more).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

MAX_RANGES = 64


class SeqRanges:
    def __init__(self, ranges: Iterable[tuple[int, int]] = (), max_ranges: int = MAX_RANGES
                 ) -> None:
        self.max_ranges = max_ranges
        self._starts: list[int] = []
        self._ends: list[int] = []
        for low, high in ranges:
            self.add_range(low, high)

    def __contains__(self, seq: int) -> bool:
        if not self._ends or seq > self._ends[-1]:  # the common case: the next number
            return False
        index = bisect.bisect_right(self._starts, seq) - 1
        return index >= 0 and seq <= self._ends[index]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeqRanges) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"SeqRanges({list(self)!r})"

    @property
    def highest(self) -> int | None:
        return self._ends[-1] if self._ends else None

    def add(self, seq: int) -> bool:
        """Add one number; False when it was there already."""
        if self._ends and seq == self._ends[-1] + 1:  # in order: the last range grows
            self._ends[-1] = seq
            return True
        if seq in self:
            return False
        self.add_range(seq, seq)
        return True

    def add_range(self, low: int, high: int) -> None:
        if high < low:
            raise ValueError(f"range [{low}, {high}] is empty")
        # Every range that overlaps or touches [low, high] merges into it.
        first = bisect.bisect_left(self._ends, low - 1)
        last = bisect.bisect_right(self._starts, high + 1)
        if first < last:
            low = min(low, self._starts[first])
            high = max(high, self._ends[last - 1])
        self._starts[first:last] = [low]
        self._ends[first:last] = [high]
        if len(self._starts) > self.max_ranges:
            del self._starts[0], self._ends[0]

    def update(self, other: Iterable[tuple[int, int]]) -> None:
        for low, high in other:
            self.add_range(low, high)

    def to_json(self) -> list[list[int]]:
        return [[low, high] for low, high in self]
