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
    # OpenCV: the vision stack and the capture sources; besides them only image files (ground, for the CLI, tools
    # and the replay source) and the demo's clip
    "cv2": {"vision/", "device/capture/", "imageio.py", "evaluation/clip.py"},
}
#: The device's side of the watchlist, and the operator's: the device side never imports the operator side.
DEVICE_WATCHLIST, OPERATOR_WATCHLIST = "watchlist/device/", "watchlist/operator/"


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


def _file(module: str) -> str | None:
    """edge/-relative path of an `edge.…` module (a package: its __init__.py), None if it is not one."""
    parts = module.split(".")
    if parts[0] != "edge":
        return None
    path = EDGE.joinpath(*parts[1:])
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if len(parts) > 1 and candidate.is_file():
            return candidate.relative_to(EDGE).as_posix()
    return "__init__.py" if len(parts) == 1 else None


@lru_cache(maxsize=None)
def _tree(rel: str) -> ast.Module:
    """The parsed `edge/<rel>` (each module parsed once for all the checks)."""
    return ast.parse((EDGE / rel).read_text(), rel)


def _top_level(body: list[ast.stmt]):
    """The import statements that run when a module is imported: not in functions, not under TYPE_CHECKING."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            test = node.test
            if getattr(test, "id", None) != "TYPE_CHECKING" and getattr(test, "attr", None) != "TYPE_CHECKING":
                yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _top_level(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _top_level(node.body)


@lru_cache(maxsize=None)
def _module_level(rel: str) -> frozenset[str]:
    """The modules `edge/<rel>` imports when it is imported (`from pkg import mod` names the submodule)."""
    found = set()
    for node in _top_level(_tree(rel).body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if _file(f"{node.module}.{a.name}"))
    return frozenset(found)


def _loads(rel: str, every_import: bool = False) -> tuple[set[str], set[str]]:
    """(the edge modules, the other top-level packages) importing `edge/<rel>` loads, transitively: at import time
    (module level), or with `every_import` through function-local imports too (whatever it may ever load)."""
    edge, other, todo = set(), set(), [rel]
    while todo:
        current = todo.pop()
        if current in edge:
            continue
        edge.add(current)
        names = _imports(EDGE / current) if every_import else _module_level(current)
        for name in names:
            parts = name.split(".")
            if parts[0] != "edge":
                other.add(parts[0])
            # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c
            todo.extend(f for i in range(1, len(parts) + 1) if (f := _file(".".join(parts[:i]))) is not None)
    return edge, other


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


#: Lines a module may have without a reason, and with one ("Lines: …" in its docstring): no exception above the cap.
LONG_LINES, MAX_LINES = 420, 450


def test_no_module_is_long_without_saying_why():
    long, too_long = [], []
    for rel in MODULES:
        text = (EDGE / rel).read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        lines = text.count("\n")
        if lines > MAX_LINES:
            too_long.append(f"{rel} ({lines} lines)")
        elif lines > LONG_LINES and "lines:" not in doc.lower():
            long.append(f"{rel} ({lines} lines)")
    assert not too_long, f"modules over {MAX_LINES} lines must be split, whatever their docstring says: {too_long}"
    assert not long, f"modules over {LONG_LINES} lines need a 'Lines: <reason>' sentence in their docstring: {long}"


def _runs_cleanly(code: str) -> None:
    """Run `code` in a fresh interpreter (so no module is imported yet) and require exit 0."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_cli_runs_on_a_device_without_the_operator_extras():
    """A unit installs only the core dependencies: `edge --version`, `--help` of every command and `edge doctor`'s
    parser must not import the console's or the PostgreSQL driver's libraries."""

    code = ("import sys\n"
            "for m in ('argon2', 'fastapi', 'starlette', 'jinja2', 'uvicorn', 'psycopg', 'amqtt', 'playwright'):\n"
            "    sys.modules[m] = None  # any import of them now fails\n"
            "from edge.cli.main import build_parser, main\n"
            "assert main(['--version']) == 0\n"
            "build_parser().parse_args(['doctor'])\n")
    _runs_cleanly(code)


# ------------------------------------------------------------------------------------------------- import cycles

#: Cycles through function-local imports that are known and owned elsewhere: each entry must still be a cycle (so
#: the list cannot outlive the cycle it excuses). Module-level cycles are never allowed.
KNOWN_LOCAL_CYCLES: list[set[str]] = []


def _module_name(rel: str) -> str:
    parts = rel[:-len(".py")].split("/")
    return ".".join(["edge", *(parts[:-1] if parts[-1] == "__init__" else parts)])


NAMES = {_module_name(rel): rel for rel in MODULES}


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
        tree = _tree(rel)
        nodes = _top_level(tree.body) if module_level_only else ast.walk(tree)
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
    _runs_cleanly(code)


DEVICE_RUNTIME = [rel for rel in MODULES if rel.startswith((DEVICE_WATCHLIST, "device/", "messaging/"))]


@pytest.mark.parametrize("rel", DEVICE_RUNTIME)
def test_the_device_never_loads_the_operators_watchlist_code(rel):
    """Whatever a device-side module may ever import (function-local imports too) holds no module of
    edge/watchlist/operator/ (enrollment, sealing, releases, diffs)."""
    loaded, _ = _loads(rel, every_import=True)
    operator = sorted(m for m in loaded if m.startswith(OPERATOR_WATCHLIST))
    assert not operator, f"edge/{rel} loads the operator's watchlist code: {operator}"


@pytest.mark.parametrize("rel", DEVICE_RUNTIME)
def test_the_device_loads_opencv_only_through_vision_and_capture(rel):
    """Importing a device-side module loads OpenCV only through edge/vision or edge/device/capture (the analyzer
    needs it); the watchlist's device side and messaging never load it at all."""
    loaded, _ = _loads(rel)
    through = sorted(m for m in loaded if "cv2" in _module_level(m))
    assert all(m.startswith(("vision/", "device/capture/")) for m in through), f"edge/{rel} loads cv2 via {through}"
    if rel.startswith((DEVICE_WATCHLIST, "messaging/")):
        assert not through, f"edge/{rel} loads cv2 via {through}"


def test_the_watchlist_device_side_imports_nothing_of_the_operator_side_or_opencv():
    """The same for the watchlist's device side as a whole, function-local imports included, and the closure is
    not vacuous: it reaches the store's whole chain (verify, unseal, policy, the delta, the index)."""
    loaded, other = set(), set()
    for rel in MODULES:
        if rel.startswith(DEVICE_WATCHLIST):
            edge, libs = _loads(rel, every_import=True)
            loaded, other = loaded | edge, other | libs
    assert {"watchlist/device/unseal.py", "watchlist/device/policy.py", "watchlist/delta.py",
            "watchlist/index.py", "install_state.py"} <= loaded
    assert not {m for m in loaded if m.startswith(OPERATOR_WATCHLIST)} and "cv2" not in other
