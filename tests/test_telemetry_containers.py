"""Container stats arithmetic on engine payloads of cgroup v1 and v2 hosts."""

import pytest

from console.telemetry.containers import cpu_percent, memory_bytes, network_bytes

SECOND_NS = 1_000_000_000


def cpu_stats(container_ns, system_ns=None, online=2, percpu=None):
    usage = {"total_usage": container_ns}
    if percpu is not None:
        usage["percpu_usage"] = percpu
    stats = {"cpu_usage": usage}
    if system_ns is not None:
        stats["system_cpu_usage"] = system_ns
    if online is not None:
        stats["online_cpus"] = online
    return {"cpu_stats": stats, "precpu_stats": {"cpu_usage": {"total_usage": 0}}}


def test_cpu_percent_from_two_polls_with_system_counter():
    first, kept = cpu_percent(cpu_stats(5 * SECOND_NS, 100 * SECOND_NS), None, now=10.0)
    assert first is None  # one_shot: no precpu, nothing to compare with yet
    # 1 s later on 2 CPUs: system counter +2 s, container used 1.5 s -> 150 % of one core
    second, _ = cpu_percent(cpu_stats(6.5 * SECOND_NS, 102 * SECOND_NS), kept, now=11.0)
    assert second == pytest.approx(150.0)


def test_cpu_percent_counts_cpus_from_percpu_list_or_wall_clock():
    _, kept = cpu_percent(cpu_stats(0, 0, online=None, percpu=[0] * 4), None, now=0.0)
    value, _ = cpu_percent(cpu_stats(SECOND_NS, 4 * SECOND_NS, online=None, percpu=[0] * 4),
                           kept, now=1.0)
    assert value == pytest.approx(100.0)

    _, kept = cpu_percent(cpu_stats(0), None, now=0.0)  # no system counter (e.g. Windows)
    value, _ = cpu_percent(cpu_stats(SECOND_NS // 4), kept, now=0.5)
    assert value == pytest.approx(50.0)


def test_cpu_percent_after_a_counter_reset_or_without_data():
    _, kept = cpu_percent(cpu_stats(9 * SECOND_NS, 100 * SECOND_NS), None, now=0.0)
    assert cpu_percent(cpu_stats(SECOND_NS, 101 * SECOND_NS), kept, now=1.0)[0] is None
    assert cpu_percent({"cpu_stats": {}}, kept, now=1.0) == (None, None)


def test_memory_without_page_cache_on_v1_and_v2():
    v1 = {"memory_stats": {"usage": 10_000, "limit": 1 << 30,
                           "stats": {"total_inactive_file": 4_000, "cache": 6_000}}}
    v2 = {"memory_stats": {"usage": 10_000, "limit": 1 << 30, "stats": {"inactive_file": 3_000}}}
    assert memory_bytes(v1) == (6_000, 1 << 30)
    assert memory_bytes(v2) == (7_000, 1 << 30)
    assert memory_bytes({"memory_stats": {}}) == (None, None)  # a stopped container


def test_network_is_none_without_interfaces():
    assert network_bytes({}) == (None, None)
    assert network_bytes({"networks": {"eth0": {"rx_bytes": 5, "tx_bytes": 7},
                                       "eth1": {"rx_bytes": 1, "tx_bytes": 1}}}) == (6, 8)
