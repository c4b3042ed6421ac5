"""`edge run --config FILE [--check]` and `edge config --describe|--defaults`: argument handling and output only
(the appliance is edge/device/app.py, the schema edge/config.py).

`--check` validates the config, loads the models (checksums verified), builds (not opens) the frame source and
reads every key and TLS file the config names, reporting each check. A device file that does not exist is a
failure, or — with `--allow-missing`, e.g. to validate a profile on a developer machine — a skipped check.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

#: Outcomes of one check: passed, failed, or a device file that is absent.
OK, FAIL, ABSENT = "ok", "fail", "absent"


class _Absent(Exception):
    """A file the device needs does not exist (yet)."""


def _need(*paths: Path | None) -> list[Path]:
    present = [Path(p) for p in paths if p is not None]
    missing = [p for p in present if not p.exists()]
    if missing:
        raise _Absent(", ".join(str(p) for p in missing) + (" is" if len(missing) == 1 else " are") + " absent")
    return present


def _state_dir(config: Any) -> str:
    state = Path(config.device.state_dir)
    if state.exists():
        if not state.is_dir() or not os.access(state, os.W_OK | os.X_OK):
            raise ValueError(f"{state} is not a writable directory")
        return f"{state} (writable)"
    parent = next(p for p in state.parents if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _Absent(f"{state} is absent and cannot be created here ({parent} is not writable)")
    return f"{state} (absent; created mode 0700 at start)"


def _models(config: Any) -> str:
    from edge.device.app import vision_options
    from edge.vision.analyzer import FaceAnalyzer

    a = FaceAnalyzer.create(vision_options(config))
    return f"detector {a.detector_info.name}, embedder {a.embedder_id} (checksums verified)"


def _camera(config: Any) -> str:
    from edge.device.app import source_options
    from edge.device.capture import open_source

    return f"{open_source(config.camera.source, **source_options(config)).describe()} (not opened)"


def _device_key(config: Any) -> str:
    from edge import keys

    (path,) = _need(config.watchlist.device_key)
    return f"{path}: X25519 key {keys.key_id(keys.load_private_key(path, 'device').public_key())}"


def _trusted_keys(config: Any) -> str:
    from edge.device.app import load_trust

    trusted = config.watchlist.trusted_keys
    _need(*(trusted if isinstance(trusted, list) else [trusted]))
    store = load_trust(trusted)
    if not len(store):
        raise ValueError(f"{trusted} pins no operator key: no watchlist could ever be installed")
    return f"{len(store)} operator key(s): {', '.join(sorted(store.keys()))}"


def _mqtt(config: Any) -> str:
    m = config.mqtt
    if not m.enabled:
        return "disabled: events stay in the outbox"
    if m.ca_file is None:
        return f"{m.host}:{m.port} without TLS (mqtt.ca_file is null)"
    from edge.messaging.mqtt import MqttClient, MqttSettings

    _need(m.ca_file, m.cert_file, m.key_file)
    MqttClient(MqttSettings(host=m.host, port=m.port, client_id=config.device.id, ca_file=m.ca_file,
                            cert_file=m.cert_file, key_file=m.key_file))  # loads the TLS files; does not connect
    return f"{m.host}:{m.port}, TLS files load ({m.ca_file}" + (f", {m.cert_file}" if m.cert_file else "") + ")"


def _thumbnail_key(config: Any) -> str:
    from edge import keys

    if not config.events.thumbnails:
        return "thumbnails off: no image leaves the device"
    (path,) = _need(config.events.operator_thumbnail_key)
    keys.load_public_key(path, "device")
    return f"{path}: X25519 public key"


CHECKS: list[tuple[str, Callable[[Any], str]]] = [
    ("camera", _camera), ("models", _models), ("state_dir", _state_dir), ("device_key", _device_key),
    ("trusted_keys", _trusted_keys), ("mqtt", _mqtt), ("thumbnail_key", _thumbnail_key)]


def run_checks(config: Any, source: str) -> list[dict]:
    """[{name, status: ok|fail|absent, detail}] for a config that already validated."""
    out = [{"name": "config", "status": OK, "detail": f"{source}: device {config.device.id}, camera "
                                                      f"{config.camera.source}, state in {config.device.state_dir}"}]
    for name, check in CHECKS:
        try:
            out.append({"name": name, "status": OK, "detail": check(config)})
        except _Absent as err:
            out.append({"name": name, "status": ABSENT, "detail": str(err)})
        except Exception as err:  # noqa: BLE001 - every failure is reported, one line each
            out.append({"name": name, "status": FAIL, "detail": str(err) or type(err).__name__})
    return out


def cmd_check(config: Any, args: argparse.Namespace) -> int:
    checks = run_checks(config, str(args.config))
    for c in checks:
        c["ok"] = c["status"] == OK or (c["status"] == ABSENT and args.allow_missing)
        c["skipped"] = c["status"] == ABSENT and args.allow_missing
    failed = [c for c in checks if not c["ok"]]
    skipped = [c for c in checks if c["skipped"]]
    if args.json:
        print(json.dumps({"ok": not failed, "checks": checks}, indent=2))
        return 1 if failed else 0
    for c in checks:
        mark = "skip" if c["skipped"] else "ok" if c["ok"] else "FAIL"
        print(f"{mark:<4}  {c['name']}: {c['detail']}")
    if failed:
        absent = any(c["status"] == ABSENT for c in failed)
        hint = " (absent device files; --allow-missing skips them)" if absent else ""
        print(f"config NOT OK: {args.config}: {len(failed)} of {len(checks)} checks failed: "
              f"{', '.join(c['name'] for c in failed)}{hint}")
        return 1
    extra = f", {len(skipped)} skipped because device files are absent ({', '.join(c['name'] for c in skipped)})" \
        if skipped else ""
    print(f"config OK: {args.config}: {len(checks) - len(skipped)} checks passed{extra}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from edge.config import load_config

    config = load_config(args.config)  # ConfigError: the CLI prints it (file, line, key) and exits 1
    if args.check:
        return cmd_check(config, args)
    under_systemd = "JOURNAL_STREAM" in os.environ  # the journal adds its own timestamps
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(levelname)s %(name)s: %(message)s" if under_systemd
                        else "%(asctime)s %(levelname)s %(name)s: %(message)s")
    from edge.device.app import App

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload while the models load must not kill us; run() handles it
    return App(config, args.config).run()


def cmd_config(args: argparse.Namespace) -> int:
    from edge import config

    sys.stdout.write(config.describe() if args.describe else config.dump_defaults())
    return 0


def add_parsers(sub: Any) -> None:
    """Register `run` and `config` on the `edge` subparsers."""
    p = sub.add_parser("run", help="the appliance: camera → faces → watchlist matches → events",
                       description="Run the appliance with a YAML config (see `edge config --describe`). SIGTERM or "
                                   "SIGINT stops it; SIGHUP re-reads the config and applies the quality, tracking "
                                   "and policy settings and re-loads the installed watchlist.")
    p.add_argument("--config", type=Path, required=True, metavar="FILE", help="the YAML config file")
    p.add_argument("--check", action="store_true", help="validate the config, load the models and read the key and "
                                                        "TLS files, without opening the camera; then exit")
    p.add_argument("--allow-missing", action="store_true", help="with --check: report absent device files (keys, "
                                                                "TLS files) as skipped instead of failed")
    p.add_argument("--json", action="store_true", help="with --check: machine-readable output")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("config", help="document the config file format",
                       description="Print every config key with its type, default, range and description, or a "
                                   "complete YAML config of the defaults.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--describe", action="store_true", help="every key: type, default, range, description")
    g.add_argument("--defaults", action="store_true", help="a YAML config of all defaults, commented")
    p.set_defaults(func=cmd_config)
