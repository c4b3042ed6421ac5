"""`edge audit verify` and `edge audit show`: argument handling and output only (the work is in edge/audit.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import EdgeError

if TYPE_CHECKING:
    from edge.audit_reader import VerifyResult


def _expected_head(text: str) -> tuple[int, str | None]:
    """SEQ or SEQ:HASH (a prefix of at least 8 hex digits of the record's hash or line_sha256)."""
    seq, _, digest = text.partition(":")
    try:
        n = int(seq)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SEQ or SEQ:HASH, got {text!r}") from None
    if digest and (len(digest) < 8 or any(c not in "0123456789abcdefABCDEF" for c in digest)):
        raise argparse.ArgumentTypeError(f"HASH must be at least 8 hex digits, got {digest!r}")
    return n, digest or None


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from edge.audit import verify

    result = verify(args.file, expected_head=args.expect_head)
    if args.verify_key is not None or args.heads is not None:
        _check_seals(args, result)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0 if result.ok else 1
    if result.ok:
        recovered = sum("recovered by" in n["notice"] for n in result.notices)
        extra = f" ({recovered} recovered truncation{'s' * (recovered != 1)})" if recovered else ""
        print(f"OK: {result.records} records, chain intact{extra}")
    for problem in result.problems:
        print(problem["problem"])
    for notice in result.notices:
        print(f"note: {notice['notice']}")
    if not result.ok:
        n = len(result.problems)
        print(f"FAILED: {n} problem{'s' * (n != 1)} in {args.file} ({result.records} records)")
    return 0 if result.ok else 1


def _check_seals(args: argparse.Namespace, result: "VerifyResult") -> None:
    """--verify-key / --heads: the forward-secure seals and the heads the operator saw (edge/audit_seal.py)."""
    from edge.audit import tail
    from edge.audit_seal import check_seals, load_heads, load_verify_key

    if args.verify_key is None:
        raise EdgeError("--heads needs --verify-key (the audit-verify.key made when the device was provisioned, or"
                        " the console's console-audit-verify.key)")
    initial = load_verify_key(args.verify_key)
    records = [rec for _, rec, _ in tail(args.file) if rec is not None]
    device = next((r["data"].get("device_id") for r in records if r.get("kind") == "start"
                   and isinstance(r.get("data"), dict)), None)
    heads = [h for path in args.heads or [] for h in load_heads(path)
             if h.get("device_id") in (None, device)] if args.heads else None
    report = check_seals(records, initial, heads)
    for problem in report.problems:
        result.problems.append({"line": None, "problem": problem})
    if report.seals == 0 and records:
        result.problems.append({"line": None, "problem": "no seal verifies: the log was never sealed with this key"})
    if report.unsealed_tail:
        result.notices.append({"line": None, "notice": f"{report.unsealed_tail} record(s) after the last seal are"
                                                        " not yet protected by it"})
    result.notices.append({"line": None, "notice": f"{report.seals} seal(s) verified, {report.heads_checked} head(s)"
                                                    " from the operator checked"})
    result.ok = not result.problems


def cmd_audit_show(args: argparse.Namespace) -> int:
    from edge.audit import tail

    if args.last is not None and args.last < 0:
        raise EdgeError(f"--last must be 0 or more, got {args.last}")
    for no, rec, raw in tail(args.file, args.last):
        if args.json:
            print(json.dumps(rec) if rec is not None else json.dumps({"line": no, "unreadable_bytes": len(raw)}))
        elif rec is None:
            print(f"line {no}: unreadable ({len(raw)} bytes)")
        else:
            data = json.dumps(rec["data"], sort_keys=True, ensure_ascii=False)
            print(f"#{rec['seq']:<6} {rec['at']}  {rec['kind']:<17} {data}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `edge audit verify FILE [--json]` and `edge audit show FILE [--last N]`."""
    audit = sub.add_parser("audit", help="check and read a hash-chained audit log (the device's or the console's)")
    audit = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    p = audit.add_parser("verify", help="check the hash chain; exit 1 and name each line if it was altered",
                         description="Recompute every record's hash and check seq numbers and prev links; report "
                                     "edited, deleted, reordered and inserted records by line. A write cut off by a "
                                     "power cut is a note, not a failure. Exit 0 when intact, 1 otherwise.")
    p.add_argument("file", type=Path, metavar="FILE", help="the audit log (JSON lines)")
    p.add_argument("--expect-head", type=_expected_head, metavar="SEQ[:HASH]",
                   help="the head recorded elsewhere earlier (status heartbeat): fail if the log ends before SEQ or "
                        "its record differs")
    p.add_argument("--verify-key", type=Path, metavar="FILE", help="the log's verification key: the device's "
                   "audit-verify.key (from `edge device provision`) or the console's console-audit-verify.key (made at "
                   "its first start): check every forward-secure seal, so a rewritten past fails even with hashes "
                   "recomputed")
    p.add_argument("--heads", type=Path, action="append", metavar="FILE", help="heads kept off the log's host: the "
                   "devices' from status heartbeats (`edge events tail --heads FILE`), the console's heads file "
                   "(console-audit.heads) or a case export; catches a cut-off or replaced log (repeatable)")
    p.add_argument("--json", action="store_true",
                   help="machine-readable output: {ok, records, problems, notices, head}")
    p.set_defaults(func=cmd_audit_verify)

    p = audit.add_parser("show", help="print the records (the last N with --last)",
                         description="Print audit records oldest first: seq, UTC time, kind and data. Does not "
                                     "verify; use `edge audit verify` for that.")
    p.add_argument("file", type=Path, metavar="FILE", help="the audit log (JSON lines)")
    p.add_argument("--last", type=int, metavar="N", help="only the last N lines")
    p.add_argument("--json", action="store_true", help="print records as JSON lines")
    p.set_defaults(func=cmd_audit_show)
