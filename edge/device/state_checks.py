"""The device's state directory checked as a whole, for `edge doctor --config` and `edge run --check`.

Why: everything the device must be able to trust after a restart lives there — the install record that stops a
rolled-back watchlist, the audit log and its sealing key, the outbox of unsent events — and each can be damaged
or tampered with while the service is stopped. The device notices some of it at start (and then serves nothing,
or sets the outbox aside); these checks say so beforehand, one line per problem naming the path and the cause:

- `state_files`: no symbolic link anywhere in the tree (the device opens its files O_NOFOLLOW and refuses them),
  every directory 0700, and every key or personal-data file without access for group or others (public files —
  `*.pub`, certificates, CSRs, JSON trust stores, PEM files without a private key — may be readable);
- `install_record`: `installed.version` verifies with the device key and agrees with the installed bundle's
  (unverified) manifest; missing beside an installed bundle is a failure;
- `audit_log`: the hash chain (`edge.audit.verify`);
- `audit_seal`: the sealing key lines up with the log's last seal and the seals are well formed; verified with
  `audit-verify.key` when it is in the state directory — where it must not stay, so that is a failure too;
  otherwise "seal present, not verifiable here";
- `outbox`: `outbox.db` opens read-only as an SQLite database, passes `PRAGMA integrity_check` and is an outbox.

Nothing here writes: the files are read as they are, and a state directory that does not exist yet passes.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

from edge.device.check_kit import ConfigCheck, need

#: Most problems shown per check, and most entries walked in the state directory.
MAX_SHOWN = 20
MAX_ENTRIES = 20_000
#: Names of files that may be readable by others (public keys, certificates, trust stores).
PUBLIC_SUFFIXES = (".pub", ".crt", ".csr", ".cert", ".pem", ".json")


class Problems(Exception):
    """One or more problems, each one line naming the path and the cause."""

    def __init__(self, lines: list[str] | str) -> None:
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        shown = self.lines[:MAX_SHOWN]
        more = len(self.lines) - len(shown)
        super().__init__("\n".join(shown + ([f"… and {more} more"] if more else [])))


def _state(config: Any) -> Path | None:
    """The state directory, or None when it does not exist yet (nothing to check)."""
    state = Path(config.device.state_dir)
    return state if os.path.lexists(state) else None


def _state_file(config: Any, name: str) -> tuple[Path, str | None]:
    """(path of `name` in the state directory, None) when it is there and no symlink; (path, "does not exist yet")
    when there is nothing to check; Problems for a symlink."""
    state = _state(config)
    path = (state or Path(config.device.state_dir)) / name
    if state is None or not os.path.lexists(path):
        return path, f"{path} does not exist yet (created at the first start)"
    _refuse_link(path)
    return path, None


def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise Problems(f"{path} is a symbolic link (to {os.readlink(path)}): refused; it must be a regular file")


def _is_public(path: Path) -> bool:
    if not path.name.endswith(PUBLIC_SUFFIXES):
        return False
    try:
        with open(path, "rb") as f:
            return b"PRIVATE KEY" not in f.read(64 * 1024)
    except OSError:
        return False


# --- file modes and links ----------------------------------------------------------------------------------------

def check_state_files(config: Any) -> str:
    """No symbolic links, directories 0700, private files without group or other access."""
    state = _state(config)
    if state is None:
        return f"{config.device.state_dir} does not exist yet (created mode 0700 at start)"
    if state.is_symlink():
        raise Problems(f"{state} is a symbolic link (to {os.readlink(state)}): refused; the state directory must be"
                       " a real directory (the device refuses to start with it)")
    problems: list[str] = []
    seen = 0

    def walk_error(err: OSError) -> None:
        problems.append(f"{err.filename}: cannot be read ({err.strerror}); run the check as the service's user")

    for top, dirs, files in os.walk(state, onerror=walk_error):
        for name in sorted(dirs + files):
            path = Path(top) / name
            seen += 1
            try:
                st = path.lstat()
            except OSError as err:
                problems.append(f"{path}: cannot be read ({err.strerror})")
                continue
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                problems.append(f"{path} is a symbolic link (to {os.readlink(path)}): refused; the device's state"
                                " must be regular files and directories")
            elif stat.S_ISDIR(st.st_mode):
                if mode & 0o077:
                    problems.append(f"{path} has mode {mode:04o}: a state directory must be 0700 (chmod 700 {path})")
            elif not stat.S_ISREG(st.st_mode):
                problems.append(f"{path} is not a regular file")
            elif mode & 0o077 and not _is_public(path):
                problems.append(f"{path} has mode {mode:04o}: keys and personal data must be 0600 (chmod 600 {path})")
        if seen > MAX_ENTRIES:
            problems.append(f"{state}: more than {MAX_ENTRIES} entries; stopped looking")
            break
    st = state.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        problems.insert(0, f"{state} has mode {stat.S_IMODE(st.st_mode):04o}: the state directory must be 0700"
                           f" (chmod 700 {state})")
    if problems:
        raise Problems(problems)
    return f"{state}: {seen} entries, no links, private modes"


# --- the install record ------------------------------------------------------------------------------------------

def check_install_record(config: Any) -> str:
    """installed.version verifies with the device key and names the installed bundle's version and content."""
    from edge import keys
    from edge.watchlist.frame import BundleError, peek_manifest
    from edge.watchlist.device.policy import WIPED, record_conflict
    from edge.watchlist.device.record import RECORD, InstallRecord, RecordError
    from edge.watchlist.device.store import INSTALLED

    state = _state(config)
    if state is None:
        return "no state directory yet: no watchlist installed"
    record_path, bundle = state / RECORD, state / INSTALLED
    _refuse_link(record_path)
    _refuse_link(bundle)
    if not record_path.exists():
        if bundle.exists():
            raise Problems(f"{record_path} is missing beside {bundle}: the device refuses the installed watchlist at"
                           " start (removed, or the bundle swapped while stopped?); re-send the current watchlist")
        return "no watchlist installed yet (no install record)"
    (key_path,) = need(config.watchlist.device_key)
    record = InstallRecord(record_path, config.device.id, keys.load_private_key(key_path, "device"))
    try:
        version, content = record.read()  # type: ignore[misc]  # the file exists: a record or RecordError
    except RecordError:
        raise Problems(f"{record_path} does not verify with the device key {key_path} (edited, another device's, or"
                       " not a record): the installed watchlist is refused at start; re-send the current watchlist"
                       ) from None
    if content == WIPED:
        return f"{record_path}: wiped at v{version}; versions up to v{version} are refused"
    if not bundle.exists():
        return f"{record_path}: v{version} accepted; no bundle installed (it arrives with the next sync)"
    try:
        with open(bundle, "rb") as f:
            manifest = peek_manifest(f.read(2 * 2**20))
        claimed, claimed_content = manifest.get("version"), manifest.get("content_sha256")
    except (OSError, BundleError) as err:
        raise Problems(f"{bundle} cannot be read as a bundle ({getattr(err, 'strerror', None) or err})") from None
    if type(claimed) is not int or not isinstance(claimed_content, str):
        raise Problems(f"{bundle}: its manifest names no version or content hash (not a bundle)")
    conflict = record_conflict((version, content), claimed, claimed_content)
    if conflict is not None:
        raise Problems(f"{bundle} against {record_path}: {conflict[1]}")
    return f"{record_path}: v{version}, matches {bundle} (manifest v{claimed})"


