"""The review console (edge/operator/console.py) driven in-process through Starlette's TestClient: sign-in and its
rate limit, the access rules (303 / 401 / 403), the two-reviewer rule, the audit trail and the case export,
retention purge, the security headers, and the `edge console` command."""

import io
import re
import shutil
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge import audit as edge_audit
from edge.audit import AuditLog, tail, verify
from edge.cli import main
from edge.messaging.payloads import make_event
from edge.operator.accounts import Accounts
from edge.operator.console import create_app
from edge.operator.event_store import EventStore

with warnings.catch_warnings():  # starlette 1.x prefers httpx2 for its TestClient; httpx is what we install
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

USERS = {"alice": "reviewer", "bob": "reviewer", "sue": "supervisor", "ada": "admin"}
LABELS = {"subj-1": "Jane Example", "subj-2": "John Sample"}


def password(name: str) -> str:
    return f"{name}-correct-horse"


def new_event(seq: int, subject: str = "subj-1", device: str = "cam-01", **extra) -> dict:
    fields = dict(device_id=device, captured_at=time.time() - 60, subject_id=subject, watchlist_id="patrol",
                  watchlist_version=7, embedder_id="dlib_resnet_v1_int8", similarity=0.712, threshold=0.655,
                  margin=0.081, track_id=3, chips_used=4, quality={"face_px": 112, "sharpness": 0.83, "yaw": 4.5})
    fields.update(extra)
    return make_event(seq=seq, **fields)


@pytest.fixture(scope="module")
def users_db(tmp_path_factory):
    """A store holding USERS, copied into each test (argon2 hashing takes ~0.15 s a user)."""
    path = tmp_path_factory.mktemp("users") / "events.db"
    store = EventStore(path)
    for name, role in USERS.items():
        Accounts(store.db).add_user(name, password(name), role)
    store.close()
    return path


