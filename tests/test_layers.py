"""The architecture as a test: which package may import which, and which module owns each library (README,
"Architecture"). Reads every module's imports with `ast` (function-local imports included); imports nothing."""

import ast
from functools import lru_cache
from pathlib import Path

import pytest

EDGE = Path(__file__).resolve().parent.parent / "edge"
GROUND = "ground"
#: package → the packages it may import (besides itself). Ground is the shared floor: types, config, keys, audit…
ALLOWED = {
    GROUND: set(),
    "vision": {GROUND},
    "watchlist": {GROUND, "vision"},
    "messaging": {GROUND},
    "device": {GROUND, "vision", "watchlist", "messaging"},
    "operator": {GROUND, "vision", "watchlist", "messaging"},
    # evaluation measures both ends (bench-sync runs devices against the operator's fleet ACL); nothing imports it
    # but the cli
    "evaluation": {GROUND, "vision", "watchlist", "messaging", "device", "operator"},
    "cli": {GROUND, "vision", "watchlist", "messaging", "device", "operator", "evaluation"},
}
#: third-party library → the only modules that may import it ("dir/": every module of that package)
OWNERS = {
    "paho": {"messaging/mqtt.py"},
    "annoy": {"watchlist/index.py"},
    # the watchlist bundle: device-side verify/unseal/local bundles, the operator's seal (edge/watchlist/frame.py, the
    # format they share, has no cryptography)
    "cryptography": {"keys.py", "device/provision.py", "watchlist/device/verify.py", "watchlist/device/unseal.py",
                     "watchlist/device/local.py", "watchlist/operator/seal.py"},
    "picamera2": {"device/capture/picamera.py"},
    "libcamera": {"device/capture/picamera.py"},
    "ai_edge_litert": {"vision/runtime.py"},
    "tflite_runtime": {"vision/runtime.py"},
    "psycopg": {"operator/db.py"},
    "argon2": {"operator/accounts.py"},
    "fastapi": {"operator/console/"},
    "starlette": {"operator/console/"},
    "jinja2": {"operator/console/app.py", "operator/console/base.py"},
    "uvicorn": {"operator/console/app.py"},
}


def _package(rel: str) -> str:
    if rel == "__main__.py":  # `python -m edge` is the CLI
        return "cli"
    head = rel.split("/")[0]
    return head if head in ALLOWED and "/" in rel else GROUND


@lru_cache(maxsize=None)
def _imports(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "edge":  # `from edge import keys` names modules
                found.update(f"edge.{alias.name}" for alias in node.names)
    return frozenset(found)


MODULES = sorted(p.relative_to(EDGE).as_posix() for p in EDGE.rglob("*.py"))


def _target(module: str) -> str | None:
    """The package of an `edge.…` module name (None for `edge` itself and its __version__)."""
    parts = module.split(".")
    if parts[0] != "edge" or len(parts) == 1:
        return None
    return parts[1] if parts[1] in ALLOWED and len(parts) > 2 or (EDGE / parts[1]).is_dir() else GROUND


@pytest.mark.parametrize("rel", MODULES)
def test_imports_point_down_only(rel):
    own = _package(rel)
    bad = sorted(m for m in _imports(EDGE / rel)
                 if (t := _target(m)) is not None and t != own and t not in ALLOWED[own])
    assert not bad, f"edge/{rel} ({own}) imports {bad}; {own} may import only {sorted(ALLOWED[own]) or 'ground'}"


def test_device_and_operator_never_import_each_other_and_only_cli_imports_both():
    both = []
    for rel in MODULES:
        targets = {_target(m) for m in _imports(EDGE / rel)}
        if {"device", "operator"} <= targets:
            both.append(rel)
    assert all(rel.startswith("cli/") for rel in both), both


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_each_library_has_one_owner(library):
    users = {rel for rel in MODULES if any(m == library or m.startswith(library + ".") for m in _imports(EDGE / rel))}
    owners = OWNERS[library]
    strays = sorted(u for u in users
                    if u not in owners and not any(o.endswith("/") and u.startswith(o) for o in owners))
    assert not strays, f"{library} imported by {strays}"


def test_no_module_is_long_without_saying_why():
    long = []
    for rel in MODULES:
        text = (EDGE / rel).read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > 420 and "lines:" not in doc.lower():
            long.append(f"{rel} ({text.count(chr(10))} lines)")
    assert not long, f"modules over ~400 lines need a 'Lines: <reason>' sentence in their docstring: {long}"


def test_the_cli_runs_on_a_device_without_the_operator_extras():
    """A unit installs only the core dependencies: `edge --version`, `--help` of every command and `edge doctor`'s
    parser must not import the console's or the PostgreSQL driver's libraries."""
    import subprocess
    import sys

    code = ("import sys\n"
            "for m in ('argon2', 'fastapi', 'starlette', 'jinja2', 'uvicorn', 'psycopg', 'amqtt', 'playwright'):\n"
            "    sys.modules[m] = None  # any import of them now fails\n"
            "from edge.cli.main import build_parser, main\n"
            "assert main(['--version']) == 0\n"
            "build_parser().parse_args(['doctor'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
