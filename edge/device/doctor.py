"""Is this device able to do its job? One check framework for `edge doctor` and `edge run --check`.

A check is a function of the config that returns one line of detail or raises: `Absent` when a device file does
not exist (yet), anything else for a failure (`edge.device.check_kit`, shared with the state directory's checks).
`run_check` turns it into {name, status: ok|fail|absent, detail}.

`edge run --check` (`config_checks`): the config validates, the models load (checksums verified), the frame source
builds (not opened), every key and TLS file the config names reads. `edge doctor` (`run_doctor`): without a config
the runtime, models (every manifest checksum) and clock; with one also the delegate (when configured), camera
(open the source and read one frame within a timeout), keys, broker (when mqtt.enabled: a real TLS connection
within a timeout), watchlist (installed and not stale), the clock against the installed bundle's `created`, and
free disk space in the state directory. Both, with a config, check the whole state directory
(`edge.device.state_checks`: file modes and links, the install record, the audit log and its seal, the outbox).

A detail is one line, or one line per problem when a check finds several (`format_table` indents the rest).
"""

from __future__ import annotations

import os
import shutil
import threading
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable

from edge.device import wiring
from edge.device.check_kit import ABSENT, FAIL, OK, Absent, ConfigCheck, need
from edge.device.state_checks import STATE_CHECKS
from edge.install_state import Serving

#: Seconds allowed for the camera to deliver a frame and for the broker to accept the connection.
CAMERA_TIMEOUT_S = 10.0
BROKER_TIMEOUT_S = 5.0
#: Least free space in the state directory, bytes.
MIN_FREE_BYTES = 100 * 1024 * 1024
#: Earliest plausible year for the system clock.
MIN_YEAR = 2025


def run_check(name: str, fn: Callable[[], str]) -> dict:
    """{name, status, detail} of one check: every failure becomes one line, never a traceback."""
    try:
        return {"name": name, "status": OK, "detail": fn()}
    except Absent as err:
        return {"name": name, "status": ABSENT, "detail": str(err)}
    except Exception as err:  # noqa: BLE001 - every failure becomes one line of the report
        return {"name": name, "status": FAIL, "detail": str(err) or type(err).__name__}


# --- checks ------------------------------------------------------------------------------------------------------

def check_runtime(backend: str = "auto") -> str:
    from edge.vision.runtime import backend_version

    return backend_version(backend)


def check_delegate(config: Any) -> str:
    from edge.vision.runtime import load_delegate

    load_delegate(config.vision.delegate, config.vision.backend)
    return f"{config.vision.delegate} loads"


def check_loaded_models(config: Any) -> str:
    """The configured models load (checksums verified)."""
    from edge.vision.analyzer import FaceAnalyzer

    a = FaceAnalyzer.create(wiring.vision_options(config))
    return f"detector {a.detector_info.name}, embedder {a.embedder_info.name} as {a.embedder_id} (checksums verified)"


def check_source_builds(config: Any) -> str:
    return f"{wiring.frame_source(config).describe()} (not opened)"


