"""`edge console …`: serve the review console (edge/operator/console/) and manage its users.

The console's audit log (decisions, user adds, purges) is sealed like the device's (`edge.audit_seal`): its own
sealing key beside it, made by the first `user add` or start; the console seals its head at start, every
`SEAL_EVERY_S` while anything new was appended, at each case export and at shutdown, and publishes every seal to
a heads file and its standard output, for the operator to keep off this host.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import DataError, EdgeError

if TYPE_CHECKING:
    from edge.audit_seal import SealedAuditLog


def _trusted_proxies(text: str | None) -> str | None:
    """--trust-proxy's addresses checked (IP addresses only, comma-separated), or None."""
    if not text:
        return None
    addrs = [a.strip() for a in text.split(",") if a.strip()]
    for a in addrs:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise DataError(f"--trust-proxy {a!r} is not an IP address") from None
    return ",".join(addrs)


def shipped_demographics() -> dict[str, dict]:
    """Embedding space → demographic summary, for every embedder of the model manifest that ships one ({} when the
    models are not installed on this operator machine)."""
    from edge.vision.manifest import load_manifest

    try:
        manifest = load_manifest()
    except EdgeError:
        return {}
    return {manifest.embedding_space(m, False): m.info["demographics"] for m in manifest.models.values()
            if m.kind == "embedder" and m.info.get("demographics")}


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets: [::1]:8080) → (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DataError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_audit(store_url: str) -> Path:
    """console-audit.log beside a SQLite store; ./console-audit.log for PostgreSQL."""
    from edge.operator.db import parse_url

    dialect, target = parse_url(store_url)
    return (Path(target).parent if dialect == "sqlite" else Path(".")) / "console-audit.log"


def _need_store(args: argparse.Namespace) -> str:
    if not getattr(args, "store", None):
        raise DataError("--store is required: the operator's event store (sqlite:///PATH, a file path, or"
                        " postgresql://user@host:port/db)")
    return args.store


#: Seconds between the console's seals of its audit log (only when something was appended since the last one).
SEAL_EVERY_S = 60.0


def default_heads(audit: Path) -> Path:
    """console-audit.heads beside console-audit.log: the seals' heads, one JSON line each."""
    return audit.with_name(f"{audit.stem}.heads")


def _audit(args: argparse.Namespace, store_url: str, announce: bool = False) -> SealedAuditLog:
    """The console's sealed audit log; its keys are made when absent, and the operator is told where the
    verification key is (stderr, so a script's output stays as it was)."""
    from edge.audit_seal import SealedAuditLog

    path = Path(getattr(args, "audit", None) or default_audit(store_url))
    heads = getattr(args, "audit_heads", None) or default_heads(path)

    def publish(head: dict) -> None:
        print("audit seal: " + json.dumps({k: head[k] for k in ("seq", "hash", "epoch", "mac")}), flush=True)

    audit = SealedAuditLog(path, "console", heads, on_seal=publish if announce else None)
    if audit.created:
        print(f"edge: made the audit log's sealing key {audit.seal_path} (0600; stays here and evolves at every"
              f" seal) and its verification key {audit.verify_path}: move the verification key OFF this host now"
              f" (to the machine or offline medium that runs `edge audit verify --verify-key`), and delete it here",
              file=sys.stderr, flush=True)
    elif announce and audit.verify_path.exists():
        print(f"edge: warning: {audit.verify_path} is still on this host: whoever takes the host can re-seal a"
              " rewritten audit log with it; move it off this host", file=sys.stderr, flush=True)
    return audit


def _seal(audit: SealedAuditLog) -> None:
    """Seal the head now; a failure is reported on stderr and tried again at the next period, never fatal."""
    try:
        audit.seal()
    except (EdgeError, OSError) as err:
        print(f"edge: audit log not sealed: {err}", file=sys.stderr, flush=True)


def _keep_sealing(audit: SealedAuditLog, stop: threading.Event, every_s: float = SEAL_EVERY_S) -> None:
    """Seal every `every_s` seconds until `stop` is set (the console's thread `edge-audit-seal`)."""
    while not stop.wait(every_s):
        _seal(audit)


def cmd_console(args: argparse.Namespace) -> int:
    host, port = parse_listen(args.listen)
    if not is_loopback(host) and not args.allow_remote:
        raise DataError(f"--listen {args.listen} is not a loopback address and the console speaks plain HTTP: put it"
                        " behind a TLS reverse proxy on this host, or pass --allow-remote if you did")
    if args.retention_days is not None and not args.retention_days > 0:
        raise DataError(f"--retention-days must be a positive number of days, got {args.retention_days}")
    from edge import keys
    from edge.operator.accounts import Accounts
    from edge.operator.console import create_app, server
    from edge.operator.event_store import EventStore
    from edge.operator.labels import labels_from_build

    url = _need_store(args)
    from edge.watchlist.operator.references import References

    labels = labels_from_build(args.watchlist) if args.watchlist else {}
    references = References(args.watchlist) if args.watchlist else None
    thumbnail_key = keys.load_private_key(args.thumbnail_key, "device") if args.thumbnail_key else None
    store = EventStore(url, required_confirmations=args.confirmations)
    try:
        audit = _audit(args, url, announce=True)
    except BaseException:
        store.close()
        raise
    stop = threading.Event()
    sealing = threading.Thread(target=_keep_sealing, args=(audit, stop), daemon=True, name="edge-audit-seal")
    try:
        _seal(audit)  # what was appended while the console was down (user adds)
        accounts = Accounts(store.db)
        app = create_app(store, accounts, audit, labels, args.confirmations, args.retention_days,
                         thumbnail_key=thumbnail_key, references=references, demographics=shipped_demographics())
        shown = f"[{host}]" if ":" in host else host
        print(f"edge console on http://{shown}:{port}/ (store {url}, audit log {audit.path}, {args.confirmations}"
              f" confirmation(s) confirm an event, {len(labels)} subject name(s))", flush=True)
        print(f"audit seals: every {SEAL_EVERY_S:g} s and at each case export, heads appended to {audit.heads}"
              " (copy them off this host)", flush=True)
        print("evidence: " + ("captured faces open with the operator's evidence key" if thumbnail_key is not None
                              else "captured faces stay sealed (no --thumbnail-key)") + "; enrolled faces "
              + ("from " + str(args.watchlist / "references") if references is not None and references.available
                 else "not available (--watchlist BUILD_DIR with references/)"), flush=True)
        if not accounts.users():
            print("no users yet: add one with `edge console user add NAME --role admin --store …`", flush=True)
        sealing.start()
        if args.retention_days is not None:
            threading.Thread(target=_retention, args=(store, audit, args.retention_days, stop), daemon=True,
                             name="edge-retention").start()
        server(app, host, port, trusted_proxies=_trusted_proxies(args.trust_proxy)).run()
    finally:
        stop.set()
        if sealing.is_alive():
            sealing.join(5.0)
        _seal(audit)  # the last decisions, sealed before the key leaves memory
        audit.close()
        store.close()
    return 0


#: Seconds between automatic retention purges.
RETENTION_EVERY_S = 3600.0


def _retention(store, audit, days: float, stop: threading.Event) -> None:
    """Purge events and decisions older than `days` at start and every hour; each purge that removed something
    is audited."""
    while True:
        try:
            result = store.purge(days * 86400.0)
            if result["events"] or result["decisions"]:
                audit.append("retention_purge", {"by": "retention schedule", "retention_days": days, **result})
                print(f"retention: purged {result['events']} events and {result['decisions']} decisions older than"
                      f" {days:g} days", flush=True)
        except Exception as err:  # noqa: BLE001 - a failed purge is retried at the next period, never fatal
            print(f"retention purge failed: {err}", file=sys.stderr, flush=True)
        if stop.wait(RETENTION_EVERY_S):
            return


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise DataError("--password-stdin: no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise DataError("no terminal to ask for the password on: pipe it in with --password-stdin")
    import getpass

    password = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != password:
        raise DataError("the two passwords differ")
    return password


def cmd_user_add(args: argparse.Namespace) -> int:
    from edge.operator.accounts import Accounts
    from edge.operator.event_store import EventStore

    url = _need_store(args)
    password = _read_password(args)
    store = EventStore(url)
    try:
        audit = _audit(args, url)  # opened first: a console holding the log refuses here, before the user exists
        try:
            Accounts(store.db).add_user(args.name, password, args.role)
            audit.append("user_add", {"username": args.name, "role": args.role})
        finally:
            audit.close()
    finally:
        store.close()
    print(f"added {args.role} {args.name}; the audit log {audit.path} records it")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    from edge.operator.accounts import Accounts
    from edge.operator.event_store import EventStore

    store = EventStore(_need_store(args))
    try:
        users = Accounts(store.db).users()
    finally:
        store.close()
    if args.json:
        print(json.dumps({"users": users}, indent=2))
        return 0
    width = max([len("USER")] + [len(u["username"]) for u in users])
    print(f"{'USER'.ljust(width)}  ROLE        DISABLED")
    for u in users:
        print(f"{u['username'].ljust(width)}  {u['role'].ljust(10)}  {'yes' if u['disabled'] else 'no'}")
    print(f"{len(users)} user(s)")
    return 0


def _store_options(p: argparse.ArgumentParser, sub: bool) -> None:
    # On the actions the options default to SUPPRESS, so `edge console --store X user list` keeps X.
    default = argparse.SUPPRESS if sub else None
    p.add_argument("--store", default=default, metavar="URL",
                   help="the operator's event store: sqlite:///PATH, a file path, or postgresql://user@host:port/db"
                        " (required)")
    p.add_argument("--audit", type=Path, default=default, metavar="FILE",
                   help="the console's audit log (default: console-audit.log beside a SQLite store, else"
                        " ./console-audit.log); its sealing key is beside it (console-audit.seal)")
    p.add_argument("--audit-heads", type=Path, default=default, metavar="FILE",
                   help="where the console appends the head of each audit seal, for `edge audit verify --heads`"
                        " (default: console-audit.heads beside the log); copy it off this host")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `edge console …`."""
    from edge.operator.accounts import ROLES

    p = sub.add_parser("console", help="the review console (web) over the event store, and its users",
                       description="Serve the operator's review console: the queue of match events, each event with"
                                   " its decisions, the fleet and the watchlist versions. An event is confirmed only"
                                   " after --confirmations different reviewers confirm it. Listens on loopback;"
                                   " serve it to others through a TLS reverse proxy.")
    _store_options(p, sub=False)
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="address to serve on (default 127.0.0.1:8080; a non-loopback one needs --allow-remote)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --listen address (only behind a TLS reverse proxy: the console itself"
                        " speaks plain HTTP)")
    p.add_argument("--trust-proxy", metavar="ADDR[,ADDR]", help="believe X-Forwarded-For/-Proto only from these "
                   "addresses (your TLS reverse proxy, e.g. 127.0.0.1); default: from nobody")
    p.add_argument("--watchlist", type=Path, metavar="BUILD_DIR",
                   help="the operator's watchlist build (`edge watchlist build --out`): shows names for subject ids"
                        " and the enrolled faces beside the captured ones")
    p.add_argument("--confirmations", type=int, default=2, metavar="N",
                   help="different reviewers who must confirm an event before it is confirmed (default 2)")
    p.add_argument("--retention-days", type=float, metavar="D",
                   help="purge events and decisions older than D days at start and every hour, audited; an admin"
                        " may also purge from /admin (default: keep everything)")
    p.add_argument("--thumbnail-key", type=Path, metavar="PRIV",
                   help="the operator's X25519 evidence private key (`edge keys generate evidence`): open the sealed"
                        " faces events carry, for the reviewers")
    p.set_defaults(func=cmd_console)
    actions = p.add_subparsers(dest="console_command", metavar="ACTION")
    users = actions.add_parser("user", help="console accounts").add_subparsers(dest="user_command", metavar="ACTION",
                                                                             required=True)
    u = users.add_parser("add", help="add a console user (password from --password-stdin or a prompt)",
                         description="Add a console user. The password is read from standard input with"
                                     " --password-stdin, else asked for twice on the terminal; never from the"
                                     " command line. Refused while a console holds the audit log open.")
    u.add_argument("name", metavar="NAME", help="user name: 2-32 of a-z 0-9 . _ -, starting with a letter")
    u.add_argument("--role", choices=ROLES, required=True,
                   help="reviewer: review events; supervisor: also export cases; admin: also purge old events")
    u.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    _store_options(u, sub=True)
    u.set_defaults(func=cmd_user_add)
    u = users.add_parser("list", help="console users and their roles")
    u.add_argument("--json", action="store_true", help="machine-readable output")
    _store_options(u, sub=True)
    u.set_defaults(func=cmd_user_list)
