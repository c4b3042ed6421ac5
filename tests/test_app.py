"""`edge run` end to end: the composition root over a generated video, shutdown, signals, and `--check` on every
device profile."""

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from conftest import FACES
from edge import keys
from edge.audit import tail, verify
from edge.cli import main
from edge.config import load_config
from edge.imageio import read_image

pytestmark = pytest.mark.models  # `edge run` (and `--check`) load the models

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted((ROOT / "firmware-config" / "profiles").glob("*.yaml"))
DEVICE = "cam-test"


# --- fixtures ---------------------------------------------------------------------------------------------------

def provision(state: Path, analyzer, device_id: str = DEVICE, install: bool = True) -> bytes:
    """Device and operator keys under state/keys, and obama.jpg enrolled and sealed for the device; returns the
    bundle, which (install) is placed where WatchlistStore.start() finds it."""
    from edge.evaluation.calibration import scoring_tail
    from edge.watchlist.operator.build import GalleryEntry, enroll, payload_of
    from edge.watchlist.operator.seal import seal
    from edge.watchlist.payload import pack

    operator, device_key = keys.generate_operator_key(), keys.generate_device_key()
    keys.save_private_key(state / "keys" / "device.key", device_key)
    keys.TrustStore([operator.public_key()]).save(state / "keys" / "operators.json")
    enrollment = enroll([GalleryEntry(FACES / "obama.jpg", "obama", "Barack Obama", "test", None)], analyzer)
    assert len(enrollment.vectors) == 1
    thresholds = scoring_tail(analyzer.embedder_info.info, analyzer.fusion).threshold_for(1, 0.003)
    bundle = seal(pack(payload_of(enrollment, analyzer.fusion_meta)),
                  watchlist_id="test", version=1, device_id=device_id, device_public=device_key.public_key(),
                  signing_key=operator, embedder_id=analyzer.embedder_id,
                  embedder_sha256=analyzer.embedder_info.sha256, dim=analyzer.embedder.dim, n_items=1, n_subjects=1,
                  thresholds={"match": thresholds["match"], "margin": 0.02},
                  expires=datetime.now(timezone.utc) + timedelta(days=1))
    if install:  # as the device's own store installs it: the bundle and its authenticated install record
        from edge.watchlist.device.store import WatchlistStore

        trust = {keys.key_id(operator.public_key()): operator.public_key()}
        store = WatchlistStore(state, device_id, device_key, trust,
                               analyzer.embedder_id, analyzer.embedder_info.sha256, lambda opened: True)
        assert store.install(bundle).ok
    return bundle


def make_video(path: Path, analyzer, fps: float = 10.0, blank_s: float = 0.5, face_s: float = 2.0,
               size: tuple[int, int] = (640, 480)) -> Path:
    """A clip: grey background, then obama2.jpg's face for `face_s` seconds, growing (so the tracker re-embeds)."""
    width, height = size
    rgb = read_image(FACES / "obama2.jpg")
    det = max(analyzer.detect(rgb), key=lambda d: d.width)
    x0, y0, x1, y1 = det.box
    w, h = x1 - x0, y1 - y0
    crop = rgb[int(max(0, y0 - 0.6 * h)):int(min(rgb.shape[0], y1 + 0.8 * h)),
               int(max(0, x0 - 0.6 * w)):int(min(rgb.shape[1], x1 + 0.6 * w))]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    background = np.full((height, width, 3), 110, np.uint8)
    n_blank, n_face = int(blank_s * fps), int(face_s * fps)
    for i in range(2 * n_blank + n_face):
        frame = background.copy()
        if n_blank <= i < n_blank + n_face:
            u = (i - n_blank) / max(1, n_face - 1)
            sprite = cv2.resize(crop, None, fx=(90 + 90 * u) / w, fy=(90 + 90 * u) / w, interpolation=cv2.INTER_AREA)
            sh, sw = sprite.shape[:2]
            sh, sw = min(sh, height), min(sw, width)
            y, x = (height - sh) // 2, (width - sw) // 2
            frame[y:y + sh, x:x + sw] = sprite[:sh, :sw]
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_config(path: Path, state: Path, video: Path, loop: bool = False, **sections) -> Path:
    doc = {"device": {"id": DEVICE, "state_dir": str(state)},
           "camera": {"source": "opencv", "device": str(video), "fps": 10, "replay_pace": "realtime", "loop": loop},
           "vision": {"threads": 2}, "mqtt": {"enabled": False}, "health": {"log_interval_s": 0.5}}
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory, analyzer):
    return make_video(tmp_path_factory.mktemp("clip") / "obama.mp4", analyzer)


