"""Telemetry history in fixed memory: numpy ring buffers in two tiers.

A console left open for a day must not grow. Every series group owns two preallocated rings:
the fine tier keeps the newest samples at full rate (10 min at the highest sampling rate), the
coarse tier keeps one mean per `coarse_interval_s` for 24 h. Nothing is allocated per sample.

Series keys are tuples: a *group* key such as ("gpu", 0), ("proc", trial, instance) or
("container", cid) plus a field name, e.g. ("gpu", 0, "util"). Fields of a group share one
timestamp array; a missing value (None) is stored as NaN.
"""

from __future__ import annotations

import math
import threading
from typing import NamedTuple
from collections.abc import Mapping, Sequence

import numpy as np

TIERS = ("fine", "coarse", "all")


class Series(NamedTuple):
    """A read-only copy of one series, oldest first: unix timestamps and float values."""

    t: np.ndarray
    v: np.ndarray


class RingBuffer:
    """Rows of float values with a timestamp each, preallocated; the oldest rows are overwritten.

    Not locked: TieredHistory serialises access to the rings it owns.
    """

    def __init__(self, capacity: int, fields: Sequence[str], dtype=np.float32):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = int(capacity)
        self.fields = tuple(fields)
        self._t = np.full(self.capacity, np.nan, dtype=np.float64)
        self._v = np.full((self.capacity, len(self.fields)), np.nan, dtype=dtype)
        self._head = 0  # where the next row goes
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        return self._t.nbytes + self._v.nbytes

    def append(self, t: float, row: Sequence[float]) -> None:
        self._t[self._head] = t
        self._v[self._head] = row
        self._head = (self._head + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def extend(self, t: np.ndarray, rows: np.ndarray) -> None:
        """Append n rows (t: shape (n,), rows: shape (n, len(fields))), oldest first."""
        n = len(t)
        if n == 0:
            return
        if n >= self.capacity:
            t, rows, n = t[-self.capacity:], rows[-self.capacity:], self.capacity
        end = self._head + n
        if end <= self.capacity:
            self._t[self._head:end] = t
            self._v[self._head:end] = rows
        else:
            first = self.capacity - self._head
            self._t[self._head:], self._t[: n - first] = t[:first], t[first:]
            self._v[self._head:], self._v[: n - first] = rows[:first], rows[first:]
        self._head = end % self.capacity
        self._size = min(self._size + n, self.capacity)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of (timestamps, rows), oldest first."""
        if self._size < self.capacity:
            return self._t[: self._size].copy(), self._v[: self._size].copy()
        order = np.r_[self._head:self.capacity, 0:self._head]
        return self._t[order], self._v[order]


class _Group:
    """The two tiers of one series group plus the coarse bucket being filled."""

    def __init__(self, fields: tuple[str, ...], fine_capacity: int, coarse_capacity: int,
                 coarse_interval_s: float):
        self.fields = fields
        self.fine = RingBuffer(fine_capacity, fields)
        self.coarse = RingBuffer(coarse_capacity, fields)
        self.interval = coarse_interval_s
        self.bucket: int | None = None  # index of the open coarse bucket
        self.sums = np.zeros(len(fields))
        self.counts = np.zeros(len(fields), dtype=np.int64)

    @property
    def nbytes(self) -> int:
        return self.fine.nbytes + self.coarse.nbytes + self.sums.nbytes + self.counts.nbytes

    def add_one(self, t: float, row: list[float]) -> None:
        """One sample (NaN for missing): what add_many() does, without its array set-up per call."""
        self.fine.append(t, row)
        bucket = int(t // self.interval)
        if self.bucket is None or bucket > self.bucket:  # else: same bucket, or a clock step back
            if self.bucket is not None:
                mean = np.divide(self.sums, self.counts, out=np.full(len(self.fields), np.nan),
                                 where=self.counts > 0)
                self.coarse.append(self.bucket * self.interval, mean)
            self.bucket = bucket
            self.sums[:], self.counts[:] = 0.0, 0
        for column, value in enumerate(row):
            if value == value:  # not NaN
                self.sums[column] += value
                self.counts[column] += 1

    def add_many(self, t: np.ndarray, rows: np.ndarray) -> None:
        """Many samples, oldest first (vectorised: a day of samples takes well under a second)."""
        self.fine.extend(t, rows)
        buckets = np.floor(t / self.interval).astype(np.int64)
        if self.bucket is not None:
            buckets = np.maximum(buckets, self.bucket)  # a clock step back joins the open bucket
        buckets = np.maximum.accumulate(buckets)
        starts = np.concatenate(([0], np.flatnonzero(np.diff(buckets)) + 1))
        present = ~np.isnan(rows)
        sums = np.add.reduceat(np.where(present, rows, 0.0), starts, axis=0)
        counts = np.add.reduceat(present.astype(np.int64), starts, axis=0)
        segment_buckets = buckets[starts]
        closed_t, closed_sums, closed_counts = [], [], []
        if self.bucket == segment_buckets[0]:
            sums[0] += self.sums
            counts[0] += self.counts
        elif self.bucket is not None:
            closed_t.append([self.bucket])
            closed_sums.append(self.sums[None, :])
            closed_counts.append(self.counts[None, :])
        closed_t.append(segment_buckets[:-1])
        closed_sums.append(sums[:-1])
        closed_counts.append(counts[:-1])
        self.bucket = int(segment_buckets[-1])
        self.sums[:], self.counts[:] = sums[-1], counts[-1]
        total_sums, total_counts = np.concatenate(closed_sums), np.concatenate(closed_counts)
        means = np.divide(total_sums, total_counts, out=np.full(total_sums.shape, np.nan),
                          where=total_counts > 0)
        self.coarse.extend(np.concatenate(closed_t) * self.interval, means)


class TieredHistory:
    """Full-rate recent history plus a decimated day, for every series group; thread-safe.

    fine tier:   the newest ceil(fine_span_s * max_rate_hz) samples of each group.
    coarse tier: means over `coarse_interval_s` buckets, stamped with the bucket start, for
                 `coarse_span_s`; the bucket being filled appears once the next one starts.
    """

    def __init__(self, fine_span_s: float = 600.0, max_rate_hz: float = 10.0,
                 coarse_span_s: float = 86400.0, coarse_interval_s: float = 1.0):
        self.fine_capacity = math.ceil(fine_span_s * max_rate_hz)
        self.coarse_capacity = math.ceil(coarse_span_s / coarse_interval_s)
        self.coarse_interval_s = coarse_interval_s
        self._groups: dict[tuple, _Group] = {}
        self._lock = threading.Lock()

    def record(self, group: tuple, t: float, values: Mapping[str, float | None]) -> None:
        """One sample of a group. The first sample fixes the group's fields (its keys, in order);
        later samples may leave fields out (stored as NaN) but not add new ones."""
        with self._lock:
            self._record(group, t, values)

    def record_many(self, group: tuple, fields: Sequence[str], t: np.ndarray,
                    rows: np.ndarray) -> None:
        """Many samples at once (rows: one column per field, NaN for missing), oldest first."""
        with self._lock:
            target = self._group(group, tuple(fields))
            if target.fields != tuple(fields):
                raise ValueError(f"{group}: fields {tuple(fields)} differ from {target.fields}")
            target.add_many(np.asarray(t, dtype=np.float64), np.asarray(rows, dtype=np.float64))

    def add(self, sample) -> None:
        """Record a telemetry sample: anything with `.t` and `.history_rows()` (group, values)."""
        with self._lock:
            for group, values in sample.history_rows():
                self._record(group, sample.t, values)

    def _record(self, group: tuple, t: float, values: Mapping[str, float | None]) -> None:
        target = self._group(group, tuple(values))
        target.add_one(t, [_as_float(values.get(name)) for name in target.fields])

    def _group(self, group: tuple, fields: tuple[str, ...]) -> _Group:
        existing = self._groups.get(group)
        if existing is None:
            existing = self._groups[group] = _Group(
                fields, self.fine_capacity, self.coarse_capacity, self.coarse_interval_s)
        elif not set(fields) <= set(existing.fields):
            raise ValueError(f"{group}: fields {fields} differ from {existing.fields}")
        return existing

    def keys(self) -> list[tuple]:
        """Every series key, e.g. ("gpu", 0, "util")."""
        with self._lock:
            return [group + (name,) for group, g in self._groups.items() for name in g.fields]

    def forget(self, prefix: tuple) -> int:
        """Drop the groups whose key starts with `prefix` (a closed trial, a removed container)."""
        with self._lock:
            doomed = [key for key in self._groups if key[: len(prefix)] == prefix]
            for key in doomed:
                del self._groups[key]
            return len(doomed)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(g.nbytes for g in self._groups.values())

    def snapshot(self, prefix: tuple = (), tier: str = "fine") -> dict[tuple, Series]:
        """Read-only copies of the series whose key starts with `prefix`, oldest first.

        tier "fine": full rate, recent; "coarse": decimated means for the whole day; "all": the
        coarse rows older than the oldest fine row, then the fine rows.
        """
        if tier not in TIERS:
            raise ValueError(f"tier {tier!r}: expected one of {TIERS}")
        result = {}
        with self._lock:
            for key, group in self._groups.items():
                if key[: len(prefix)] != prefix:
                    continue
                t, rows = _tier_rows(group, tier)
                t.flags.writeable = False
                for column, name in enumerate(group.fields):
                    values = np.ascontiguousarray(rows[:, column])
                    values.flags.writeable = False
                    result[key + (name,)] = Series(t, values)
        return result


def _tier_rows(group: _Group, tier: str) -> tuple[np.ndarray, np.ndarray]:
    if tier == "fine":
        return group.fine.snapshot()
    if tier == "coarse":
        return group.coarse.snapshot()
    fine_t, fine_rows = group.fine.snapshot()
    coarse_t, coarse_rows = group.coarse.snapshot()
    if len(fine_t):
        older = coarse_t < fine_t[0]
        coarse_t, coarse_rows = coarse_t[older], coarse_rows[older]
    return np.concatenate((coarse_t, fine_t)), np.concatenate((coarse_rows, fine_rows))


def _as_float(value) -> float:
    return math.nan if value is None else float(value)