# --- the audit log and its seal ----------------------------------------------------------------------------------

def check_audit_log(config: Any) -> str:
    """The audit log's hash chain: every record's hash, seq and link."""
    from edge.audit import verify

    log, absent = _state_file(config, "audit.log")
    if absent:
        return absent
    result = verify(log)
    if not result.ok:
        raise Problems([f"{log} {p['problem']}" for p in result.problems])
    notes = f"; {len(result.notices)} note(s): {result.notices[0]['notice']}" if result.notices else ""
    head = result.head["seq"] if result.head else 0
    return f"{log}: {result.records} records, chain intact, head seq {head}{notes}"


def check_audit_seal(config: Any) -> str:
    """The sealing key against the log's seals; the seals themselves when the verification key is here."""
    from edge.audit import tail
    from edge.audit_seal import Sealer, check_seals, key_paths, load_verify_key

    state = _state(config)
    if state is None:
        return "no state directory yet: nothing sealed"
    log = state / "audit.log"
    seal, verify_key = key_paths(log)
    for path in (log, seal, verify_key):
        _refuse_link(path)
    records = [rec for _, rec, _ in tail(log) if rec is not None] if log.exists() else []
    seals = [r for r in records if r["kind"] == "seal"]
    if not seal.exists():
        if seals:
            raise Problems(f"{seal} is missing but {log} holds {len(seals)} seal(s) (the last at seq"
                           f" {seals[-1]['seq']}): the sealing key was removed, and the log is no longer sealed")
        return (f"not sealed: no {seal} (the audit log is hash-chained only; install the audit.seal made by"
                " `edge device provision`)")
    sealer = Sealer(seal)
    problems = []
    try:
        if sealer.lags(seals[-1] if seals else None):
            problems.append(f"{seal} is still the key that made the last seal (seq {seals[-1]['seq']}, epoch"
                            f" {sealer.epoch}): it did not evolve (a crash right after sealing?), so the next seal"
                            " would repeat the epoch and fail verification")
    except Exception as err:  # noqa: BLE001 - SealError: one line
        problems.append(str(err))
    initial = load_verify_key(verify_key) if verify_key.exists() else None
    report = check_seals(records, initial)
    problems += [f"{log} {p}" for p in report.problems]
    summary = (f"{report.seals} seal(s), {report.unsealed_tail} record(s) after the last; {seal} at epoch"
               f" {sealer.epoch}")
    if initial is not None:
        verdict = "the seals verify with it" if not report.problems else "the seals were checked with it"
        problems.append(f"{verify_key} is on the device ({verdict}): with K(0) whoever gains root here can re-seal a"
                        " rewritten log; keep it with the operator only and delete it here")
    if problems:
        raise Problems(problems)
    return f"seal present, not verifiable here (the verification key stays with the operator): {summary}"