@pytest.fixture
def device(tmp_path, analyzer):
    state = tmp_path / "state"
    provision(state, analyzer)
    return state


def run_in_thread(app):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", app.run()), daemon=True)
    thread.start()
    return thread, result


def events_of(outbox):
    return [json.loads(e.payload) for e in outbox.entries()]


# --- end to end -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_finite_video_yields_one_match_event_and_a_verified_audit_log(tmp_path, device, clip):
    from edge.device.app import App

    app = App(load_config(write_config(tmp_path / "edge.yaml", device, clip)), tmp_path / "edge.yaml")
    assert app.store.state().version == 1
    thread, result = run_in_thread(app)
    thread.join(30)
    assert not thread.is_alive(), "a finite source must stop the app by itself"
    assert result["code"] == 0
    from edge.messaging.outbox import Outbox

    with Outbox(device / "outbox.db") as outbox:
        events = events_of(outbox)
    assert len(events) == 1, events
    ev = events[0]
    assert ev["subject_id"] == "obama" and ev["review_required"] is True and ev["device_id"] == DEVICE
    assert ev["watchlist_version"] == 1 and ev["similarity"] >= ev["threshold"]
    assert app.health.counter("frames_captured") >= 25
    check = verify(device / "audit.log")
    assert check.ok, check.problems
    kinds = [rec["kind"] for _, rec, _ in tail(device / "audit.log")]
    assert kinds[:2] == ["start", "config"] and kinds[-1] == "stop" and kinds.count("match") == 1
    config_rec = [rec for _, rec, _ in tail(device / "audit.log") if rec["kind"] == "config"][0]
    import hashlib

    assert config_rec["data"]["sha256"] == hashlib.sha256((tmp_path / "edge.yaml").read_bytes()).hexdigest()
    assert (device.stat().st_mode & 0o777) == 0o700


def test_stop_from_another_thread_returns_within_two_seconds(tmp_path, device, clip):
    from edge.device.app import App

    app = App(load_config(write_config(tmp_path / "edge.yaml", device, clip, loop=True)))
    thread, result = run_in_thread(app)
    deadline = time.monotonic() + 10
    while app.health.counter("frames_captured") < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.health.counter("frames_captured") >= 5
    t0 = time.monotonic()
    app.stop()
    assert time.monotonic() - t0 < 2.0
    thread.join(2)
    assert not thread.is_alive() and result["code"] == 0
    assert [rec["kind"] for _, rec, _ in tail(device / "audit.log")][-1] == "stop"
    assert verify(device / "audit.log").ok


def test_reload_applies_thresholds_and_keeps_running(tmp_path, device, clip):
    from edge.device.app import App

    cfg = write_config(tmp_path / "edge.yaml", device, clip, loop=True)
    app = App(load_config(cfg), cfg)
    app.start()
    try:
        write_config(cfg, device, clip, loop=True, policy={"k": 3, "n": 4}, quality={"min_sharpness": 0.3})
        assert app.reload() is True
        assert (app.policy.config.k, app.policy.config.n) == (3, 4) and app.pipeline.quality.min_sharpness == 0.3
        cfg.write_text("policy:\n  k: 9\n  n: 3\n")
        assert app.reload() is False
        assert app.policy.config.k == 3
    finally:
        app.stop()
    kinds = [rec["kind"] for _, rec, _ in tail(device / "audit.log")]
    assert kinds.count("config") == 2


