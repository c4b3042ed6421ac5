"""The review console in a real browser: `edge console` served by uvicorn in a subprocess on a free loopback port,
driven by Debian's Chromium through Playwright (never a downloaded browser). Covers what only a browser shows: the
cookies and forms working together, the CSP letting the queue's own script poll (and nothing else), a fetch without
the CSRF header refused, two reviewers in separate browser contexts."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edge.evaluation.loopback_broker import free_port

from edge.messaging.payloads import make_event
from edge.operator.accounts import Accounts
from edge.operator.event_store import EventStore

CHROMIUM = Path("/usr/bin/chromium")
PASSWORDS = {"alice": "alice-correct-horse", "bob": "bob-correct-horse"}

pytestmark = pytest.mark.slow


def event(seq: int, subject: str, similarity: float) -> dict:
    return make_event(seq=seq, device_id="cam-north-2", captured_at=time.time() - 300 + seq, subject_id=subject,
                      watchlist_id="patrol", watchlist_version=12, embedder_id="dlib_resnet_v1_int8+hse_faceres",
                      similarity=similarity, threshold=0.655, margin=0.07, track_id=40 + seq, chips_used=5,
                      quality={"face_px": 96 + seq, "sharpness": 0.74, "yaw": -6.0}, category="missing person")


@pytest.fixture
def served(tmp_path):
    """`edge console` on a free loopback port over a store with three events and two reviewers."""
    db = tmp_path / "events.db"
    store = EventStore(db)
    accounts = Accounts(store.db)
    for name, secret in PASSWORDS.items():
        accounts.add_user(name, secret, "reviewer")
    events = [event(1, "subj-0001", 0.702), event(2, "subj-0002", 0.688), event(3, "subj-0001", 0.731)]
    store.add(events)
    store.device_status("cam-north-2", True, {"fps": 14.8, "temperature_c": 58.0, "reported_at": "2026-01-01T10:00:00Z",
                                              "gauges": {"frames_dropped": 2, "outbox_depth": 0}})
    store.device_watchlist("cam-north-2", 12, "installed", None)
    build = tmp_path / "build"
    build.mkdir()
    (build / "meta.json").write_text(json.dumps({"subjects": {"id": ["subj-0001", "subj-0002"],
                                                              "label": ["Ana Lima", "Bo Berg"]}}))
    port = free_port()
    log = open(tmp_path / "console.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "console", "--store", str(db), "--listen",
                             f"127.0.0.1:{port}", "--watchlist", str(build), "--confirmations", "2"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(base + "/login", timeout=2) as resp:
                if resp.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail(f"edge console did not come up:\n{(tmp_path / 'console.log').read_text()}")
        time.sleep(0.1)
    try:
        yield {"base": base, "store": store, "ids": [e["event_id"] for e in events], "audit": tmp_path /
               "console-audit.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        store.close()


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests drive Debian's chromium (apt-get install chromium);"
                    " nothing may download a browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def new_page(browser, errors: list, refused: list):
    """A page in a new context (its own cookies); script errors and CSP violations go to `errors`, responses of
    400 and above to `refused` (the browser also logs those as console errors)."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15000)
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: refused.append((r.status, r.url.split("/", 3)[3])) if r.status >= 400 else None)
    return context, page


def sign_in(page, base: str, name: str) -> None:
    page.goto(base + "/")
    assert "/login?next=" in page.url  # no session yet: the queue sends us to sign in
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORDS[name])
    page.click("form.login button[type=submit]")
    page.wait_for_url(base + "/")
    assert page.inner_text("#whoami") == f"{name} (reviewer)"


def decide(page, base: str, event_id: str, decision: str, note: str = "") -> None:
    page.goto(f"{base}/events/{event_id}")
    page.check(f"#decide input[value={decision}]")
    if note:
        page.fill("#decide textarea[name=note]", note)
    page.click("#decide button[type=submit]")
    page.wait_for_url(f"{base}/events/{event_id}")


