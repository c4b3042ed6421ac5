"""The console package's own seams (edge/operator/console/): the accounts' typed refusals the sign-in decides its
status by, the one permission function, the route table `create_app` assembles (every URL in its old order), and a
data layer that needs no web framework."""

import ast
from pathlib import Path

import pytest

from edge.audit import AuditLog
from edge.errors import DataError
from edge.operator.accounts import AccountError, Accounts, Session, TooManyAttempts, WrongCredentials
from edge.operator.event_store import EventStore

pytest.importorskip("argon2")
pytest.importorskip("fastapi")

from edge.operator.console import create_app  # noqa: E402 - after the skips: the console needs these
from edge.operator.console.permissions import PERMISSIONS, actions, allowed  # noqa: E402 - likewise

CONSOLE = Path(__file__).resolve().parent.parent / "edge" / "operator" / "console"


def test_sign_in_refusals_are_typed_and_stay_data_errors(tmp_path):
    store = EventStore(tmp_path / "events.db")
    accounts = Accounts(store.db)
    with pytest.raises(AccountError, match="exists") as dup:
        accounts.add_user("alice", "alice-correct-horse")
        accounts.add_user("alice", "alice-correct-horse")
    assert isinstance(dup.value, DataError)
    for _ in range(5):
        with pytest.raises(WrongCredentials):
            accounts.login("alice", "not-the-password", "10.0.0.9")
    with pytest.raises(TooManyAttempts) as limited:  # even with the right password: not checked at all
        accounts.login("alice", "alice-correct-horse", "10.0.0.9")
    assert isinstance(limited.value, AccountError) and isinstance(limited.value, DataError)
    store.close()


@pytest.mark.parametrize("role, may", [("reviewer", ["decide", "view"]), ("supervisor", ["decide", "export", "view"]),
                                       ("admin", ["decide", "export", "purge", "view"])])
def test_one_permission_function_decides_each_roles_actions(role, may):
    me = Session("someone", role, "csrf", 0.0)
    assert actions(me) == may
    assert [a for a in sorted(PERMISSIONS) if allowed(me, a)] == may
    assert not any(allowed(None, a) for a in PERMISSIONS)


def test_create_app_mounts_every_route_in_the_old_order(tmp_path):
    store = EventStore(tmp_path / "events.db")
    app = create_app(store, Accounts(store.db), AuditLog(tmp_path / "audit.log"), {}, 2, None)
    routes = [(sorted(r.methods)[0], r.path) for r in app.routes if getattr(r, "methods", None)]
    assert routes == [
        ("GET", "/login"), ("POST", "/login"), ("POST", "/logout"), ("GET", "/api/me"),
        ("GET", "/"), ("GET", "/api/events"), ("GET", "/events/{event_id}"), ("GET", "/api/events/{event_id}"),
        ("POST", "/events/{event_id}/decisions"), ("GET", "/api/events/{event_id}/decisions"),
        ("POST", "/api/events/{event_id}/decisions"), ("GET", "/api/events/{event_id}/case"),
        ("GET", "/events/{event_id}/{kind}/{n}"), ("GET", "/favicon.ico"), ("GET", "/events/{event_id}/thumbnail"),
        ("GET", "/devices"), ("GET", "/api/devices"), ("GET", "/watchlists"), ("GET", "/api/watchlists"),
        ("GET", "/admin"), ("GET", "/api/admin"), ("POST", "/admin/purge"), ("POST", "/api/admin/purge")]
    store.close()


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("module", ["data.py", "permissions.py"])
def test_the_data_layer_and_the_permissions_need_no_web_framework(module):
    assert not _imports(CONSOLE / module) & {"fastapi", "starlette", "jinja2", "uvicorn"}
    # and importing them through the package loads none either (the package's names load on first use)
    import subprocess
    import sys

    code = (f"import sys, edge.operator.console.{module[:-3]}\n"
            "loaded = {'fastapi', 'starlette', 'jinja2', 'uvicorn'} & set(sys.modules)\n"
            "assert not loaded, loaded\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-1000:]


def test_no_console_module_reaches_400_lines():
    long = {p.name: n for p in CONSOLE.glob("*.py") if (n := p.read_text().count("\n")) >= 400}
    assert not long, long
