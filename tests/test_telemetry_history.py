"""Ring buffers and the tiered history: fixed memory, order, decimation, replay."""

import json

import numpy as np
import pytest

from console.telemetry import (ContainerStats, ContainerStatsSample, RingBuffer, TieredHistory,
                               replay_history)

DAY_S = 86400


def test_ring_buffer_keeps_newest_rows_in_order():
    ring = RingBuffer(5, ("a", "b"))
    for i in range(3):
        ring.append(float(i), [i, 10 * i])
    t, rows = ring.snapshot()
    assert t.tolist() == [0, 1, 2] and rows[:, 1].tolist() == [0, 10, 20]

    ring.extend(np.arange(3, 9, dtype=float), np.column_stack([np.arange(3, 9)] * 2))
    t, rows = ring.snapshot()
    assert t.tolist() == [4, 5, 6, 7, 8]
    assert rows[:, 0].tolist() == [4, 5, 6, 7, 8]
    assert len(ring) == 5

    ring.extend(np.arange(100, 120, dtype=float), np.zeros((20, 2)))  # more than capacity at once
    assert ring.snapshot()[0].tolist() == [115, 116, 117, 118, 119]


def test_snapshot_is_a_read_only_copy():
    history = TieredHistory(fine_span_s=1, max_rate_hz=10)
    history.record(("gpu", 0), 1.0, {"util": 5})
    series = history.snapshot()[("gpu", 0, "util")]
    with pytest.raises(ValueError):
        series.v[0] = 99
    history.record(("gpu", 0), 2.0, {"util": 6})
    assert series.v.tolist() == [5]


def test_a_day_at_10_hz_keeps_memory_fixed_and_decimates_to_1_hz_means():
    history = TieredHistory(fine_span_s=600, max_rate_hz=10, coarse_span_s=DAY_S)
    fields = ("util", "mem")
    start = 1_700_000_000.0
    hour = 3600 * 10
    sizes = []
    for h in range(25):  # 25 h: the first hour must have been overwritten
        t = start + (h * hour + np.arange(hour)) / 10.0
        util = (t - start) % 100  # known per-second means: 10 samples x.0 .. x.9
        rows = np.column_stack([util, np.full(hour, 7.0)])
        history.record_many(("gpu", 0), fields, t, rows)
        sizes.append(history.nbytes)
    assert len(set(sizes)) == 1, "memory grew"

    fine = history.snapshot(tier="fine")[("gpu", 0, "util")]
    assert len(fine.t) == 6000
    assert np.all(np.diff(fine.t) > 0)
    end = start + 25 * hour / 10.0
    assert fine.t[-1] == pytest.approx(end - 0.1)

    coarse = history.snapshot(tier="coarse")
    util, mem = coarse[("gpu", 0, "util")], coarse[("gpu", 0, "mem")]
    assert len(util.t) == DAY_S
    assert np.all(np.diff(util.t) == 1.0), "coarse rows are one second apart, oldest first"
    assert util.t[-1] == end - 2.0  # the last second is still being filled
    expected = (util.t - start) % 100 + 0.45  # mean of x.0, x.1 .. x.9
    np.testing.assert_allclose(util.v, expected, atol=1e-3)
    assert np.all(mem.v == 7.0)

    merged = history.snapshot(tier="all")[("gpu", 0, "util")]
    assert np.all(np.diff(merged.t) > 0)
    coarse_before_fine = np.count_nonzero(util.t < fine.t[0])
    assert coarse_before_fine == DAY_S - 600 + 1  # up to the second before the fine tier
    np.testing.assert_array_equal(merged.t[coarse_before_fine:], fine.t)


def test_decimation_skips_missing_values_and_joins_clock_steps_back():
    history = TieredHistory(fine_span_s=10, max_rate_hz=10)
    for t, util in [(10.0, 4), (10.5, None), (11.2, 8), (11.1, 2), (12.0, None), (13.0, 1)]:
        history.record(("gpu", 0), t, {"util": util})
    coarse = history.snapshot(tier="coarse")[("gpu", 0, "util")]
    assert coarse.t.tolist() == [10.0, 11.0, 12.0]
    assert coarse.v[0] == 4 and coarse.v[1] == 5  # 11.1 came late: same bucket as 11.2
    assert np.isnan(coarse.v[2])


def test_groups_have_fixed_fields_and_can_be_forgotten():
    history = TieredHistory(fine_span_s=1, max_rate_hz=1)
    history.record(("container", "abc"), 1.0, {"cpu": 1.0, "mem": 2})
    history.record(("container", "abc"), 2.0, {"cpu": 3.0})  # a field left out is NaN
    assert np.isnan(history.snapshot()[("container", "abc", "mem")].v[-1])
    with pytest.raises(ValueError):
        history.record(("container", "abc"), 3.0, {"disk": 1.0})
    history.record(("proc", "trial-1", "original"), 1.0, {"mem": 1})
    assert history.forget(("container",)) == 1
    assert history.keys() == [("proc", "trial-1", "original", "mem")]


def test_records_rebuild_the_same_history():
    live = TieredHistory(fine_span_s=5, max_rate_hz=2)
    records = []
    for i in range(40):
        sample = ContainerStatsSample(1000.0 + i * 0.5, (ContainerStats(
            "c" * 64, "sandbox", "trial-1", "session-1", cpu_percent=None if i == 0 else i * 1.5,
            memory_bytes=1000 + i, memory_limit_bytes=1 << 30, pids=3, rx_bytes=None,
            tx_bytes=None),))
        live.add(sample)
        records.append(json.loads(json.dumps(sample.to_record())))
    records.append({"type": "agent", "t": 1.0})  # other records are skipped

    replayed = replay_history(records, TieredHistory(fine_span_s=5, max_rate_hz=2))
    for tier in ("fine", "coarse"):
        expected, actual = live.snapshot(tier=tier), replayed.snapshot(tier=tier)
        assert expected.keys() == actual.keys()
        for key in expected:
            np.testing.assert_array_equal(expected[key].t, actual[key].t)
            np.testing.assert_array_equal(expected[key].v, actual[key].v)


def test_recording_one_sample_at_a_time_equals_recording_in_bulk():
    rng = np.random.default_rng(7)
    t = 1000.0 + np.cumsum(rng.uniform(0.05, 0.6, 400))
    values = rng.integers(0, 100, 400).astype(float)
    values[::7] = np.nan
    single = TieredHistory(fine_span_s=10, max_rate_hz=10)
    bulk = TieredHistory(fine_span_s=10, max_rate_hz=10)
    for when, value in zip(t, values):
        single.record(("gpu", 0), when, {"util": None if np.isnan(value) else value})
    for part in np.array_split(np.arange(400), 3):
        bulk.record_many(("gpu", 0), ("util",), t[part], values[part, None])
    for tier in ("fine", "coarse"):
        expected = single.snapshot(tier=tier)[("gpu", 0, "util")]
        actual = bulk.snapshot(tier=tier)[("gpu", 0, "util")]
        np.testing.assert_array_equal(actual.t, expected.t)
        np.testing.assert_array_equal(actual.v, expected.v)
