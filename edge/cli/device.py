"""`edge doctor [--config FILE] [--json]` and `edge device provision --id ID --out DIR [--force] [--json]`:
argument handling and output only (the work is in edge/device/doctor.py and edge/device/provision.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def cmd_doctor(args: argparse.Namespace) -> int:
    from edge.device.doctor import format_table, run_doctor

    config = None
    if args.config is not None:
        from edge.config import load_config

        config = load_config(args.config)  # ConfigError: the CLI prints it (file, line, key) and exits 1
    checks = run_doctor(config)
    if args.json:
        print(json.dumps({"ok": all(c["ok"] for c in checks), "checks": checks}, indent=2, ensure_ascii=False))
    else:
        print(format_table(checks))
    return 0 if all(c["ok"] for c in checks) else 1


def cmd_provision(args: argparse.Namespace) -> int:
    from edge.device.provision import provision

    result = provision(args.id, args.out, force=args.force, evidence_key=args.evidence_key)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    for warning in result.warnings:
        print(f"edge: warning: {warning}", file=sys.stderr)
    print(f"device id:  {result.device_id}")
    print(f"key id:     {result.key_id}")
    print(f"device key: {result.out / 'device.key'} (X25519, 0600; stays on the device)")
    print(f"CSR:        {result.csr_path} (CN={result.device_id}; have the operator CA sign it into the broker "
          "client certificate)")
    print(f"audit seal: {result.out / 'audit.seal'} (0600; install into the device's state directory, where it "
          "evolves at every seal)")
    print(f"audit verification key: {result.out / 'audit-verify.key'} (0600; the OPERATOR keeps it and deletes it "
          "from here: `edge audit verify --verify-key`)")
    if result.evidence_key_id:
        print(f"evidence:   {result.out / 'operator-evidence.pub'} (the operator's key {result.evidence_key_id}; "
              "match events carry face chips sealed to it — set events.operator_thumbnail_key to it)")
    print("X25519 public key (give it to the operator: `edge watchlist seal --device-key`):")
    print(result.public_key_pem, end="")
    return 0


def add_parsers(sub: Any) -> None:
    """Register `doctor` and `device provision` on the `edge` subparsers."""
    p = sub.add_parser("doctor", help="check runtime, models, camera, keys, broker, watchlist, clock, disk and the "
                                      "state directory",
                       description="Run the device's self-checks and report each as ok or failed with a reason. "
                                   "Without --config only the runtime, the model checksums and the clock are "
                                   "checked; with it also the state directory (file modes and links, the install "
                                   "record, the audit log and its seal, the outbox), one line per problem. Exit "
                                   "status 0 when every check passes, else 1.")
    p.add_argument("--config", type=Path, metavar="FILE", help="the appliance's YAML config")
    p.add_argument("--json", action="store_true", help="machine-readable output: {\"checks\": [{name, ok, detail}]}")
    p.set_defaults(func=cmd_doctor)

    dev = sub.add_parser("device", help="device provisioning").add_subparsers(
        dest="device_command", metavar="ACTION", required=True)
    p = dev.add_parser("provision", help="create a device's keys and broker-certificate request",
                       description="Create the X25519 key pair that watchlists are encrypted to (device.key 0600, "
                                   "device.pub), an EC P-256 TLS key and a CSR with CN=ID for the broker "
                                   "certificate, and device.json. Existing keys are kept unless --force.")
    p.add_argument("--id", required=True, help="device id: 1–64 of A–Z a–z 0–9 . _ - (lower case recommended)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the key files")
    p.add_argument("--force", action="store_true", help="replace existing key files")
    p.add_argument("--evidence-key", type=Path, metavar="PUB",
                   help="the operator's X25519 evidence public key (`edge keys generate evidence`): copied in as "
                        "operator-evidence.pub so match events carry the face chips sealed to it")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_provision)