def test_two_reviewers_in_the_browser(served, browser):
    from playwright.sync_api import expect

    base, first, second, third = served["base"], *served["ids"]
    errors: list[str] = []
    refused: list[tuple[int, str]] = []

    ctx_a, a = new_page(browser, errors, refused)
    sign_in(a, base, "alice")
    rows = a.locator("#queue-body tr[data-event-id]")
    expect(rows).to_have_count(3)
    expect(a.locator(f'tr[data-event-id="{first}"]')).to_contain_text("Ana Lima")
    expect(a.locator(f'tr[data-event-id="{first}"]')).to_contain_text("0.702 vs 0.655 (+0.047)")
    expect(a.locator(".rule")).to_contain_text("confirmed only after 2 different reviewers confirm")
    decide(a, base, first, "confirm", "same person as the bulletin photo")
    expect(a.locator("#event-status")).to_have_text("pending")
    expect(a.locator("#event-confirmations")).to_have_text("1 of 2 confirmations")
    expect(a.locator("#mine")).to_contain_text("You decided this event (confirm)")
    a.screenshot(path="/tmp/console-event.png", full_page=True)
    a.goto(base + "/")
    expect(a.locator(f'tr[data-event-id="{first}"]')).to_contain_text("1 / 2")
    a.click("#logout")
    a.wait_for_url(base + "/login")
    ctx_a.close()

    ctx_b, b = new_page(browser, errors, refused)
    sign_in(b, base, "bob")
    decide(b, base, first, "confirm")
    expect(b.locator("#event-status")).to_have_text("confirmed")
    expect(b.locator("#decided")).to_contain_text("it has left the queue")
    expect(b.locator("#decisions")).to_contain_text("same person as the bulletin photo")
    decide(b, base, second, "reject", "not him")
    expect(b.locator("#event-status")).to_have_text("rejected")
    b.goto(base + "/")
    expect(b.locator("#queue-body tr[data-event-id]")).to_have_count(1)
    expect(b.locator(f'tr[data-event-id="{third}"]')).to_have_count(1)

    # live: a new event appears without a reload (the page's own script polls /api/events)
    late = event(4, "subj-0002", 0.745)
    served["store"].add([late])
    expect(b.locator(f'tr[data-event-id="{late["event_id"]}"]')).to_contain_text("Bo Berg", timeout=15000)
    expect(b.locator("#queue-updated")).to_contain_text("live: updated")
    expect(b.locator("#queue-count")).to_have_text("2")
    expect(b.locator('.tabs a[data-status="pending"]')).to_have_text("pending (2)")
    b.screenshot(path="/tmp/console-queue.png", full_page=True)

    # a script on the page without the CSRF header is refused; with the page's token it is allowed
    status = b.evaluate("""async (id) => (await fetch(`/api/events/${id}/decisions`, {method: "POST",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify({decision: "confirm"})})).status""", third)
    assert status == 403
    result = b.evaluate("""async (id) => (await fetch(`/api/events/${id}/decisions`, {method: "POST",
        headers: {"Content-Type": "application/json",
                  "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content},
        body: JSON.stringify({decision: "unsure", note: "from the API"})})).json()""", third)
    assert result == {"status": "pending", "confirmations": 0, "required": 2}
    ctx_b.close()

    ctx_c, c = new_page(browser, errors, refused)  # a fresh context has no session
    c.goto(base + "/devices")
    assert c.url == base + "/login?next=/devices"
    expect(c.locator("form.login")).to_be_visible()
    response = c.request.get(base + "/api/events")
    assert response.status == 401
    ctx_c.close()

    assert not errors, errors  # no CSP violation, no script error
    assert set(refused) == {(403, f"api/events/{third}/decisions")}, refused  # no 404 (the favicon is served)
    records = [json.loads(line) for line in served["audit"].read_text().splitlines()]
    assert [(r["data"]["reviewer"], r["data"]["decision"], r["data"]["status_after"]) for r in records] == [
        ("alice", "confirm", "pending"), ("bob", "confirm", "confirmed"), ("bob", "reject", "rejected"),
        ("bob", "unsure", "pending")]


@pytest.fixture(scope="module")
def demo_events(tmp_path_factory, models):
    """The work directory a real `edge demo` run leaves (the clip, the pipeline, MQTT, the consumer): the event
    store, the operator's evidence key, the build with the enrolled faces."""
    work = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, "-m", "edge", "demo", "--workdir", str(work), "--no-console"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "EDGE_MODELS_DIR": str(models)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "EVENT demo-cam #1" in proc.stdout
    assert "evidence: each event carries the track's best face chip(s) as JPEG sealed to the operator's" in proc.stdout
    return work