def make_console(tmp_path: Path, users_db: Path, retention_days=30.0, labels=LABELS, thumbnail_key=None,
                 demographics=None, references=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    shutil.copy(users_db, tmp_path / "events.db")
    store = EventStore(tmp_path / "events.db")
    accounts = Accounts(store.db)
    audit = AuditLog(tmp_path / "console-audit.log")
    events = [new_event(i + 1, subject=f"subj-{i % 2 + 1}") for i in range(4)]
    store.add(events)
    app = create_app(store, accounts, audit, labels, 2, retention_days, thumbnail_key=thumbnail_key,
                     demographics=demographics, references=references)
    return SimpleNamespace(app=app, store=store, accounts=accounts, audit=audit, events=events,
                           ids=[e["event_id"] for e in events])


@pytest.fixture
def console(tmp_path, users_db):
    c = make_console(tmp_path, users_db)
    yield c
    c.audit.close()
    c.store.close()


def login_form(client: TestClient) -> str:
    page = client.get("/login")
    assert page.status_code == 200
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def sign_in(app, name: str, secret: str | None = None, base_url: str = "http://testserver"):
    client = TestClient(app, base_url=base_url, follow_redirects=False)
    resp = client.post("/login", data={"csrf": login_form(client), "username": name,
                                       "password": secret or password(name), "next": "/"})
    return client, resp


def session(app, name: str) -> tuple[TestClient, str]:
    """A signed-in client and its CSRF token."""
    client, resp = sign_in(app, name)
    assert resp.status_code == 303, resp.text
    return client, client.get("/api/me").json()["csrf"]


def decide(client, csrf, event_id, decision, note=""):
    return client.post(f"/api/events/{event_id}/decisions", json={"decision": decision, "note": note},
                       headers={"X-CSRF-Token": csrf})


def pending_ids(client) -> list[str]:
    return [e["event_id"] for e in client.get("/api/events").json()["events"]]


# ------------------------------------------------------------------------------------------------ sign-in


def test_sign_in_sets_a_strict_httponly_session_cookie_and_secure_over_https(console):
    client, resp = sign_in(console.app, "alice")
    assert resp.status_code == 303 and resp.headers["location"] == "/"
    cookie = next(c for c in resp.headers.get_list("set-cookie") if c.startswith("edge_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert client.get("/api/me").json()["username"] == "alice"
    page = client.get("/")
    assert page.status_code == 200 and "alice (reviewer)" in page.text

    _, resp = sign_in(console.app, "bob", base_url="https://testserver")
    cookie = next(c for c in resp.headers.get_list("set-cookie") if c.startswith("edge_session="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie


def test_wrong_password_is_refused_on_the_form_without_a_session(console):
    client, resp = sign_in(console.app, "alice", "not-the-password")
    assert resp.status_code == 401
    assert "wrong user name or password" in resp.text
    assert "edge_session" not in resp.headers.get("set-cookie", "")
    assert client.get("/api/events").status_code == 401
    _, resp = sign_in(console.app, "nobody", "whatever-it-is")
    assert resp.status_code == 401 and "wrong user name or password" in resp.text


def test_sign_in_needs_the_forms_own_token(console):
    client = TestClient(console.app, follow_redirects=False)
    login_form(client)
    resp = client.post("/login", data={"csrf": "forged-token-forged-token-forged-token-xx",
                                       "username": "alice", "password": password("alice")})
    assert resp.status_code == 403 and "the sign-in form has expired" in resp.text
    fresh = TestClient(console.app, follow_redirects=False)  # no pre-session cookie at all
    resp = fresh.post("/login", data={"csrf": "x" * 43, "username": "alice", "password": password("alice")})
    assert resp.status_code == 403


def test_sign_in_is_rate_limited_after_five_failures(console):
    client = TestClient(console.app, follow_redirects=False)
    csrf = login_form(client)
    for _ in range(5):
        resp = client.post("/login", data={"csrf": csrf, "username": "bob", "password": "wrong-wrong-wrong"})
        assert resp.status_code == 401
    resp = client.post("/login", data={"csrf": csrf, "username": "bob", "password": password("bob")})
    assert resp.status_code == 429
    assert "too many failed sign-ins: wait a few minutes" in resp.text
    assert "edge_session" not in resp.headers.get("set-cookie", "")


def test_after_sign_in_only_a_local_next_is_followed(console):
    client = TestClient(console.app, follow_redirects=False)
    csrf = login_form(client)
    resp = client.post("/login", data={"csrf": csrf, "username": "alice", "password": password("alice"),
                                       "next": "//evil.example/phish"})
    assert resp.headers["location"] == "/"
    client2 = TestClient(console.app, follow_redirects=False)
    resp = client2.post("/login", data={"csrf": login_form(client2), "username": "alice",
                                        "password": password("alice"), "next": "/devices"})
    assert resp.headers["location"] == "/devices"


def test_logout_needs_csrf_and_ends_the_session(console):
    client, csrf = session(console.app, "alice")
    assert client.post("/logout", data={}).status_code == 403
    resp = client.post("/logout", data={"csrf": csrf})
    assert resp.status_code == 303 and resp.headers["location"] == "/login"
    assert client.get("/api/events").status_code == 401


# ------------------------------------------------------------------------------------------- access rules


@pytest.mark.parametrize("path", ["/", "/devices", "/watchlists", "/admin", "/events/{id}"])
def test_pages_redirect_to_sign_in_without_a_session(console, path):
    client = TestClient(console.app, follow_redirects=False)
    path = path.format(id=console.ids[0])
    resp = client.get(path)
    assert resp.status_code == 303
    assert resp.headers["location"].startswith("/login?next=")


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/events"), ("GET", "/api/devices"), ("GET", "/api/watchlists"), ("GET", "/api/me"),
    ("GET", "/api/events/{id}"), ("GET", "/api/events/{id}/decisions"), ("GET", "/api/events/{id}/case"),
    ("POST", "/api/events/{id}/decisions"), ("POST", "/api/admin/purge")])
def test_the_api_answers_401_without_a_session(console, method, path):
    client = TestClient(console.app, follow_redirects=False)
    resp = client.request(method, path.format(id=console.ids[0]), json={"decision": "confirm"})
    assert resp.status_code == 401
    assert resp.json() == {"error": "sign in first"}


def test_every_post_needs_the_sessions_csrf_token(console):
    client, csrf = session(console.app, "alice")
    eid = console.ids[0]
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": ""}):
        resp = client.post(f"/api/events/{eid}/decisions", json={"decision": "confirm"}, headers=headers)
        assert resp.status_code == 403
        assert resp.json()["error"] == "missing or wrong CSRF token: reload the page and try again"
    resp = client.post(f"/events/{eid}/decisions", data={"decision": "confirm"})  # the form without its field
    assert resp.status_code == 403 and "missing or wrong CSRF token" in resp.text
    resp = client.post(f"/events/{eid}/decisions", data={"decision": "confirm", "csrf": "wrong"})
    assert resp.status_code == 403
    other, _ = session(console.app, "bob")  # bob's cookie with alice's token
    assert decide(other, csrf, eid, "confirm").status_code == 403
    assert console.store.decisions(eid) == []


def test_roles_export_only_for_supervisors_and_purge_only_for_admins(console):
    alice, a_csrf = session(console.app, "alice")
    sue, s_csrf = session(console.app, "sue")
    ada, _ = session(console.app, "ada")
    eid = console.ids[0]
    assert alice.get(f"/api/events/{eid}/case").json() == {"error": "a reviewer may not export here"}
    assert sue.get(f"/api/events/{eid}/case").status_code == 200
    assert alice.get("/admin").status_code == 403 and sue.get("/admin").status_code == 403
    assert alice.post("/api/admin/purge", headers={"X-CSRF-Token": a_csrf}).status_code == 403
    assert sue.post("/admin/purge", data={"csrf": s_csrf}).status_code == 403
    assert "Purge old events" in ada.get("/admin").text
    assert 'href="/admin"' in ada.get("/").text and 'href="/admin"' not in alice.get("/").text
    assert "Export this case" in sue.get(f"/events/{eid}").text
    assert "Export this case" not in alice.get(f"/events/{eid}").text
    # every role may decide
    for client, token in ((alice, a_csrf), (sue, s_csrf)):
        assert decide(client, token, console.ids[1], "unsure").status_code == 200


# ------------------------------------------------------------------------------------------- review rule


def test_two_different_reviewers_must_confirm(console):
    alice, a_csrf = session(console.app, "alice")
    bob, b_csrf = session(console.app, "bob")
    eid = console.ids[0]
    resp = decide(alice, a_csrf, eid, "confirm", "same face, same scar")
    assert resp.status_code == 200 and resp.json() == {"status": "pending", "confirmations": 1, "required": 2}
    assert eid in pending_ids(alice)
    again = decide(alice, a_csrf, eid, "confirm")
    assert again.status_code == 409
    assert again.json()["error"] == "alice already decided this event (confirm); a second reviewer must"
    page = alice.get(f"/events/{eid}").text
    assert "You decided this event (confirm)" in page and "It needs 1 more confirmation from other reviewers" in page
    resp = decide(bob, b_csrf, eid, "confirm")
    assert resp.json() == {"status": "confirmed", "confirmations": 2, "required": 2}
    assert eid not in pending_ids(bob)
    assert eid in [e["event_id"] for e in bob.get("/api/events?status=confirmed").json()["events"]]
    assert decide(bob, b_csrf, eid, "reject").json()["error"] == f"event {eid} is already confirmed"
    decisions = bob.get(f"/api/events/{eid}/decisions").json()
    assert decisions["status"] == "confirmed" and decisions["confirmations"] == 2
    assert [(d["reviewer"], d["decision"]) for d in decisions["decisions"]] == [("alice", "confirm"),
                                                                                ("bob", "confirm")]
    page = bob.get(f"/events/{eid}").text
    assert 'class="status status-confirmed">confirmed<' in page and "it has left the queue" in page


def test_reject_leaves_the_queue_and_unsure_keeps_the_event(console):
    alice, csrf = session(console.app, "alice")
    rejected, unsure = console.ids[1], console.ids[2]
    assert decide(alice, csrf, rejected, "reject", "different person").json()["status"] == "rejected"
    assert decide(alice, csrf, unsure, "unsure", "too blurred").json()["status"] == "pending"
    queue = pending_ids(alice)
    assert rejected not in queue and unsure in queue
    bob, b_csrf = session(console.app, "bob")  # unsure counts for nothing: two confirmations are still needed
    assert decide(bob, b_csrf, unsure, "confirm").json() == {"status": "pending", "confirmations": 1, "required": 2}


def test_the_decision_form_redirects_back_to_the_event(console):
    alice, csrf = session(console.app, "alice")
    eid = console.ids[3]
    resp = alice.post(f"/events/{eid}/decisions", data={"csrf": csrf, "decision": "confirm", "note": "looks right"})
    assert resp.status_code == 303 and resp.headers["location"] == f"/events/{eid}"
    page = alice.get(f"/events/{eid}").text
    assert "1 of 2 confirmations" in page and "looks right" in page
    resp = alice.post(f"/events/{eid}/decisions", data={"csrf": csrf, "decision": "confirm"})
    assert resp.status_code == 409 and "alice already decided this event" in resp.text


def test_bad_decisions_are_refused_with_their_reason(console):
    alice, csrf = session(console.app, "alice")
    eid = console.ids[0]
    assert decide(alice, csrf, eid, "maybe").json()["error"] == \
        "decision must be one of confirm, reject, unsure, got 'maybe'"
    assert decide(alice, csrf, eid, "confirm", "x" * 2001).json()["error"] == \
        "a note is text of at most 2000 characters"
    resp = decide(alice, csrf, "01900000-0000-7000-8000-000000000000", "confirm")
    assert resp.status_code == 404 and "is not in the store" in resp.json()["error"]
    resp = alice.post(f"/api/events/{eid}/decisions", content=b"not json",
                      headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"})
    assert resp.status_code == 400 and "must be a JSON object" in resp.json()["error"]
    assert console.store.decisions(eid) == []


# ------------------------------------------------------------------------------------------- audit, case


def test_every_decision_is_audited_and_the_chain_verifies(console):
    alice, a_csrf = session(console.app, "alice")
    bob, b_csrf = session(console.app, "bob")
    decide(alice, a_csrf, console.ids[0], "confirm", "note one")
    decide(bob, b_csrf, console.ids[0], "confirm")
    decide(alice, a_csrf, console.ids[1], "reject")
    decide(alice, a_csrf, console.ids[2], "unsure")
    decide(alice, a_csrf, console.ids[2], "confirm")  # refused: not audited
    records = [rec for _, rec, _ in tail(console.audit.path) if rec and rec["kind"] == "review_decision"]
    assert [r["data"] for r in records] == [
        {"event_id": console.ids[0], "reviewer": "alice", "decision": "confirm", "note": "note one",
         "status_after": "pending"},
        {"event_id": console.ids[0], "reviewer": "bob", "decision": "confirm", "note": "", "status_after": "confirmed"},
        {"event_id": console.ids[1], "reviewer": "alice", "decision": "reject", "note": "", "status_after": "rejected"},
        {"event_id": console.ids[2], "reviewer": "alice", "decision": "unsure", "note": "", "status_after": "pending"}]
    result = verify(console.audit.path)
    assert result.ok and result.records == 4, result.problems


def test_case_export_holds_the_event_its_decisions_and_their_audit_records(console):
    alice, a_csrf = session(console.app, "alice")
    bob, b_csrf = session(console.app, "bob")
    sue, _ = session(console.app, "sue")
    eid = console.ids[0]
    decide(alice, a_csrf, eid, "confirm", "first look")
    decide(alice, a_csrf, console.ids[1], "reject")  # another event's record stays out of this case
    decide(bob, b_csrf, eid, "confirm", "second look")
    case = sue.get(f"/api/events/{eid}/case").json()
    assert case["exported_by"] == "sue" and case["required"] == 2
    assert case["event"]["event_id"] == eid and case["event"]["status"] == "confirmed"
    assert case["event"]["event"] == console.events[0]  # the body exactly as received
    assert [(d["reviewer"], d["note"]) for d in case["decisions"]] == [("alice", "first look"), ("bob", "second look")]
    assert [r["data"]["reviewer"] for r in case["audit"]] == ["alice", "bob"]
    assert all(r["data"]["event_id"] == eid and re.fullmatch("[0-9a-f]{64}", r["hash"]) for r in case["audit"])
    assert [r["seq"] for r in case["audit"]] == [1, 3]
    assert case["audit_head"] == console.audit.head() and case["audit_head"]["seq"] == 3
    assert case["audit_chain"] == {"ok": True, "records": 3, "problems": []}
    for rec in case["audit"]:  # each exported record re-hashes to its own hash
        assert edge_audit.record_hash({k: v for k, v in rec.items() if k != "line"}) == rec["hash"]


# ------------------------------------------------------------------------------------------- retention


def test_admin_purge_removes_old_events_and_is_audited(console):
    old = console.ids[0]
    with console.store.db.transaction() as cur:
        cur.execute("UPDATE events SET received_at = ? WHERE event_id = ?", (time.time() - 40 * 86400, old))
    alice, a_csrf = session(console.app, "alice")
    decide(alice, a_csrf, old, "unsure", "kept for the purge to delete")
    ada, csrf = session(console.app, "ada")
    assert ada.post("/admin/purge", data={}).status_code == 403  # admin, but no CSRF token
    resp = ada.post("/admin/purge", data={"csrf": csrf})
    assert resp.status_code == 303 and resp.headers["location"] == "/admin?events=1&decisions=1"
    assert "Purged 1 event(s) and 1 decision(s)" in ada.get(resp.headers["location"]).text
    assert console.store.event(old) is None and console.store.count() == 3
    purge = [rec for _, rec, _ in tail(console.audit.path) if rec and rec["kind"] == "retention_purge"]
    assert len(purge) == 1 and purge[0]["data"]["by"] == "ada" and purge[0]["data"]["events"] == 1
    assert purge[0]["data"]["retention_days"] == 30.0 and purge[0]["data"]["decisions"] == 1
    assert ada.post("/api/admin/purge", headers={"X-CSRF-Token": csrf}).json()["events"] == 0
    assert verify(console.audit.path).ok


def test_purge_without_a_retention_period_is_refused(tmp_path, users_db):
    c = make_console(tmp_path, users_db, retention_days=None)
    ada, csrf = session(c.app, "ada")
    resp = ada.post("/api/admin/purge", headers={"X-CSRF-Token": csrf})
    assert resp.status_code == 409
    assert resp.json()["error"] == "no retention period is set: start the console with --retention-days D"
    assert "No retention period is set" in ada.get("/admin").text and c.store.count() == 4
    c.audit.close()
    c.store.close()


# ------------------------------------------------------------------------------------------- pages


def test_queue_shows_labels_scores_and_confirmations_newest_first(console):
    alice, csrf = session(console.app, "alice")
    decide(alice, csrf, console.ids[0], "confirm")
    data = alice.get("/api/events").json()
    assert data["count"] == 4 and data["required"] == 2
    first = next(e for e in data["events"] if e["event_id"] == console.ids[0])
    assert first["label"] == "Jane Example" and first["confirmations"] == 1
    assert first["text"]["similarity"] == "0.712 vs 0.655 (+0.057)"
    assert first["text"]["quality"] == "face_px 112, sharpness 0.83, yaw 4.5"
    assert first["text"]["watchlist"] == "patrol v7" and first["text"]["confirmations"] == "1 / 2"
    page = alice.get("/").text
    for text in ("Jane Example", "John Sample", "0.712 vs 0.655 (+0.057)", "dlib_resnet_v1_int8", "patrol v7",
                 "1 / 2", "confirmed only after 2 different reviewers confirm"):
        assert text in page
    later = new_event(9, subject="subj-unlisted")
    console.store.add([later])
    data = alice.get(f"/api/events?after={data['latest']}").json()
    assert [e["event_id"] for e in data["events"]] == [later["event_id"]]
    assert data["events"][0]["label"] == "subj-unlisted"  # no name known: the id
    assert alice.get("/api/events?status=bogus").json()["error"].startswith("status must be one of pending")
    assert alice.get("/api/events?limit=nan").status_code == 400


def test_labels_and_event_text_are_escaped(tmp_path, users_db):
    c = make_console(tmp_path, users_db, labels={"subj-1": "<script>alert(1)</script>"})
    alice, _ = session(c.app, "alice")
    page = alice.get("/").text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    c.audit.close()
    c.store.close()


def test_devices_and_watchlists_pages_follow_the_reports(console):
    console.store.device_status("cam-01", True, {"fps": 11.94, "temperature_c": 61.25, "reported_at":
                                                 "2026-01-02T03:04:05Z", "gauges": {"frames_dropped": 17,
                                                                                     "outbox_depth": 3}})
    console.store.device_watchlist("cam-01", 7, "installed", None)
    console.store.device_status("cam-02", False, {})
    console.store.device_watchlist("cam-02", 6, "rejected", "signature does not verify")
    alice, _ = session(console.app, "alice")
    devices = {d["device_id"]: d for d in alice.get("/api/devices").json()["devices"]}
    assert devices["cam-01"]["state"] == "online" and devices["cam-01"]["fps"] == 11.9
    assert devices["cam-01"]["frames_dropped"] == 17 and devices["cam-01"]["outbox_depth"] == 3
    assert devices["cam-01"]["temperature_c"] == 61.2 and devices["cam-02"]["state"] == "offline"
    page = alice.get("/devices").text
    for text in ("cam-01", "2026-01-02T03:04:05Z", "11.9", "61.2 °C", "v7", "signature does not verify"):
        assert text in page
    versions = alice.get("/api/watchlists").json()["versions"]
    assert [(v["version"], [d["device_id"] for d in v["devices"]]) for v in versions] == [(7, ["cam-01"]),
                                                                                          (6, ["cam-02"])]
    assert "Version 7" in alice.get("/watchlists").text


def test_watchlists_page_shows_group_false_match_rates_at_each_versions_threshold(tmp_path, users_db):
    """The events of version 7 say its threshold (0.655) and embedder; the embedder's demographic summary gives each
    group's rate there, a group without a false match is not estimable, and a ratio past 3× is a warning."""
    grid = [0.6, 0.65, 0.7]
    summary = {"thresholds": grid, "source": "synthetic summary", "groups": {
        "group a": {"faces": 9, "pairs": 100_000, "false": [90, 50, 10]},
        "group b": {"faces": 9, "pairs": 100_000, "false": [20, 10, 5]},
        "tiny": {"faces": 2, "pairs": 1, "false": [0, 0, 0]}}}
    c = make_console(tmp_path, users_db, demographics={"dlib_resnet_v1_int8": summary})
    try:
        c.store.device_watchlist("cam-01", 7, "installed", None)
        c.store.device_watchlist("cam-02", 8, "installed", None)  # no event from v8 yet
        alice, _ = session(c.app, "alice")
        versions = {v["version"]: v for v in alice.get("/api/watchlists").json()["versions"]}
        v7 = versions[7]
        assert v7["threshold"] == 0.655 and v7["embedder_id"] == "dlib_resnet_v1_int8"
        assert v7["groups"]["group a"]["rate"] == 5e-4 and v7["groups"]["group b"]["rate"] == 1e-4
        assert v7["groups"]["tiny"]["estimable"] is False and "5.0×" in v7["warning"]
        assert versions[8]["threshold"] is None and versions[8]["groups"] is None
        page = alice.get("/watchlists").text
        for text in ("Match threshold 0.6550", "5.00e-04", "not estimable", "differ 5.0× between groups",
                     "never per-group thresholds", "No event from this version yet"):
            assert text in page, text
    finally:
        c.audit.close()
        c.store.close()


def test_security_headers_and_nonce_only_scripts(console):
    alice, _ = session(console.app, "alice")
    for path in ("/", "/login", f"/events/{console.ids[0]}", "/api/events", "/devices"):
        resp = alice.get(path)
        csp = resp.headers["content-security-policy"]
        assert resp.headers["x-frame-options"] == "DENY" and resp.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        nonce = re.search(r"script-src 'nonce-([^']+)'", csp).group(1)
        for tag in re.findall(r"<(?:script|style)\b[^>]*>", resp.text):
            assert f'nonce="{nonce}"' in tag, tag
    assert "<script nonce=" in alice.get("/").text  # the queue polls
    templates = Path(__file__).resolve().parent.parent / "edge" / "operator" / "templates"
    for path in templates.glob("*.html"):
        assert not re.search(r"\son[a-z]+\s*=", path.read_text()), f"{path.name} has an inline event handler"
        assert 'style="' not in path.read_text(), f"{path.name} has an inline style"


def test_the_app_refuses_a_confirmation_count_the_store_does_not_apply(tmp_path):
    store = EventStore(tmp_path / "e.db", required_confirmations=2)
    audit = AuditLog(tmp_path / "a.log")
    with pytest.raises(Exception, match="the console shows 3 required confirmations but the store applies 2"):
        create_app(store, Accounts(store.db), audit, {}, 3, None)
    audit.close()
    store.close()


# ------------------------------------------------------------------------------------------- the command


def run(capsys, *argv, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "192.168.1.20:8080", "[::]:8080", "console.example:443"])
def test_console_refuses_a_non_loopback_listen_without_allow_remote(tmp_path, capsys, listen):
    code, _, err = run(capsys, "console", "--store", tmp_path / "events.db", "--listen", listen)
    assert code == 1
    assert err == (f"edge: error: --listen {listen} is not a loopback address and the console speaks plain HTTP:"
                   " put it behind a TLS reverse proxy on this host, or pass --allow-remote if you did\n")
    assert not (tmp_path / "events.db").exists()


def test_console_command_wires_store_labels_and_listen(tmp_path, capsys, monkeypatch):
    served = {}

    class FakeServer:
        def __init__(self, app, host, port, trusted_proxies=None):
            served.update(app=app, host=host, port=port, trusted_proxies=trusted_proxies)

        def run(self):
            served["ran"] = True

    monkeypatch.setattr("edge.operator.console.server", FakeServer)
    code, out, _ = run(capsys, "console", "--store", f"sqlite://{tmp_path}/events.db", "--listen", "0.0.0.0:9000",
                       "--allow-remote", "--confirmations", "3", "--retention-days", "90")
    assert code == 0 and served["ran"] and (served["host"], served["port"]) == ("0.0.0.0", 9000)
    assert served["trusted_proxies"] is None  # forwarded headers believed from nobody unless --trust-proxy
    assert f"audit log {tmp_path}/console-audit.log" in out and "3 confirmation(s) confirm an event" in out
    assert "no users yet: add one with `edge console user add NAME --role admin" in out
    code, _, err = run(capsys, "console", "--store", tmp_path / "events.db", "--listen", "localhost")
    assert code == 1 and "expected HOST:PORT, e.g. 127.0.0.1:8080" in err
    code, _, err = run(capsys, "console", "--listen", "127.0.0.1:9000")
    assert code == 1 and "--store is required" in err


def test_user_add_reads_the_password_from_stdin_and_is_audited(tmp_path, capsys, monkeypatch):
    db = tmp_path / "ops" / "events.db"
    code, out, err = run(capsys, "console", "user", "add", "carol", "--role", "supervisor", "--password-stdin",
                         "--store", db, stdin="a long enough secret\n", monkeypatch=monkeypatch)
    assert code == 0, err
    assert out == f"added supervisor carol; the audit log {tmp_path}/ops/console-audit.log records it\n"
    code, out, _ = run(capsys, "console", "--store", db, "user", "list")  # --store before the action works too
    assert code == 0 and re.search(r"carol\s+supervisor\s+no", out) and "1 user(s)" in out
    records = [rec for _, rec, _ in tail(tmp_path / "ops" / "console-audit.log") if rec]
    assert [(r["kind"], r["data"]) for r in records] == [("user_add", {"username": "carol", "role": "supervisor"})]
    store = EventStore(db)
    assert Accounts(store.db).login("carol", "a long enough secret")[1].role == "supervisor"
    store.close()

    code, _, err = run(capsys, "console", "user", "add", "carol", "--role", "admin", "--password-stdin", "--store",
                       db, stdin="another long secret\n", monkeypatch=monkeypatch)
    assert code == 1 and err == "edge: error: user 'carol' exists\n"
    code, _, err = run(capsys, "console", "user", "add", "dave", "--role", "reviewer", "--password-stdin", "--store",
                       db, stdin="short\n", monkeypatch=monkeypatch)
    assert code == 1 and err == "edge: error: a password needs at least 10 characters\n"
    code, _, err = run(capsys, "console", "user", "add", "dave", "--role", "reviewer", "--store", db, stdin="",
                       monkeypatch=monkeypatch)
    assert code == 1 and "no terminal to ask for the password on: pipe it in with --password-stdin" in err
    with pytest.raises(SystemExit):  # no way to pass a password on the command line
        main(["console", "user", "add", "dave", "--role", "reviewer", "--password", "x" * 12, "--store", str(db)])
    with pytest.raises(SystemExit):
        main(["console", "user", "add", "dave", "--role", "root", "--password-stdin", "--store", str(db)])
    capsys.readouterr()


def test_user_add_is_refused_while_a_console_holds_the_audit_log(tmp_path, capsys, monkeypatch):
    db = tmp_path / "events.db"
    held = AuditLog(tmp_path / "console-audit.log")
    code, _, err = run(capsys, "console", "user", "add", "erin", "--role", "reviewer", "--password-stdin",
                       "--store", db, stdin="a long enough secret\n", monkeypatch=monkeypatch)
    held.close()
    assert code == 1 and "is already open for writing" in err
    store = EventStore(db)
    assert Accounts(store.db).users() == []  # refused before the user existed
    store.close()


@pytest.mark.parametrize("body,why", [
    (b"[" * 60_000, "nested deeper than 4 levels"),  # issue 22 row 4: was a 500 and a RecursionError traceback
    (b'{"decision": {"a": {"b": {"c": {"d": 1}}}}}', "nested deeper than 4 levels"),
    (b'{"decision": "reject", "decision": "confirm"}', "duplicate key: decision"),  # the last one won silently
    (b'{"decision": "confirm", "note": "\xff"}', "not valid JSON"),
    (b'{"decision": ', "not valid JSON"),
    (b'"[[[[[[[[[[["', "must be a JSON object"),  # brackets inside a string are not nesting
])
def test_hostile_json_bodies_get_400_never_500(console, body, why):
    """Every JSON body the console parses has a depth limit, refuses duplicate keys and bad UTF-8 with a 400 naming
    the cause; the event is untouched and the console keeps serving."""
    client, csrf = session(console.app, "alice")
    resp = client.post(f"/api/events/{console.ids[0]}/decisions", content=body,
                       headers={"X-CSRF-Token": csrf, "content-type": "application/json"})
    assert resp.status_code == 400 and why in resp.text, (resp.status_code, resp.text[:200])
    assert console.store.decisions(console.ids[0]) == []
    assert decide(client, csrf, console.ids[0], "confirm").status_code == 200


def test_forwarded_headers_are_believed_only_from_named_proxies():
    """Issue 22 row 5: uvicorn believed X-Forwarded-For from 127.0.0.1 by default, so a local client rotating it
    escaped the per-address sign-in limit. Now nobody is believed unless named."""
    from edge.cli.console import _trusted_proxies
    from edge.errors import DataError
    from edge.operator.console import server

    cfg = server(None, "127.0.0.1", 0).config
    assert cfg.proxy_headers is False and cfg.forwarded_allow_ips in ("", [])
    cfg = server(None, "127.0.0.1", 0, trusted_proxies=_trusted_proxies("127.0.0.1, ::1")).config
    assert cfg.proxy_headers is True and "127.0.0.1" in str(cfg.forwarded_allow_ips)
    with pytest.raises(DataError, match="not an IP address"):
        _trusted_proxies("proxy.example")
