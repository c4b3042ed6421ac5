"""The architecture as a test: which package may import which, and which module owns each library (README,
"Architecture"). Reads every module's imports with `ast` (function-local imports included); imports nothing."""

import ast
import json
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
    "cryptography": {"keys.py", "watchlist/bundle.py", "device/provision.py"},
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


# ------------------------------------------------------------------------------------------------- import cycles

#: Cycles through function-local imports that are known and owned elsewhere: each entry must still be a cycle (so
#: the list cannot outlive the cycle it excuses). Module-level cycles are never allowed.
KNOWN_LOCAL_CYCLES = [{"edge.device.doctor", "edge.device.state_checks"}]


def _module_name(rel: str) -> str:
    parts = rel[:-len(".py")].split("/")
    return ".".join(["edge", *(parts[:-1] if parts[-1] == "__init__" else parts)])


NAMES = {_module_name(rel): rel for rel in MODULES}


def _module_level(tree: ast.Module):
    """The import statements that run when the module is imported: top level, and inside top-level `if`/`try`
    blocks, but not `if TYPE_CHECKING:` (never runs) nor function or class bodies' functions (run when called)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            stack += node.body + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody + [n for h in node.handlers for n in h.body]
        elif isinstance(node, ast.ClassDef):
            stack += [n for n in node.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _edge_targets(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The edge modules an import statement loads: `from edge.cli import audit` names the module edge.cli.audit,
    `from edge.audit import verify` the module edge.audit. (Importing edge.a.b also runs edge/a/__init__.py; a
    package's __init__ importing its own submodules is not counted as a cycle.)"""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in NAMES}
    if node.level or not node.module:
        return set()
    return {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in NAMES else node.module
            for a in node.names} & NAMES.keys()


@lru_cache(maxsize=None)
def _graph(module_level_only: bool) -> dict[str, frozenset[str]]:
    graph = {}
    for name, rel in NAMES.items():
        tree = ast.parse((EDGE / rel).read_text(), rel)
        nodes = _module_level(tree) if module_level_only else ast.walk(tree)
        graph[name] = frozenset(t for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom))
                                for t in _edge_targets(n) if t != name)
    return graph


def _cycles(graph: dict[str, frozenset[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_the_cycle_finder_finds_cycles():
    graph = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset({"a"}),
             "e": frozenset({"e"})}
    assert _cycles(graph) == [{"a", "b", "c"}]


def test_no_import_cycle_at_module_level():
    """What runs at import time has no cycle: no module can see a half-initialised one, whichever is imported
    first. Imports inside functions run later, when every module is complete, and are allowed to point back (the
    CLI defers heavy imports that way); the next test still keeps them from tying modules together."""
    cycles = _cycles(_graph(module_level_only=True))
    assert not cycles, f"module-level import cycles: {[sorted(c) for c in cycles]}"


def test_no_import_cycle_even_through_function_local_imports_but_the_known_ones():
    cycles = _cycles(_graph(module_level_only=False))
    new = [sorted(c) for c in cycles if c not in KNOWN_LOCAL_CYCLES]
    gone = [sorted(c) for c in KNOWN_LOCAL_CYCLES if c not in cycles]
    assert not new, f"import cycles (function-local imports included): {new}; move what both need to a module " \
                    "both import"
    assert not gone, f"no longer cycles, remove them from KNOWN_LOCAL_CYCLES: {gone}"


def test_the_commands_that_touch_no_image_run_without_opencv(tmp_path):
    """OpenCV is imported only by the commands that decode or measure images: `python -m edge --help`, `edge keys`,
    `edge fleet` and `edge console --help` run where `import cv2` fails (an operator's host without it)."""
    import subprocess
    import sys

    no_cv2 = "import sys\nsys.modules['cv2'] = None  # `import cv2` now raises ImportError\n"
    as_module = no_cv2 + "import runpy\nsys.argv = ['edge', '--help']\nrunpy.run_module('edge', run_name='__main__')\n"
    proc = subprocess.run([sys.executable, "-c", as_module], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage: edge" in proc.stdout, proc.stderr[-2000:]

    commands = [["keys", "--help"], ["keys", "generate", "device", "--out", str(tmp_path / "keys")],
                ["keys", "generate", "operator", "--out", str(tmp_path / "keys")],
                ["fleet", "--help"], ["fleet", "add", "cam-a", "--key", str(tmp_path / "keys" / "device.pub"),
                                      "--group", "lobby", "--fleet", str(tmp_path / "fleet.json")],
                ["fleet", "list", "--fleet", str(tmp_path / "fleet.json")],
                ["fleet", "acl", "--fleet", str(tmp_path / "fleet.json")],
                ["console", "--help"], ["watchlist", "build", "--help"]]
    code = no_cv2 + ("import json\nfrom edge.cli.main import main\n"
                     f"for argv in json.loads({json.dumps(json.dumps(commands))}):\n"
                     "    try:\n"
                     "        code = main(argv)\n"
                     "    except SystemExit as stop:  # --help\n"
                     "        code = stop.code\n"
                     "    assert code == 0, (argv, code)\n"
                     "assert sys.modules['cv2'] is None\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