@pytest.mark.slow
def test_mqtt_watchlist_sync_event_delivery_and_status(tmp_path, analyzer, clip, broker):
    """Through the real broker (TLS, ACLs): the operator offers the watchlist, the device installs it (audited),
    publishes its match event, deletes it on the consumer's ack, and keeps a retained status online → offline."""
    from edge.device.app import App
    from edge.messaging.delivery import EventConsumer
    from edge.operator.event_store import EventStore
    from edge.messaging.mqtt import MqttClient
    from edge.messaging.offers import offer_messages

    state = tmp_path / "state"
    bundle = provision(state, analyzer, "cam-a", install=False)
    pki = broker.pki
    cfg = write_config(tmp_path / "edge.yaml", state, clip, loop=True, device={"id": "cam-a"},
                       mqtt={"enabled": True, "host": broker.host, "port": broker.port, "ca_file": str(pki.ca),
                             "cert_file": str(pki.cert("cam-a")), "key_file": str(pki.key("cam-a")),
                             "status_interval_s": 0.5})
    operator = MqttClient(broker.client_settings("operator"), [("edge/+/events", 1)])
    operator.start()
    operator.wait_connected(5)
    for topic, payload in offer_messages(bundle, "cam-a", 1):
        operator.publish(topic, payload, qos=1, retain=True)
    consumer = EventConsumer(operator, EventStore(tmp_path / "events.db"))
    app = App(load_config(cfg), cfg)
    assert app.store.state().version is None
    thread, result = run_in_thread(app)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (consumer.stats.stored and app.outbox.depth() == 0):
            consumer.poll(0.1)
        assert consumer.stats.stored == 1 and app.outbox.depth() == 0
        assert app.store.state().version == 1
        time.sleep(0.6)  # one more heartbeat (status_interval_s 0.5) after the install
        online = retained_status(broker)
        assert online.state == "online" and online.health["watchlist"]["version"] == 1
        assert online.health["audit_head"]["seq"] >= 4 and "fps" in online.health and "outbox_depth" in online.health
    finally:
        app.stop()
        thread.join(3)
        operator.stop()
    assert result["code"] == 0
    kinds = [rec["kind"] for _, rec, _ in tail(state / "audit.log")]
    assert "watchlist_install" in kinds and kinds.index("watchlist_install") < kinds.index("match")
    assert verify(state / "audit.log").ok
    assert retained_status(broker).state == "offline"


def retained_status(broker):
    from edge.messaging.mqtt import MqttClient
    from edge.messaging.payloads import decode_status

    probe = MqttClient(broker.client_settings("operator", client_id="probe"), [("edge/cam-a/status", 1)])
    probe.start()
    probe.wait_connected(5)
    try:
        return decode_status(probe.inbox.get(timeout=5).payload)
    finally:
        probe.stop()


# --- the command, in a subprocess -------------------------------------------------------------------------------

