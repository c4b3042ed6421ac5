"""The console's audit log is forward-securely sealed like the device's (edge/audit_seal.py, edge/cli/console.py):
`edge console user add` makes its keys, the console seals at start, at each case export and at shutdown and
publishes the heads; a rewritten log (a review_decision dropped, the chain recomputed) passes the key-less chain
check but fails `edge audit verify --verify-key K --heads FILE`, while the untouched log verifies."""

import io
import json
import os
import shutil
import stat
import threading

import pytest

from edge.audit import AuditLog, tail
from edge.audit_seal import SealedAuditLog, Sealer, check_seals, load_verify_key, new_keys
from edge.cli import main
from edge.operator.event_store import EventStore
from test_attacks import _rewrite as rewrite  # the attacker's re-chaining, shared with the attack suite
from test_console import decide, new_event, password, session


def run(capsys, *argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def reviewed(tmp_path, capsys, monkeypatch):
    """A console that ran: three users added, two reviewers confirmed an event, a supervisor exported its case."""
    ops = tmp_path / "ops"
    db = ops / "events.db"
    for name, role in (("alice", "reviewer"), ("bob", "reviewer"), ("sue", "supervisor")):
        code, _, err = run(capsys, "console", "user", "add", name, "--role", role, "--password-stdin", "--store", db,
                           stdin=password(name) + "\n", monkeypatch=monkeypatch)
        assert code == 0, err
        if name == "alice":  # the first open made the keys and said where the verification key must go
            assert "console-audit-verify.key" in err and "OFF this host" in err
    store = EventStore(db)
    events = [new_event(i + 1) for i in range(2)]
    store.add(events)
    store.close()
    eid, served = events[0]["event_id"], {}

    class Server:  # the console's web server, replaced by in-process clients doing a review
        def __init__(self, app, host, port, trusted_proxies=None):
            self.app = app

        def run(self):
            alice, a_csrf = session(self.app, "alice")
            bob, b_csrf = session(self.app, "bob")
            sue, _ = session(self.app, "sue")
            assert decide(alice, a_csrf, eid, "confirm", "same person").status_code == 200
            assert decide(bob, b_csrf, eid, "confirm").status_code == 200
            served["case"] = sue.get(f"/api/events/{eid}/case").json()

    monkeypatch.setattr("edge.operator.console.server", Server)
    code, out, err = run(capsys, "console", "--store", db)
    assert code == 0, err
    assert "still on this host" in err  # the verification key was never moved off: said at every start
    (ops / "case.json").write_text(json.dumps(served["case"]))
    shutil.move(ops / "console-audit-verify.key", tmp_path / "console-audit-verify.key")  # the operator takes it
    return ops, served["case"], out


def verify_args(ops, tmp_path, *heads):
    return ["audit", "verify", ops / "console-audit.log", "--verify-key", tmp_path / "console-audit-verify.key",
            *[a for h in heads for a in ("--heads", h)]]


def test_the_console_seals_its_log_and_publishes_the_heads(reviewed, tmp_path, capsys):
    ops, case, out = reviewed
    kinds = [rec["kind"] for _, rec, _ in tail(ops / "console-audit.log")]
    assert kinds == ["user_add"] * 3 + ["seal", "review_decision", "review_decision", "seal"]
    assert stat.S_IMODE(os.stat(ops / "console-audit.seal").st_mode) == 0o600
    assert json.loads((ops / "console-audit.seal").read_text())["epoch"] == 2
    heads = [json.loads(line) for line in (ops / "console-audit.heads").read_text().splitlines()]
    assert [h["seq"] for h in heads] == [4, 7]
    printed = [json.loads(line.split("audit seal: ", 1)[1]) for line in out.splitlines() if "audit seal: " in line]
    assert printed == [{k: h[k] for k in ("seq", "hash", "epoch", "mac")} for h in heads]
    assert case["audit_seal"] == {k: v for k, v in heads[1].items() if k != "at"}  # sealed at export: covers it
    assert case["audit_head"]["seq"] == 7 and case["audit_chain"]["ok"]

    code, out, _ = run(capsys, *verify_args(ops, tmp_path, ops / "console-audit.heads", ops / "case.json"))
    assert code == 0 and "2 seal(s) verified, 4 head(s) from the operator checked" in out, out


def test_dropping_a_review_decision_and_rechaining_fails_against_the_seals(reviewed, tmp_path, capsys):
    ops, _, _ = reviewed
    first = True

    def drop_first_decision(rec):
        nonlocal first
        if rec["kind"] == "review_decision" and first:
            first = False
            return False
        return True

    rewrite(ops / "console-audit.log", drop_first_decision)
    code, out, _ = run(capsys, "audit", "verify", ops / "console-audit.log")
    assert code == 0  # the key-less chain cannot tell: what the seals are for
    code, out, _ = run(capsys, *verify_args(ops, tmp_path))
    assert code == 1 and ("hash the log no longer has" in out or "does not verify" in out), out
    code, out, _ = run(capsys, *verify_args(ops, tmp_path, ops / "console-audit.heads"))
    assert code == 1 and "the operator saw head seq 7: records were cut off" in out, out


def test_a_rewrite_resealed_with_the_key_left_on_the_host_still_fails_against_the_kept_heads(reviewed, tmp_path,
                                                                                           capsys):
    """Whoever takes the console host holds the current key only: a re-sealed rewrite gets epochs the operator's
    K(0) does not accept, and the heads kept elsewhere no longer match."""
    ops, _, _ = reviewed
    shutil.copy(ops / "console-audit.heads", tmp_path / "kept.heads")  # the operator's copy, off the host
    rewrite(ops / "console-audit.log", lambda rec: rec["kind"] not in ("review_decision", "seal"))
    audit, sealer = AuditLog(ops / "console-audit.log"), Sealer(ops / "console-audit.seal")
    sealer.seal(audit)
    audit.close()
    code, out, _ = run(capsys, *verify_args(ops, tmp_path, tmp_path / "kept.heads"))
    assert code == 1 and "expected epoch 0" in out and "differs from the head the operator saw" in out, out


def test_a_seal_made_just_before_a_crash_is_taken_up_at_the_next_start(tmp_path):
    log = tmp_path / "console-audit.log"
    audit = SealedAuditLog(log, "console")
    audit.append("user_add", {"username": "alice", "role": "admin"})
    key_before = (tmp_path / "console-audit.seal").read_bytes()
    audit.seal()
    audit.close()
    (tmp_path / "console-audit.seal").write_bytes(key_before)  # the power cut came before the key evolved
    audit = SealedAuditLog(log, "console")
    assert audit.sealer.epoch == 1 and audit.latest_seal()["seq"] == 2
    audit.append("user_add", {"username": "bob", "role": "reviewer"})
    audit.seal()
    audit.close()
    records = [rec for _, rec, _ in tail(log)]
    report = check_seals(records, load_verify_key(tmp_path / "console-audit-verify.key"))
    assert report.seals == 2 and not report.problems


def test_a_missing_or_replaced_key_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    db = tmp_path / "events.db"
    audit = SealedAuditLog(tmp_path / "console-audit.log", "console")
    audit.append("user_add", {"username": "alice", "role": "admin"})
    audit.seal()
    audit.close()
    (tmp_path / "console-audit.seal").rename(tmp_path / "old.seal")
    code, _, err = run(capsys, "console", "user", "add", "bob", "--role", "reviewer", "--password-stdin", "--store",
                       db, stdin="a long enough secret\n", monkeypatch=monkeypatch)
    assert code == 1 and err.startswith("edge: error: ") and err.count("\n") == 1
    assert "console-audit.seal is missing but" in err and "is sealed" in err
    new_keys(tmp_path, "console", "console-audit")  # a fresh key at epoch 0 where an evolved one was
    code, _, err = run(capsys, "console", "user", "add", "bob", "--role", "reviewer", "--password-stdin", "--store",
                       db, stdin="a long enough secret\n", monkeypatch=monkeypatch)
    assert code == 1 and "is at epoch 0 but the log's last seal" in err and err.count("\n") == 1


def test_a_record_appended_between_the_head_and_its_seal_cannot_break_the_seal(tmp_path):
    """The seal is made under the log's lock (`AuditLog.append_with`): a record another thread appends right
    after the sealer read the head still lands before or after the seal, never between head and seal."""
    new_keys(tmp_path, "cam-a")
    armed = []

    class Racy(AuditLog):
        def head(self):
            head = super().head()
            if armed:  # another thread appends right after the head was read
                armed.clear()
                self.append("match", {"subject_id": "late"})
            return head

    audit, sealer = Racy(tmp_path / "audit.log"), Sealer(tmp_path / "audit.seal")
    audit.append("start", {"device_id": "cam-a"})
    sealer.seal(audit)
    audit.append("match", {"subject_id": "s1"})
    armed.append(True)
    sealer.seal(audit)
    audit.close()
    report = check_seals([rec for _, rec, _ in tail(tmp_path / "audit.log")],
                         load_verify_key(tmp_path / "audit-verify.key"))
    assert report.seals == 2 and not report.problems, report.problems


def test_concurrent_decisions_and_seals_verify(tmp_path):
    audit = SealedAuditLog(tmp_path / "console-audit.log", "console")

    def decisions(n):
        for i in range(150):
            audit.append("review_decision", {"event_id": f"e{n}-{i}", "reviewer": f"r{n}", "decision": "confirm"})

    threads = [threading.Thread(target=decisions, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for _ in range(150):
        audit.seal()
    for t in threads:
        t.join()
    audit.seal()
    audit.close()
    report = check_seals([rec for _, rec, _ in tail(tmp_path / "console-audit.log")],
                         load_verify_key(tmp_path / "console-audit-verify.key"))
    assert report.seals >= 2 and not report.problems and report.unsealed_tail == 0, report.problems[:3]


def test_the_sealing_thread_seals_what_was_appended_each_period_and_nothing_when_idle(tmp_path):
    from edge.cli.console import _keep_sealing

    heads = tmp_path / "console-audit.heads"
    audit = SealedAuditLog(tmp_path / "console-audit.log", "console", heads)
    stop = threading.Event()
    thread = threading.Thread(target=_keep_sealing, args=(audit, stop, 0.05))
    thread.start()
    try:
        for n in range(2):
            audit.append("review_decision", {"event_id": f"e{n}", "reviewer": "alice", "decision": "confirm"})
            for _ in range(200):
                if heads.exists() and len(heads.read_text().splitlines()) == n + 1:
                    break
                threading.Event().wait(0.02)
        threading.Event().wait(0.3)  # idle periods: no new seal, no new head
    finally:
        stop.set()
        thread.join()
        audit.close()
    assert [json.loads(line)["epoch"] for line in heads.read_text().splitlines()] == [0, 1]
    assert [rec["kind"] for _, rec, _ in tail(tmp_path / "console-audit.log")] == ["review_decision", "seal"] * 2


def test_the_device_takes_up_a_seal_made_just_before_a_crash_and_runs_unsealed_on_a_replaced_key(tmp_path, caplog):
    from edge.device.wiring import audit_sealer

    new_keys(tmp_path, "cam-a")
    audit = AuditLog(tmp_path / "audit.log")
    audit.append("start", {})
    key_before = (tmp_path / "audit.seal").read_bytes()
    audit_sealer(tmp_path).seal(audit)
    (tmp_path / "audit.seal").write_bytes(key_before)  # the power cut came before the key evolved
    sealer = audit_sealer(tmp_path)  # the next start lines the key up with the log's last seal
    audit.append("stop", {})
    sealer.seal(audit)
    audit.close()
    report = check_seals([rec for _, rec, _ in tail(tmp_path / "audit.log")],
                         load_verify_key(tmp_path / "audit-verify.key"))
    assert report.seals == 2 and not report.problems
    (tmp_path / "other").mkdir()
    new_keys(tmp_path / "other", "cam-a")  # a key of another log: the device runs, unsealed, and says so
    shutil.copy(tmp_path / "other" / "audit.seal", tmp_path / "audit.seal")
    assert audit_sealer(tmp_path) is None and "the audit log is NOT sealed this run" in caplog.text


def test_a_linked_sealing_key_leaves_the_device_running_unsealed(tmp_path, caplog):
    """The sealing key is read without following links; a link there must not stop the device from starting:
    it runs unsealed, says so, and `edge doctor` shows why."""
    from edge.device.wiring import audit_sealer

    (tmp_path / "elsewhere").mkdir()
    new_keys(tmp_path / "elsewhere", "cam-a")
    (tmp_path / "audit.seal").symlink_to(tmp_path / "elsewhere" / "audit.seal")
    assert audit_sealer(tmp_path) is None
    assert "the audit log is NOT sealed this run" in caplog.text and "symbolic link" in caplog.text
