"""`edge keys generate|rotate`: operator and device key pairs, and operator key rotation statements (argument handling
and output; the keys themselves are edge/keys.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.cli.common import print_json as _print_json


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from edge import keys

    key = keys.generate_operator_key() if args.kind == "operator" else keys.generate_device_key()  # X25519
    private, public = args.out / f"{args.name or args.kind}.key", args.out / f"{args.name or args.kind}.pub"
    keys.save_private_key(private, key, force=args.force)
    keys.save_public_key(public, key.public_key())
    result = {"private": str(private), "public": str(public), "key_id": keys.key_id(key.public_key())}
    if args.json:
        _print_json(result)
    else:
        print(f"{args.kind} key {result['key_id']}: private {private} (mode 0600, keep it secret), public {public}")
        if args.kind == "evidence":
            print(f"devices seal their face evidence to {public.name} (install it as /etc/edge/operator-evidence.pub,"
                  f" or `edge device provision --evidence-key {public}`); the console opens it with"
                  f" `edge console --thumbnail-key {private}`")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from edge import keys

    old = keys.load_private_key(args.signing_key, "operator")
    new = keys.load_public_key(args.new_public, "operator")
    args.out.write_bytes(keys.sign_rotation(old, new))
    print(f"rotation statement {keys.key_id(old.public_key())} → {keys.key_id(new)} written to {args.out}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `keys generate` and `keys rotate`."""
    ks = sub.add_parser("keys", help="generate operator and device keys, sign key rotations").add_subparsers(
        dest="keys_command", metavar="ACTION", required=True)
    p = ks.add_parser("generate", help="a new key pair (private key mode 0600)")
    p.add_argument("kind", choices=["operator", "device", "evidence"],
                   help="operator: Ed25519 signing; device: X25519 decryption; evidence: the operator's X25519 key"
                        " that devices seal the face chips of their events to (the console keeps the private half)")
    p.add_argument("--out", type=Path, required=True, help="directory for NAME.key and NAME.pub")
    p.add_argument("--name", help="file name stem (default: the kind)")
    p.add_argument("--force", action="store_true", help="replace an existing private key")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_generate)
    p = ks.add_parser("rotate", help="sign a new operator public key with the current one")
    p.add_argument("--signing-key", type=Path, required=True, help="the current (pinned) operator private key")
    p.add_argument("--new-public", type=Path, required=True, help="the new operator public key")
    p.add_argument("--out", type=Path, required=True, help="where the rotation statement goes")
    p.set_defaults(func=cmd_keys_rotate)