def check_state_dir(config: Any) -> str:
    state = Path(config.device.state_dir)
    if state.exists():
        if not state.is_dir() or not os.access(state, os.W_OK | os.X_OK):
            raise ValueError(f"{state} is not a writable directory")
        return f"{state} (writable)"
    parent = next(p for p in state.parents if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise Absent(f"{state} is absent and cannot be created here ({parent} is not writable)")
    return f"{state} (absent; created mode 0700 at start)"


def check_device_key(config: Any) -> str:
    from edge import keys

    (path,) = need(config.watchlist.device_key)
    return f"{path}: X25519 key {keys.key_id(keys.load_private_key(path, 'device').public_key())}"


def check_trusted_keys(config: Any) -> str:
    trusted = config.watchlist.trusted_keys
    need(*(trusted if isinstance(trusted, list) else [trusted]))
    store = wiring.load_trust(trusted)
    if not len(store):
        raise ValueError(f"{trusted} pins no operator key: no watchlist could ever be installed")
    return f"{len(store)} operator key(s): {', '.join(sorted(store.keys()))}"


def check_tls_files(config: Any) -> str:
    m = config.mqtt
    if not m.enabled:
        return "disabled: events stay in the outbox"
    if m.ca_file is None:
        return f"{m.host}:{m.port} without TLS (mqtt.ca_file is null)"
    from edge.messaging.mqtt import MqttClient

    need(m.ca_file, m.cert_file, m.key_file)
    MqttClient(wiring.mqtt_settings(config))  # loads the TLS files; does not connect
    return f"{m.host}:{m.port}, TLS files load ({m.ca_file}" + (f", {m.cert_file}" if m.cert_file else "") + ")"


def check_thumbnail_key(config: Any) -> str:
    from edge import keys

    ev = config.events
    if ev.thumbnails is True:
        need(ev.operator_thumbnail_key)  # explicitly on: the key file must be there
    path = ev.evidence_key()
    if path is None:
        return ("evidence off (events.thumbnails: false): events carry no face" if ev.thumbnails is False else
                f"evidence off: no operator evidence key at {ev.operator_thumbnail_key}; events carry no face, so"
                " reviewers see none" if ev.operator_thumbnail_key else
                "evidence off: no events.operator_thumbnail_key; events carry no face, so reviewers see none")
    key = keys.load_public_key(path, "device")
    return f"evidence on: face chips sealed to {path} (X25519 key {keys.key_id(key)})"


def check_models(models_dir: Path | None = None) -> str:
    """Every file of the manifest matches its sha256; a failure names each bad file."""
    from edge.errors import ModelError
    from edge.vision.manifest import load_manifest
    from edge.vision.runtime import sha256_file

    manifest = load_manifest(models_dir)
    bad = []
    for _name, info in sorted(manifest.models.items()):
        try:
            actual = sha256_file(info.path)
        except OSError as err:
            bad.append(f"{info.path}: cannot be read ({err.strerror or err})")
            continue
        if actual != info.sha256:
            bad.append(f"{info.path}: checksum mismatch (expected sha256 {info.sha256[:12]}…, got {actual[:12]}…)")
    if bad:
        raise ModelError(f"{len(bad)} of {len(manifest.models)} model file(s) bad: " + "; ".join(bad))
    return f"{len(manifest.models)} model(s) in {manifest.directory} match their checksums"


def check_camera(config: Any, timeout: float = CAMERA_TIMEOUT_S) -> str:
    source = wiring.frame_source(config)
    result: dict[str, Any] = {}

    def grab() -> None:
        try:
            source.open()
            result["frame"] = source.read()
        except Exception as err:  # noqa: BLE001 - reported below
            result["error"] = err

    thread = threading.Thread(target=grab, name="doctor-camera", daemon=True)
    thread.start()
    thread.join(timeout)
    try:
        if thread.is_alive():
            stop = getattr(source, "stop", None)
            if stop:
                stop()
            raise TimeoutError(f"{source.describe()}: no frame within {timeout:g} s")
        if "error" in result:
            raise result["error"]
        frame = result.get("frame")
        if frame is None:
            raise RuntimeError(f"{source.describe()}: opened but delivered no frame")
    finally:
        if not thread.is_alive():
            try:
                source.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
    rgb = getattr(frame, "rgb", None)
    if rgb is None:
        rgb = getattr(frame, "image", None)
    size = f" {rgb.shape[1]}×{rgb.shape[0]}" if rgb is not None and hasattr(rgb, "shape") else ""
    return f"{source.describe()}: read one frame{size}"


def check_keys(config: Any) -> str:
    return f"{check_device_key(config)}; {check_trusted_keys(config)}"


def check_broker(config: Any, timeout: float = BROKER_TIMEOUT_S) -> str:
    """The broker is reachable and accepts the device's TLS client certificate. A TLS handshake only, no MQTT
    session: the broker makes the certificate's CN the client id, so a CONNECT would knock the running service off."""
    from edge.messaging.mqtt import probe

    m = config.mqtt
    if not m.enabled:
        return "mqtt disabled: not checked (events stay in the outbox)"
    proven = probe(wiring.mqtt_settings(config), timeout)
    tls = f", client certificate {m.cert_file}" if m.cert_file else ""
    return f"{proven} as {config.device.id}{tls} (no MQTT session opened, so the running service stays connected)"


def check_watchlist(config: Any) -> str:
    from edge.vision.analyzer import embedder_identity

    store = wiring.watchlist_store(config, *embedder_identity(wiring.vision_options(config)),
                                   loader=lambda bundle: True)  # verify and decrypt only; no index is built
    state = store.state()
    rejection = state.last_rejection
    why = f" ({rejection.message or rejection.reason})" if rejection else ""
    if state.state is Serving.WIPED:  # a signed wipe dropped the list: nothing is matched until a newer one arrives
        raise RuntimeError(f"wiped: watchlist wiped at v{store.floor} (nothing served; versions up to v{store.floor}"
                           f" are refused){why}")
    if not state.installed:
        raise RuntimeError(f"none: no watchlist is installed in {config.device.state_dir}{why}")
    label = f"{state.watchlist_id} v{state.version}"
    if state.state is Serving.STALE:
        raise RuntimeError(f"stale: watchlist {label} expired at {state.expires}")
    return f"ok: watchlist {label}, expires {state.expires}"


def check_clock(config: Any | None = None, now: datetime | None = None) -> str:
    from edge.watchlist.frame import peek_manifest
    from edge.watchlist.manifest import parse_time
    from edge.watchlist.device.store import INSTALLED

    now = now or datetime.now(timezone.utc)
    shown = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    if now.year < MIN_YEAR:
        raise RuntimeError(f"system clock says {shown}, before {MIN_YEAR}: set the time (NTP) before matching")
    if config is not None:
        bundle = Path(config.device.state_dir) / INSTALLED
        if bundle.exists():
            try:
                created = peek_manifest(bundle.read_bytes()).get("created")
                created_at = parse_time(created, "created")
            except Exception:  # noqa: BLE001 - an unreadable bundle is the watchlist check's business
                created_at = None
            if created_at is not None and now < created_at:
                raise RuntimeError(f"system clock says {shown}, before the installed watchlist was created "
                                   f"({created}): the clock is wrong")
            if created_at is not None:
                return f"{shown} (after the installed watchlist's created {created})"
    return f"{shown} (UTC)"


def check_disk(config: Any, min_free: int = MIN_FREE_BYTES) -> str:
    state = Path(config.device.state_dir)
    where = state if state.exists() else next(p for p in state.parents if p.exists())
    usage = shutil.disk_usage(where)
    free_mb = usage.free / 2**20
    text = f"{free_mb:,.0f} MiB free of {usage.total / 2**20:,.0f} MiB at {where}"
    if usage.free < min_free:
        raise RuntimeError(f"only {text}; at least {min_free / 2**20:,.0f} MiB are needed (outbox, audit log)")
    if state.exists() and not os.access(state, os.W_OK | os.X_OK):
        raise RuntimeError(f"{state} is not writable ({text})")
    return text


# --- the reports -------------------------------------------------------------------------------------------------

#: `edge run --check`: (name, check) in order, after the config itself.
CONFIG_CHECKS: list[tuple[str, ConfigCheck]] = [
    ("camera", check_source_builds), ("models", check_loaded_models), ("state_dir", check_state_dir),
    ("device_key", check_device_key), ("trusted_keys", check_trusted_keys), ("mqtt", check_tls_files),
    ("thumbnail_key", check_thumbnail_key), *STATE_CHECKS]


def config_checks(config: Any, source: str) -> list[dict]:
    """`edge run --check`: [{name, status: ok|fail|absent, detail}] for a config that already validated."""
    out = [{"name": "config", "status": OK, "detail": f"{source}: device {config.device.id}, camera "
                                                      f"{config.camera.source}, state in {config.device.state_dir}"}]
    return out + [run_check(name, partial(check, config)) for name, check in CONFIG_CHECKS]


def run_doctor(config: Any | None = None) -> list[dict]:
    """`edge doctor`: all checks in order, [{name, ok, detail}]."""
    backend = config.vision.backend if config is not None else "auto"
    models_dir = config.vision.models_dir if config is not None else None
    plan: list[tuple[str, Callable[[], str]]] = [("runtime", lambda: check_runtime(backend))]
    if config is not None and config.vision.delegate:
        plan.append(("delegate", lambda: check_delegate(config)))
    plan.append(("models", lambda: check_models(models_dir)))
    if config is not None:
        plan += [("camera", lambda: check_camera(config)), ("keys", lambda: check_keys(config)),
                 ("broker", lambda: check_broker(config)), ("watchlist", lambda: check_watchlist(config))]
        plan += [(name, partial(check, config)) for name, check in STATE_CHECKS]
    plan.append(("clock", lambda: check_clock(config)))
    if config is not None:
        plan.append(("disk", lambda: check_disk(config)))
    return [{"name": r["name"], "ok": r["status"] == OK, "detail": r["detail"]} for r in
            (run_check(name, fn) for name, fn in plan)]


def indent(detail: str, by: int) -> str:
    """A detail of several lines (one per problem) with its later lines indented `by` spaces."""
    return detail.replace("\n", "\n" + " " * by)


def format_table(checks: list[dict]) -> str:
    width = max(len(c["name"]) for c in checks)
    lines = [f"{'✓' if c['ok'] else '✗'} {c['name']:<{width}}  {indent(c['detail'], width + 4)}" for c in checks]
    failed = [c["name"] for c in checks if not c["ok"]]
    lines.append(f"{len(checks) - len(failed)} of {len(checks)} checks passed"
                 + (f"; failed: {', '.join(failed)}" if failed else ""))
    return "\n".join(lines)
