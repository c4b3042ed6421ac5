"""The hash-chained audit log: round trip, every kind of tampering named by line, power-cut recovery, CLI."""

import argparse
import json
import os
import stat
import threading

import pytest

from edge import audit
from edge.cli import audit as cli_audit
from edge.audit import AuditError, AuditLog, line_bytes, record_hash, verify
from edge.audit_record import digest
from edge.errors import EdgeError
from fakes import FakeClock


def make_log(path, n=12):
    with AuditLog(path, clock=FakeClock(1_700_000_000.0, step=0.5)) as log:
        log.append("start", {"version": "0.1.0"})
        for i in range(2, n + 1):
            log.append("match", {"subject_id": f"s{i}", "similarity": 0.7 + i / 100, "track_id": i})
    return path


def lines_of(path):
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path, lines):
    path.write_bytes(b"".join(lines))


def problems(path, **kw):
    return [p["problem"] for p in verify(path, **kw).problems]


# --- writing -------------------------------------------------------------------------------------------------

def test_round_trip_fields_chain_and_mode(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, clock=lambda: 1_700_000_000.25) as log:
        first = log.append("start", {"version": "0.1.0"})
        second = log.append("watchlist_install", {"version": 7, "sha256": "ab" * 32})
        head = log.head()
    assert first == {"seq": 1, "at": "2023-11-14T22:13:20.250Z", "kind": "start", "data": {"version": "0.1.0"},
                     "prev": "0" * 64, "hash": record_hash(first)}
    raw = lines_of(path)
    assert raw[0] == line_bytes(first) + b"\n" and raw[0].startswith(b'{"seq":1,"at":')
    assert second["seq"] == 2 and second["prev"] == digest(raw[0][:-1])
    assert head == {"seq": 2, "hash": second["hash"], "line_sha256": digest(raw[1][:-1])}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    result = verify(path)
    assert result.ok and result.records == 2 and result.problems == [] and result.notices == []
    assert result.head["seq"] == 2 and result.head["hash"] == second["hash"]


def test_reopen_continues_the_chain(tmp_path):
    path = make_log(tmp_path / "audit.jsonl", n=3)
    with AuditLog(path) as log:
        assert log.notice is None and log.head()["seq"] == 3
        assert log.append("stop", {"reason": "SIGTERM"})["seq"] == 4
    assert verify(path).ok and verify(path).records == 4