def spawn(config: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(config)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, needle: str, timeout: float = 30.0) -> str:
    """Read stderr until a line contains `needle`; returns what was read."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if needle in line:
                return "".join(seen)
    raise AssertionError(f"{needle!r} not seen on stderr:\n{''.join(seen)}")


@pytest.mark.slow
def test_run_exits_0_within_two_seconds_of_sigterm(tmp_path, device, clip):
    proc = spawn(write_config(tmp_path / "edge.yaml", device, clip, loop=True))
    try:
        wait_for(proc, "running: device cam-test")
        wait_for(proc, "health:")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(5)
        assert time.monotonic() - t0 < 2.0
        assert code == 0, proc.stderr.read()
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [rec["kind"] for _, rec, _ in tail(device / "audit.log")][-1] == "stop"


def test_sighup_with_a_broken_config_keeps_running_and_logs_the_error(tmp_path, device, clip):
    cfg = write_config(tmp_path / "edge.yaml", device, clip, loop=True)
    good = cfg.read_text()
    proc = spawn(cfg)
    try:
        wait_for(proc, "running: device cam-test")
        cfg.write_text(good + "camera_typo: 1\n")
        proc.send_signal(signal.SIGHUP)
        text = wait_for(proc, "reload refused")
        assert "camera_typo: unknown key" in text and str(cfg) in text
        assert proc.poll() is None
        cfg.write_text(good.replace("log_interval_s: 0.5", "log_interval_s: 0.7"))
        proc.send_signal(signal.SIGHUP)
        wait_for(proc, "config reloaded")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [rec["kind"] for _, rec, _ in tail(device / "audit.log")].count("config") == 2


def test_bad_config_prints_file_and_line_and_exits_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("device:\n  id: cam-1\ncamera:\n  fpz: 30\n")
    proc = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"edge: error: {bad}, line 4: camera.fpz: unknown key (did you mean 'fps'?)" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- --check and `edge config` ----------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_profile_passes_check_with_absent_device_files_skipped(capsys, profile):
    code = main(["run", "--config", str(profile), "--check", "--allow-missing"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.strip().splitlines()[-1].startswith(f"config OK: {profile}")
    assert "ok    models:" in out and "ok    camera:" in out and "FAIL" not in out
    if "skip" in out:  # only files the device provides may be skipped
        skipped = {line.split(":")[0].split()[-1] for line in out.splitlines() if line.startswith("skip")}
        assert skipped <= {"device_key", "trusted_keys", "mqtt", "state_dir"}, out


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_profile_with_provisioned_files_passes_every_check(capsys, tmp_path, analyzer, tls_certs, profile):
    doc = yaml.safe_load(profile.read_text())
    state = tmp_path / "state"
    provision(state, analyzer, doc["device"]["id"], install=False)
    doc["device"]["state_dir"] = str(state)
    doc["mqtt"].update(ca_file=str(tls_certs.ca), cert_file=str(tls_certs.cert("cam-a")),
                       key_file=str(tls_certs.key("cam-a")))
    cfg = tmp_path / profile.name
    cfg.write_text(yaml.safe_dump(doc))
    code = main(["run", "--config", str(cfg), "--check", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"], report
    assert {c["name"] for c in report["checks"]} >= {"config", "camera", "models", "device_key", "trusted_keys", "mqtt"}
    assert all(c["status"] == "ok" and not c["skipped"] for c in report["checks"])


def test_check_without_allow_missing_names_the_absent_files(capsys, tmp_path):
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(f"device:\n  state_dir: {tmp_path / 'state'}\nmqtt:\n  enabled: false\n")
    code = main(["run", "--config", str(cfg), "--check"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"FAIL  device_key: {tmp_path / 'state' / 'keys' / 'device.key'} is absent" in out
    assert "config NOT OK" in out and "--allow-missing" in out


def test_check_reports_a_bad_key_file(capsys, tmp_path):
    state = tmp_path / "state"
    (state / "keys").mkdir(parents=True)
    (state / "keys" / "device.key").write_text("not a key\n")
    os.chmod(state / "keys" / "device.key", 0o600)
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(f"device:\n  state_dir: {state}\nmqtt:\n  enabled: false\n")
    code = main(["run", "--config", str(cfg), "--check", "--allow-missing"])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL  device_key:" in out and "is not a PEM file" in out


def test_config_describe_and_defaults(capsys, tmp_path):
    from edge.config import parse_config

    assert main(["config", "--describe"]) == 0
    assert "camera.fps: number = 30" in capsys.readouterr().out
    assert main(["config", "--defaults"]) == 0
    parse_config(capsys.readouterr().out)


@pytest.mark.slow
def test_a_provisioned_device_seals_its_audit_log_at_stop(tmp_path, device, clip, capsys):
    """With audit.seal in the state directory the app seals the log (here: at stop, MQTT being off), the key file
    evolves, and `edge audit verify --verify-key` accepts the log — the verification key stays with the operator."""
    from edge.audit_seal import new_keys
    from edge.device.app import App

    operator_dir = tmp_path / "operator"
    operator_dir.mkdir()
    seal_path, verify_path = new_keys(operator_dir, DEVICE)
    (device / "audit.seal").write_bytes(seal_path.read_bytes())
    app = App(load_config(write_config(tmp_path / "edge.yaml", device, clip)), tmp_path / "edge.yaml")
    thread, result = run_in_thread(app)
    thread.join(30)
    assert result["code"] == 0
    kinds = [rec["kind"] for _, rec, _ in tail(device / "audit.log")]
    assert kinds[-2:] == ["stop", "seal"]
    assert json.loads((device / "audit.seal").read_text())["epoch"] == 1
    assert main(["audit", "verify", str(device / "audit.log"), "--verify-key", str(verify_path)]) == 0
    assert "1 seal(s) verified" in capsys.readouterr().out