def faces_on_the_event_page(page, base: str, event_id: str) -> dict[str, list[bytes]]:
    """The captured and enrolled faces the event page shows, after checking each one loaded in the browser; their
    bytes fetched with the page's own session."""
    from playwright.sync_api import expect

    page.goto(f"{base}/events/{event_id}")
    faces: dict[str, list[bytes]] = {}
    for kind in ("captured", "reference"):
        images = page.locator(f"#evidence img.face.{kind}")
        expect(images.first).to_be_visible()
        faces[kind] = []
        for i in range(images.count()):
            img = images.nth(i)
            page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=img.element_handle())
            assert (img.get_attribute("width"), img.get_attribute("height")) == ("160", "160")  # the same size
            response = page.request.get(base + img.get_attribute("src"))
            assert response.status == 200 and response.headers["content-type"] in ("image/jpeg", "image/png")
            assert response.body()[:3] == b"\xff\xd8\xff" or response.body()[:4] == b"\x89PNG"
            faces[kind].append(response.body())
    expect(page.locator("#score-text")).to_contain_text("over the threshold")
    expect(page.locator("#quality-words")).to_contain_text("px apart")
    return faces


def test_two_reviewers_confirm_an_event_of_a_real_demo_run(demo_events, browser, tmp_path):
    from playwright.sync_api import expect

    work = demo_events
    demo_events = work / "events.db"
    store = EventStore(demo_events)
    accounts = Accounts(store.db)
    for name, secret in PASSWORDS.items():
        accounts.add_user(name, secret, "reviewer")
    (demo_id,) = [e["event_id"] for e in store.queue()][:1]
    assert store.event(demo_id)["event"]["subject_id"] == "obama.jpg"
    store.close()
    port = free_port()
    with open(tmp_path / "console.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edge", "console", "--store", str(demo_events), "--listen",
                                 f"127.0.0.1:{port}", "--audit", str(tmp_path / "audit.log"), "--thumbnail-key",
                                 str(work / "operator" / "evidence.key"), "--watchlist", str(work / "build")],
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/login", timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "console.log").read_text()
                time.sleep(0.1)
        errors: list[str] = []
        refused: list[tuple[int, str]] = []
        ctx_a, a = new_page(browser, errors, refused)
        sign_in(a, base, "alice")
        expect(a.locator(f'tr[data-event-id="{demo_id}"]')).to_contain_text("demo-cam")
        expect(a.locator(f'tr[data-event-id="{demo_id}"] img.face')).to_be_visible()  # the queue's small face
        # the demo device reported: the Devices page shows its figures; the Watchlists page its alert budget
        a.goto(base + "/devices")
        row = a.locator('tr[data-device-id="demo-cam"]')
        expect(row).to_contain_text("online")
        expect(row).to_contain_text("v1")
        assert row.locator("td").nth(3).inner_text() != "-"  # fps
        assert row.locator("td").nth(6).inner_text() == "0"  # outbox depth: everything delivered
        a.goto(base + "/watchlists")
        expect(a.locator('table.budget[data-version="1"] td.predicted')).to_contain_text("upper bound")
        expect(a.locator('table.budget[data-version="1"] td.observed')).to_contain_text("1 event: 0 confirmed")
        seen_by_a = faces_on_the_event_page(a, base, demo_id)
        a.screenshot(path="/tmp/console-demo-event.png", full_page=True)
        decide(a, base, demo_id, "confirm", "matches the watchlist photo")
        expect(a.locator("#event-status")).to_have_text("pending")
        ctx_a.close()
        ctx_b, b = new_page(browser, errors, refused)
        sign_in(b, base, "bob")
        seen_by_b = faces_on_the_event_page(b, base, demo_id)
        assert seen_by_a == seen_by_b and len(seen_by_a["captured"]) >= 1 and len(seen_by_a["reference"]) == 1
        assert not set(seen_by_a["captured"]) & set(seen_by_a["reference"])  # the captured face is not the enrolled
        decide(b, base, demo_id, "confirm")
        expect(b.locator("#event-status")).to_have_text("confirmed")
        b.goto(base + "/watchlists")
        expect(b.locator('table.budget[data-version="1"] td.observed')).to_contain_text("1 event: 1 confirmed, 0 rej")
        b.goto(base + "/")
        expect(b.locator(f'tr[data-event-id="{demo_id}"]')).to_have_count(0)  # it left the queue
        # a forged form post (the right session, a wrong CSRF token) is refused
        response = b.request.post(f"{base}/events/{demo_id}/decisions", form={"decision": "reject", "csrf": "forged"})
        assert response.status == 403
        ctx_b.close()
        assert not errors, errors  # no script error, no CSP violation
        assert refused == [], refused  # no 404 or other refusal on any page, image or favicon
    finally:
        proc.terminate()
        proc.wait(10)
    store = EventStore(demo_events)
    assert store.event(demo_id)["status"] == "confirmed"
    assert [d["reviewer"] for d in store.event(demo_id)["decisions"]] == ["alice", "bob"]
    store.close()
