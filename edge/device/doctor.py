"""`edge doctor`: is this device able to do its job? Each check is {name, ok, detail}.

Without a config: runtime, models (every manifest checksum) and clock. With `--config`: also delegate (when one is
configured), camera (open the source and read one frame within a timeout), keys (device key present, mode 0600,
loads; operator keys load), broker (when mqtt.enabled: a real TLS connection within a timeout), watchlist (installed
and not stale), clock against the installed bundle's `created`, and free disk space in the state directory.

The key, trust-store and model checks reuse `edge.cli.run`'s `--check` helpers, so both commands agree.
"""

from __future__ import annotations

import os
import shutil
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

#: Seconds allowed for the camera to deliver a frame and for the broker to accept the connection.
CAMERA_TIMEOUT_S = 10.0
BROKER_TIMEOUT_S = 5.0
#: Least free space in the state directory, bytes.
MIN_FREE_BYTES = 100 * 1024 * 1024
#: Earliest plausible year for the system clock.
MIN_YEAR = 2025

_DISTRIBUTIONS = {"litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime"}


def _result(name: str, fn: Callable[[], str]) -> dict:
    try:
        return {"name": name, "ok": True, "detail": fn()}
    except Exception as err:  # noqa: BLE001 - every failure becomes one line of the report
        return {"name": name, "ok": False, "detail": str(err) or type(err).__name__}


# --- checks ------------------------------------------------------------------------------------------------------

def check_runtime(backend: str = "auto") -> str:
    from importlib import metadata

    from edge.vision.runtime import _import_backend

    name, module = _import_backend(backend)
    try:
        version = metadata.version(_DISTRIBUTIONS[name])
    except metadata.PackageNotFoundError:
        version = getattr(module, "__version__", "unknown version")
    return f"{name} {version} ({module.__name__})"


def check_delegate(config: Any) -> str:
    from edge.errors import ModelError
    from edge.vision.runtime import _import_backend

    delegate = config.vision.delegate
    _, module = _import_backend(config.vision.backend)
    try:
        module.load_delegate(delegate)
    except (ValueError, OSError, RuntimeError) as err:
        raise ModelError(f"delegate {delegate!r} could not be loaded ({err}); install its runtime library or remove "
                         "vision.delegate from the configuration") from None
    return f"{delegate} loads"


def check_models(models_dir: Path | None = None) -> str:
    """Every file of the manifest matches its sha256; a failure names each bad file."""
    from edge.errors import ModelError
    from edge.vision.manifest import load_manifest
    from edge.vision.runtime import sha256_file

    manifest = load_manifest(models_dir)
    bad = []
    for name, info in sorted(manifest.models.items()):
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
    from edge.device.app import source_options
    from edge.device.capture import open_source

    source = open_source(config.camera.source, **source_options(config))
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
    from edge.cli.run import _device_key, _trusted_keys

    return f"{_device_key(config)}; {_trusted_keys(config)}"


def check_broker(config: Any, timeout: float = BROKER_TIMEOUT_S) -> str:
    from edge.messaging.mqtt import MqttClient, MqttSettings

    m = config.mqtt
    if not m.enabled:
        return "mqtt disabled: not checked (events stay in the outbox)"
    client = MqttClient(MqttSettings(host=m.host, port=m.port, client_id=config.device.id, ca_file=m.ca_file,
                                     cert_file=m.cert_file, key_file=m.key_file, reconnect_min=0.2,
                                     reconnect_max=1.0, keepalive=m.keepalive_s))
    client.start()
    try:
        client.wait_connected(timeout)
    finally:
        client.stop()
    tls = f"TLS, client certificate {m.cert_file}" if m.cert_file else ("TLS" if m.ca_file else "no TLS")
    return f"connected to {m.host}:{m.port} as {config.device.id} ({tls})"


def _watchlist_store(config: Any) -> Any:
    from edge import keys
    from edge.device.app import load_trust
    from edge.vision.manifest import load_manifest
    from edge.watchlist.store import WatchlistStore

    manifest = load_manifest(config.vision.models_dir)
    info = manifest.get(config.vision.embedder, "embedder") if config.vision.embedder else manifest.default("embedder")
    store = WatchlistStore(config.device.state_dir, config.device.id,
                           keys.load_private_key(config.watchlist.device_key, "device"),
                           load_trust(config.watchlist.trusted_keys),
                           manifest.embedding_space(info, config.vision.fusion and config.vision.alignment == "dlib5"),
                           info.sha256, lambda bundle: True)  # verify and decrypt only; no index is built
    store.start()
    return store


def check_watchlist(config: Any) -> str:
    state = _watchlist_store(config).state()
    rejection = state.get("last_rejection")
    why = f" ({rejection.get('message') or rejection.get('reason')})" if rejection else ""
    if state["state"] == "none":
        raise RuntimeError(f"none: no watchlist is installed in {config.device.state_dir}{why}")
    label = f"{state['watchlist_id']} v{state['version']}"
    if state["state"] == "stale":
        raise RuntimeError(f"stale: watchlist {label} expired at {state['expires']}")
    return f"ok: watchlist {label}, expires {state['expires']}"


def check_clock(config: Any | None = None, now: datetime | None = None) -> str:
    from edge.watchlist.bundle import parse_time, peek_manifest
    from edge.watchlist.store import INSTALLED

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


# --- the report --------------------------------------------------------------------------------------------------

def run_doctor(config: Any | None = None) -> list[dict]:
    """All checks in order: [{name, ok, detail}]."""
    backend = config.vision.backend if config is not None else "auto"
    models_dir = config.vision.models_dir if config is not None else None
    checks = [_result("runtime", lambda: check_runtime(backend))]
    if config is not None and config.vision.delegate:
        checks.append(_result("delegate", lambda: check_delegate(config)))
    checks.append(_result("models", lambda: check_models(models_dir)))
    if config is not None:
        checks.append(_result("camera", lambda: check_camera(config)))
        checks.append(_result("keys", lambda: check_keys(config)))
        checks.append(_result("broker", lambda: check_broker(config)))
        checks.append(_result("watchlist", lambda: check_watchlist(config)))
    checks.append(_result("clock", lambda: check_clock(config)))
    if config is not None:
        checks.append(_result("disk", lambda: check_disk(config)))
    return checks


def format_table(checks: list[dict]) -> str:
    width = max(len(c["name"]) for c in checks)
    lines = [f"{'✓' if c['ok'] else '✗'} {c['name']:<{width}}  {c['detail']}" for c in checks]
    failed = [c["name"] for c in checks if not c["ok"]]
    lines.append(f"{len(checks) - len(failed)} of {len(checks)} checks passed"
                 + (f"; failed: {', '.join(failed)}" if failed else ""))
    return "\n".join(lines)