def test_loose_mode_is_tightened_to_0600(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    AuditLog(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_bad_kind_and_unencodable_data_write_nothing(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        with pytest.raises(AuditError, match=r"unknown audit record kind 'recovered'; expected one of: match, "):
            log.append("recovered", {})
        with pytest.raises(AuditError, match=r"audit record of kind 'match' cannot be encoded as JSON: Out of range"
                                             r" float values"):
            log.append("match", {"similarity": float("nan")})
        with pytest.raises(AuditError, match="cannot be encoded as JSON: Object of type bytes"):
            log.append("config", {"blob": b"x"})
        with pytest.raises(AuditError, match="cannot be encoded as JSON: '<' not supported"):
            log.append("config", {1: "a", "b": 2})  # mixed key types cannot be sorted
        assert log.append("config", {"changed": ["policy.threshold"]})["seq"] == 1
        assert log.append("config", {2: ("a", "b")})["data"] == {"2": ["a", "b"]}  # returned as written
    assert verify(path).ok and verify(path).records == 2


def test_one_writer_per_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path):
        with pytest.raises(AuditError, match="is already open for writing"):
            AuditLog(path)
    AuditLog(path).close()  # the lock goes with the writer


def test_concurrent_appends_keep_the_chain_valid(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    seqs: list[int] = []

    def worker(k: int) -> None:
        for i in range(40):
            seqs.append(log.append("match", {"thread": k, "i": i})["seq"])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert sorted(seqs) == list(range(1, 321))
    result = verify(path)
    assert result.ok and result.records == 320, result.problems


def test_refuses_to_append_to_a_file_that_is_not_an_audit_log(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text("device_id: cam-1\nmqtt:\n  host: broker\n")
    with pytest.raises(AuditError, match=f"{path} is not an audit log \\(none of its 3 lines is an audit record\\);"
                                         " point the audit log at another file"):
        AuditLog(path)
    assert path.read_text() == "device_id: cam-1\nmqtt:\n  host: broker\n"


def test_append_after_close_is_refused(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.close()
    with pytest.raises(AuditError, match="is closed"):
        log.append("stop", {})


# --- tampering -----------------------------------------------------------------------------------------------

def test_edited_record_is_named_by_line(tmp_path):
    path = make_log(tmp_path / "audit.jsonl")
    lines = lines_of(path)
    rec = json.loads(lines[6])
    rec["data"]["subject_id"] = "someone-else"
    lines[6] = line_bytes(rec) + b"\n"
    write_lines(path, lines)
    assert problems(path) == ["line 7: record seq 7 was edited (hash mismatch)"]  # no knock-on report for line 8


def test_edit_with_recomputed_hash_breaks_the_next_link(tmp_path):
    path = make_log(tmp_path / "audit.jsonl")
    lines = lines_of(path)
    rec = json.loads(lines[4])
    rec["data"]["similarity"] = 0.99
    rec["hash"] = record_hash(rec)
    lines[4] = line_bytes(rec) + b"\n"
    write_lines(path, lines)
    assert problems(path) == ["line 6: record seq 6 does not link to seq 5 at line 5 (prev hash mismatch): seq 5 was"
                              " altered and its hash recomputed, or replaced"]


def test_reformatted_line_counts_as_an_edit(tmp_path):
    path = make_log(tmp_path / "audit.jsonl", n=4)
    lines = lines_of(path)
    lines[3] = json.dumps(json.loads(lines[3]), indent=None).encode() + b"\n"  # same content, spaces added
    write_lines(path, lines)
    assert problems(path) == ["line 4: record seq 4 was edited (its line is not as the log wrote it)"]


def test_deleted_record(tmp_path):
    path = make_log(tmp_path / "audit.jsonl")
    lines = lines_of(path)
    write_lines(path, lines[:8] + lines[9:])
    assert problems(path) == ["line 9: seq jumps from 8 to 10 (a record was deleted)"]
    write_lines(path, lines[:3] + lines[6:])
    assert problems(path) == ["line 4: seq jumps from 3 to 7 (3 records were deleted)"]
    write_lines(path, lines[2:])
    assert problems(path) == ["line 1: the log starts at seq 3 (2 records were deleted from the start)"]


def test_reordered_records(tmp_path):
    path = make_log(tmp_path / "audit.jsonl")
    lines = lines_of(path)
    write_lines(path, lines[:3] + [lines[4], lines[3]] + lines[5:])
    found = problems(path)
    assert len(found) == 1 and "records were reordered" in found[0]
    assert found[0] in ("line 4: record seq 5 is out of order (after seq 3; records were reordered)",
                        "line 5: record seq 4 is out of order (after seq 5; records were reordered)")
    write_lines(path, [lines[10]] + lines[:10] + lines[11:])  # one record moved to the front
    assert problems(path) == ["line 1: record seq 11 is out of order (at the start; records were reordered)"]


def test_inserted_records(tmp_path):
    path = make_log(tmp_path / "audit.jsonl")
    lines = lines_of(path)
    # A forged record that claims seq 6 and links correctly to seq 5; the genuine seq 6 follows it.
    forged = json.loads(lines[5])
    forged["data"]["subject_id"] = "forged"
    forged["hash"] = record_hash(forged)
    write_lines(path, lines[:5] + [line_bytes(forged) + b"\n"] + lines[5:])
    assert problems(path) == ["line 6: record seq 6 was inserted (seq 6 is already at line 7)"]
    # A copy of an earlier record pasted later.
    write_lines(path, lines[:9] + [lines[2]] + lines[9:])
    assert problems(path) == ["line 10: record seq 3 was inserted (seq 3 is already at line 3)"]
    # A made-up record with a seq of its own that links to nothing.
    made_up = {"seq": 40, "at": "2023-11-14T22:13:20.000Z", "kind": "match", "data": {}, "prev": "1" * 64}
    made_up["hash"] = record_hash(made_up)
    write_lines(path, lines[:4] + [line_bytes(made_up) + b"\n"] + lines[4:])
    assert problems(path) == ["line 5: record seq 40 was inserted (after seq 4; it links to no record before it)"]
    # Hand-written text.
    write_lines(path, lines[:4] + [b"all good here\n"] + lines[4:])
    assert problems(path) == ["line 5: not a valid audit record (garbled text); a line inserted or damaged after it"
                              " was written"]


def test_cut_off_tail_needs_an_expected_head(tmp_path):
    path = make_log(tmp_path / "audit.jsonl")
    with AuditLog(path) as log:
        head = log.head()
    lines = lines_of(path)
    write_lines(path, lines[:-2])  # whole lines removed: the chain alone cannot tell
    assert verify(path).ok
    assert problems(path, expected_head=(head["seq"], head["hash"])) == [
        "line 10: the log ends at seq 10 but seq 12 was written (records were cut off the end)"]
    write_lines(path, lines)
    assert verify(path, expected_head=(head["seq"], head["hash"][:12])).ok
    assert verify(path, expected_head=(head["seq"], head["line_sha256"])).ok
    assert problems(path, expected_head=(12, "deadbeef")) == [
        "line 12: record seq 12 is not the one recorded earlier (hash differs)"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(AuditError, match=f"audit log not found: {tmp_path / 'nope.jsonl'}"):
        verify(tmp_path / "nope.jsonl")


def test_empty_log_is_ok(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.touch()
    result = verify(path)
    assert result.ok and result.records == 0 and result.head is None


# --- power cuts ----------------------------------------------------------------------------------------------

def test_truncated_last_line_is_recovered_not_tampering(tmp_path):
    path = make_log(tmp_path / "audit.jsonl", n=5)
    data = path.read_bytes()
    cut = data[:-40]  # the last write (seq 5) was cut off mid-line
    path.write_bytes(cut)
    fragment_offset = cut.rfind(b"\n") + 1
    before = verify(path)
    assert before.ok and before.records == 4
    assert [n["notice"] for n in before.notices] == [
        "line 5: the last write was cut off (%d bytes, no newline), e.g. by a power cut; the next append will record"
        " its recovery" % (len(cut) - fragment_offset)]

    with AuditLog(path) as log:
        assert log.notice.startswith(f"audit log {path}: the last write was cut off")
        assert log.head()["seq"] == 4
        rec = log.append("start", {"after": "power cut"})
    assert rec["seq"] == 6
    assert path.read_bytes().startswith(cut)  # nothing already written is moved or rewritten
    lines = lines_of(path)
    recovered = json.loads(lines[5])
    assert recovered["kind"] == "recovered" and recovered["seq"] == 5
    assert recovered["data"] == {"reason": "truncated final line", "offset": fragment_offset,
                                 "bytes": len(cut) - fragment_offset, "after_seq": 4,
                                 "sha256": digest(cut[fragment_offset:])}
    after = verify(path)
    assert after.ok and after.records == 6 and after.problems == []
    assert [n["notice"] for n in after.notices] == [
        f"line 5: {len(cut) - fragment_offset} bytes of a write cut off by a crash or power cut (after seq 4);"
        " recovered by seq 5 at line 6"]
    with AuditLog(path) as log:  # and the log reopens cleanly afterwards
        assert log.notice is None and log.append("stop", {})["seq"] == 7
    assert verify(path).ok


def test_truncated_first_record(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"seq":1,"at":"2023-')
    with AuditLog(path) as log:
        assert log.append("start", {})["seq"] == 2
    result = verify(path)
    assert result.ok and result.records == 2 and "recovered by seq 1 at line 2" in result.notices[0]["notice"]


def test_record_that_lost_only_its_newline_is_completed(tmp_path):
    path = make_log(tmp_path / "audit.jsonl", n=3)
    path.write_bytes(path.read_bytes()[:-1])
    assert verify(path).ok and "the last record has no newline" in verify(path).notices[0]["notice"]
    with AuditLog(path) as log:
        assert log.notice is None and log.append("stop", {})["seq"] == 4
    result = verify(path)
    assert result.ok and result.records == 4 and result.notices == []


def test_a_changed_fragment_is_tampering(tmp_path):
    path = make_log(tmp_path / "audit.jsonl", n=3)
    path.write_bytes(path.read_bytes()[:-30])
    with AuditLog(path) as log:
        log.append("stop", {})
    lines = lines_of(path)
    lines[2] = lines[2][:-5] + b"XXXX\n"
    write_lines(path, lines)
    assert problems(path) == ["line 3: the cut-off write recorded by seq 3 at line 4 was changed afterwards"]


def test_failed_write_is_recovered_by_the_next_append(tmp_path, monkeypatch):
    path = make_log(tmp_path / "audit.jsonl", n=2)
    real = audit._write_all

    def half_then_enospc(fd, data):
        real(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    log = AuditLog(path)
    monkeypatch.setattr(audit, "_write_all", half_then_enospc)
    with pytest.raises(AuditError, match=f"audit log {path} cannot be written: No space left on device"):
        log.append("match", {"subject_id": "x"})
    monkeypatch.setattr(audit, "_write_all", real)
    assert log.append("match", {"subject_id": "x"})["seq"] == 4  # seq 3 is the recovery record
    log.close()
    result = verify(path)
    assert result.ok and result.records == 4 and len(result.notices) == 1


# --- CLI -----------------------------------------------------------------------------------------------------

def run(capsys, *argv):
    """Like `edge.cli.main` for the audit commands (the lead wires add_parsers into cli.py)."""
    parser = argparse.ArgumentParser(prog="edge")
    cli_audit.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    try:
        code = args.func(args)
    except EdgeError as err:
        print(f"edge: error: {err}", file=__import__("sys").stderr)
        code = 1
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_verify_ok_and_failures(capsys, tmp_path):
    path = make_log(tmp_path / "audit.jsonl")
    assert run(capsys, "audit", "verify", path) == (0, "OK: 12 records, chain intact\n", "")
    code, out, _ = run(capsys, "audit", "verify", path, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True and doc["records"] == 12 and doc["problems"] == []
    assert {"ok", "records", "problems"} <= doc.keys()

    lines = lines_of(path)
    rec = json.loads(lines[6])
    rec["data"]["track_id"] = 0
    lines[6] = line_bytes(rec) + b"\n"
    write_lines(path, lines[:8] + lines[9:])
    code, out, _ = run(capsys, "audit", "verify", path)
    assert code == 1
    assert out.splitlines() == ["line 7: record seq 7 was edited (hash mismatch)",
                                "line 9: seq jumps from 8 to 10 (a record was deleted)",
                                f"FAILED: 2 problems in {path} (11 records)"]
    code, out, _ = run(capsys, "audit", "verify", path, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and doc["records"] == 11
    assert doc["problems"] == [{"line": 7, "problem": "line 7: record seq 7 was edited (hash mismatch)"},
                               {"line": 9, "problem": "line 9: seq jumps from 8 to 10 (a record was deleted)"}]


def test_cli_verify_recovered_truncation_and_expect_head(capsys, tmp_path):
    path = make_log(tmp_path / "audit.jsonl", n=4)
    path.write_bytes(path.read_bytes()[:-10])
    AuditLog(path).append("stop", {})
    code, out, _ = run(capsys, "audit", "verify", path)
    assert code == 0
    assert out.splitlines()[0] == "OK: 5 records, chain intact (1 recovered truncation)"
    assert out.splitlines()[1].startswith("note: line 4: ")
    code, out, _ = run(capsys, "audit", "verify", path, "--expect-head", "9")
    assert code == 1 and "the log ends at seq 5 but seq 9 was written" in out
    with pytest.raises(SystemExit):
        run(capsys, "audit", "verify", path, "--expect-head", "x:y")
    assert "expected SEQ or SEQ:HASH, got 'x:y'" in capsys.readouterr().err


def test_cli_verify_missing_file(capsys, tmp_path):
    code, out, err = run(capsys, "audit", "verify", tmp_path / "nope.jsonl")
    assert code == 1 and out == ""
    assert err == f"edge: error: audit log not found: {tmp_path / 'nope.jsonl'}\n"


def test_cli_show(capsys, tmp_path):
    path = make_log(tmp_path / "audit.jsonl", n=5)
    code, out, _ = run(capsys, "audit", "show", path, "--last", "2")
    shown = out.splitlines()
    assert code == 0 and len(shown) == 2
    assert shown[0].startswith("#4      2023-11-14T22:13:22.000Z  match")
    assert shown[1].endswith('{"similarity": 0.75, "subject_id": "s5", "track_id": 5}')
    code, out, _ = run(capsys, "audit", "show", path, "--json")
    assert [json.loads(x)["seq"] for x in out.splitlines()] == [1, 2, 3, 4, 5]
    path.write_bytes(path.read_bytes() + b"garbage")
    code, out, _ = run(capsys, "audit", "show", path, "--last", "1")
    assert out == "line 6: unreadable (7 bytes)\n"