# --- the outbox --------------------------------------------------------------------------------------------------

def check_outbox(config: Any) -> str:
    """outbox.db is a readable, intact SQLite database holding the outbox's tables (read-only: nothing written)."""
    path, absent = _state_file(config, "outbox.db")
    if absent:
        return absent
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as err:
        raise Problems(f"{path} cannot be opened: {err}") from None
    try:
        found = [r[0] for r in db.execute("PRAGMA integrity_check(20)").fetchall()]
        if found != ["ok"]:
            raise Problems([f"{path} is corrupt: {p}" for p in found] + [
                f"{path}: at start the device keeps it aside and salvages the events it can read"])
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"meta", "events"} <= tables:
            raise Problems(f"{path} is an SQLite database but not an outbox (tables: {', '.join(sorted(tables))})")
        depth = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    except sqlite3.DatabaseError as err:
        raise Problems(f"{path} is corrupt or not a database: {err}; at start the device keeps it aside and starts"
                       " a fresh outbox") from None
    finally:
        db.close()
    return f"{path}: intact, {depth} event(s) waiting"


#: (name, check) of the state directory, in order: shared by `edge run --check` and `edge doctor --config`.
STATE_CHECKS: list[tuple[str, ConfigCheck]] = [
    ("state_files", check_state_files), ("install_record", check_install_record), ("audit_log", check_audit_log),
    ("audit_seal", check_audit_seal), ("outbox", check_outbox)]
