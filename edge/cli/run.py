"""`edge run --config FILE [--check]` and `edge config --describe|--defaults`: argument handling and output only
(the appliance is edge/device/app.py, the schema edge/config_models.py, its loader edge/config.py).

`--check` validates the config, loads the models (checksums verified), builds (not opens) the frame source,
reads every key and TLS file the config names and checks the state directory (file modes and links, the install
record, the audit log and its seal, the outbox), reporting each check (the checks live in `edge.device.doctor`). A
device file that does not exist is a failure, or — with `--allow-missing`, e.g. to validate a profile on a
developer machine — a skipped check.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any


def cmd_check(config: Any, args: argparse.Namespace) -> int:
    from edge.device.check_kit import ABSENT, OK
    from edge.device.doctor import config_checks, indent

    checks = config_checks(config, str(args.config))
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
        print(f"{mark:<4}  {c['name']}: {indent(c['detail'], 8)}")
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
    p.add_argument("--check", action="store_true", help="validate the config, load the models, read the key and "
                                                        "TLS files and check the state directory, without opening the "
                                                        "camera; then exit")
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
