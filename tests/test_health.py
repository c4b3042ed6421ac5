"""Health figures: percentiles, the fps window (injected clock), snapshot contract, temperature and RSS readers."""

import json
import threading

import numpy as np
import pytest

from edge.device.health import Health, Heartbeat, cpu_temperature_c, percentile, rss_mb
from fakes import FakeClock


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100, 1000):
        xs = list(rng.exponential(0.01, n))
        for q in (0, 50, 90, 99, 100):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12)
    assert np.isnan(percentile([], 50))


def test_stage_latency_in_ms_over_a_bounded_ring():
    h = Health(latency_samples=100)
    for ms in range(1, 1001):  # only the last 100 (901..1000 ms) count
        h.observe("detect", ms / 1000)
    h.observe("embed", 0.004)
    stages = h.stage_ms()
    assert stages["detect"] == {"p50": pytest.approx(950.5), "p99": pytest.approx(999.01), "n": 100}
    assert stages["embed"] == {"p50": 4.0, "p99": 4.0, "n": 1}


def test_timer_observes_its_body():
    h = Health()
    with h.time("match"):
        pass
    assert h.stage_ms()["match"]["n"] == 1 and h.stage_ms()["match"]["p50"] >= 0


def test_fps_over_a_sliding_window():
    clock = FakeClock()  # steps are exact binary fractions, so window edges are exact
    h = Health(clock=clock, window_s=5.0)
    assert h.fps == 0.0
    for _ in range(16):  # 8 fps for 2 s: the meter is younger than the window
        clock.t += 0.125
        h.tick("frames")
    assert h.fps == 8.0
    for _ in range(64):  # 8 more seconds at 8 fps
        clock.t += 0.125
        h.tick()
    assert h.fps == 8.0
    for _ in range(160):  # then 5 s at 32 fps: the window holds only those
        clock.t += 0.03125
        h.tick()
    assert h.fps == 32.0
    clock.t += 2.5  # the stream stops: the rate decays, then reaches zero
    assert h.fps == 16.0
    clock.t += 2.5
    assert h.fps == 0.0


def test_other_rates_and_batch_ticks():
    clock = FakeClock()
    h = Health(clock=clock, window_s=4.0)
    clock.t += 4
    h.tick("faces", 12)
    assert h.rate("faces") == pytest.approx(3.0) and h.rate("nothing") == 0.0


def test_counters_and_gauges_are_thread_safe():
    h = Health()

    def work():
        for _ in range(10_000):
            h.inc("drops.capture")
            h.observe("detect", 0.001)
            h.tick()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert h.counter("drops.capture") == 40_000
    h.inc("events", 3)
    assert h.counter("events") == 3 and h.counter("never") == 0


def test_snapshot_is_json_ready_with_the_documented_keys(tmp_path):
    clock = FakeClock()
    h = Health(clock=clock, thermal_glob=str(tmp_path / "none*" / "temp"), proc_status=str(tmp_path / "nope"))
    h.inc("drops.capture", 2)
    h.set("outbox.depth", 5)
    h.set("watchlist.version", "7")
    h.watch("queue.events", lambda: 3)
    h.watch("broken", lambda: 1 / 0)
    h.observe("detect", 0.012)
    clock.t += 2
    h.tick()
    snap = h.snapshot()
    assert json.loads(json.dumps(snap)) == snap
    assert {"fps", "counters", "gauges", "stage_ms", "temperature_c", "rss_mb", "uptime_s"} <= snap.keys()
    assert snap["counters"] == {"drops.capture": 2}
    assert snap["gauges"] == {"outbox.depth": 5, "watchlist.version": "7", "queue.events": 3, "broken": None}
    assert snap["stage_ms"] == {"detect": {"p50": 12.0, "p99": 12.0, "n": 1}}
    assert snap["fps"] == 0.5 and snap["uptime_s"] == 2.0
    assert snap["temperature_c"] is None and snap["rss_mb"] is None


def test_snapshot_on_this_machine():
    snap = Health().snapshot()
    assert snap["rss_mb"] is None or 1 < snap["rss_mb"] < 100_000
    assert snap["temperature_c"] is None or -40 <= snap["temperature_c"] <= 150


def test_temperature_reads_the_hottest_readable_zone(tmp_path):
    for name, text in [("thermal_zone0", "48312\n"), ("thermal_zone1", "51000\n"), ("thermal_zone2", "garbage"),
                       ("thermal_zone3", "-273000\n")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "temp").write_text(text)
    (tmp_path / "thermal_zone4").mkdir()
    (tmp_path / "thermal_zone4" / "temp").mkdir()  # unreadable: reading it raises an OSError
    assert cpu_temperature_c(str(tmp_path / "thermal_zone*" / "temp")) == 51.0


def test_temperature_is_none_when_unreadable(tmp_path):
    assert cpu_temperature_c(str(tmp_path / "thermal_zone*" / "temp")) is None
    (tmp_path / "thermal_zone0").mkdir()
    (tmp_path / "thermal_zone0" / "temp").write_text("")
    assert cpu_temperature_c(str(tmp_path / "thermal_zone*" / "temp")) is None


def test_rss_from_proc_status(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tedge\nVmPeak:\t  999999 kB\nVmRSS:\t  204800 kB\n")
    assert rss_mb(str(status)) == 200.0
    assert rss_mb(str(tmp_path / "missing")) is None


def test_heartbeat():
    beat = Heartbeat(10.0)
    assert beat.due(100.0) is True
    assert beat.due(105.0) is False
    assert beat.due(110.0) is True
    assert beat.due(119.9) is False
    assert beat.due(50.0) is True  # the clock went back: publish now rather than stay silent
    with pytest.raises(ValueError, match="heartbeat interval must be positive, got 0"):
        Heartbeat(0)
