"""The thermal governor with fake thermal-zone files: readings, hysteresis, skipped frames, health and log lines."""

import logging
from types import SimpleNamespace

import pytest

from edge.config import ConfigError, parse_config
from edge.device.control import Control
from edge.device.health import Health
from edge.device.thermal import ThermalGovernor, read_temperature_c


def zones(tmp_path, *values):
    for i, v in enumerate(values):
        d = tmp_path / f"thermal_zone{i}"
        d.mkdir()
        (d / "temp").write_text(v)
    return str(tmp_path / "thermal_zone*" / "temp")


def test_the_hottest_readable_zone_counts_and_garbage_is_ignored(tmp_path):
    assert read_temperature_c(zones(tmp_path, "48312\n", "71500\n", "not a number", "9" * 40)) == 71.5
    assert read_temperature_c(str(tmp_path / "nothing*")) is None


def test_hysteresis_throttles_above_hot_and_restores_below_cool():
    g = ThermalGovernor(hot_c=80, cool_c=70, throttled_every=3)
    assert [g.update(t) for t in (60, 79.9, 80, 85, 75, 70.1, 70, 65, None)] == \
        [False, False, True, False, False, False, True, False, False]
    assert g.changes == 2 and not g.throttled
    with pytest.raises(ValueError):
        ThermalGovernor(hot_c=70, cool_c=70)


def test_a_throttled_governor_detects_one_frame_in_n():
    g = ThermalGovernor(throttled_every=3)
    assert all(g.should_detect() for _ in range(5))
    g.update(90)
    assert [g.should_detect() for _ in range(9)] == [True, False, False] * 3 and g.skipped == 6
    g.update(60)
    assert all(g.should_detect() for _ in range(4)) and g.skipped == 6


def test_the_control_worker_reports_temperature_and_logs_each_change(tmp_path, caplog):
    pattern = zones(tmp_path, "50000")
    governor = ThermalGovernor(hot_c=80, cool_c=70, throttled_every=4)
    health = Health()
    pipeline = SimpleNamespace(last_progress=0.0, slot=SimpleNamespace(dropped=0), governor=governor)
    config = SimpleNamespace(mqtt=SimpleNamespace(status_interval_s=60.0), health=SimpleNamespace(log_interval_s=1e9),
                             thermal=SimpleNamespace(zones=pattern, poll_interval_s=2.0))
    clock = [0.0]
    control = Control(config, SimpleNamespace(prefix="edge", device_id="t"), health, pipeline, store=None,
                      outbox=None, audit=None, clock=lambda: clock[0], notify=lambda state: True)
    temp = tmp_path / "thermal_zone0" / "temp"
    with caplog.at_level(logging.INFO, logger="edge.device.control"):
        for t, reading in ((0, "50000"), (2, "83000"), (3, "60000"), (4, "60000"), (6, "69000")):
            temp.write_text(reading)
            clock[0] = t
            control.step(t)
            if t == 2:
                assert governor.throttled and health.snapshot()["gauges"]["thermal_throttled"] == 1
            if t == 3:
                assert governor.throttled  # not polled again before poll_interval_s
    snap = health.snapshot()
    assert not governor.throttled and snap["gauges"]["cpu_temp_c"] == 69.0
    assert snap["counters"]["thermal_throttle_on"] == 1 and snap["counters"]["thermal_throttle_off"] == 1
    assert "83.0 °C ≥ 80.0 °C: detecting on 1 frame in 4" in caplog.text and "every frame again" in caplog.text


def test_thermal_config_is_validated_with_its_line():
    with pytest.raises(ConfigError, match=r"line 3: thermal.cool_c: must be below thermal.hot_c \(60\)"):
        parse_config("thermal:\n  hot_c: 60\n  cool_c: 65\n")
    with pytest.raises(ConfigError, match="throttled_detect_every"):
        parse_config("thermal:\n  throttled_detect_every: 1\n")
    assert parse_config("").thermal.enabled is True
