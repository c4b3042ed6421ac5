"""The console refuses request bodies over its limit before reading them (memory stays bounded)."""

import warnings

from edge.audit import AuditLog
from edge.operator.accounts import Accounts
from edge.operator.console import MAX_BODY, create_app
from edge.operator.event_store import EventStore

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def test_an_oversized_body_is_refused_with_413(tmp_path):
    store = EventStore(tmp_path / "events.db")
    app = create_app(store, Accounts(store.db), AuditLog(tmp_path / "audit.log"), {}, 2, None)
    client = TestClient(app)
    big = "x" * (MAX_BODY + 1)
    resp = client.post("/login", content=f"username={big}&password=y", headers={
        "content-type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 413 and f"request body over {MAX_BODY} bytes" in resp.text
    resp = client.post("/login", content=b"username=a&password=b", headers={
        "content-type": "application/x-www-form-urlencoded", "content-length": "not-a-number"})
    assert resp.status_code in (400, 413)
    assert client.get("/login").status_code == 200  # the console still serves
    store.close()
