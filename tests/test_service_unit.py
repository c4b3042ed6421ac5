"""systemd/edge.service hardening (DESIGN.md §7), the operator's units (edge-consume@.service, edge-console.service)
held to the same bar, and systemd/install.sh / uninstall.sh (device and --operator) into a staged root."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "edge.service"
CONSUME = REPO / "systemd" / "edge-consume@.service"
CONSOLE = REPO / "systemd" / "edge-console.service"
OPERATOR_ENV = REPO / "systemd" / "edge-operator.env"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}: systemd allows repeated keys, so configparser does not fit."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    # A line ending in a backslash continues on the next one (systemd joins them with a space).
    for raw in path.read_text().replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path}: not a unit line: {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT)["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    assert key in service, f"edge.service lacks {key}="
    return service[key][-1]


EXPECTED = {
    "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30", "Restart": "on-failure", "RestartSec": "5",
    "User": "edge", "Group": "edge", "StateDirectory": "edge", "StateDirectoryMode": "0700",
    "ConfigurationDirectory": "edge", "ExecStart": "/opt/edge/venv/bin/edge run --config /etc/edge/edge.yaml",
    "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
    "DevicePolicy": "closed", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
    "SystemCallArchitectures": "native", "LimitCORE": "0", "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes",
    "ProtectHostname": "yes", "RestrictNamespaces": "yes", "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "UMask": "0077", "KeyringMode": "private",
    "RemoveIPC": "yes", "ProtectProc": "invisible", "PrivateUsers": "no",
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_unit_key(service, key):
    assert one(service, key) == EXPECTED[key], f"edge.service: {key}={one(service, key)!r}, want {EXPECTED[key]!r}"


def test_unit_lists(service):
    assert "@system-service" in service["SystemCallFilter"], "SystemCallFilter=@system-service missing"
    assert "video" in one(service, "SupplementaryGroups").split()
    assert "char-video4linux rw" in service["DeviceAllow"]
    creds = dict(v.split(":", 1) for v in service["LoadCredential"])
    assert creds["device.key"] == "/etc/edge/credentials/device.key" and "tls.key" in creds
    families = set(one(service, "RestrictAddressFamilies").split())
    assert families <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} and {"AF_INET", "AF_UNIX"} <= families
    assert parse_unit(UNIT)["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize("unit", [UNIT, CONSUME, CONSOLE], ids=lambda u: u.name)
def test_systemd_analyze_exposure(unit):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        # The keys are still asserted; only the score cannot be computed without systemd installed (tests/run.sh
        # installs it).
        pytest.skip("systemd-analyze is not installed (apt-get install systemd): exposure score not checked; "
                    "the hardening keys are asserted by test_unit_key/test_unit_lists/test_operator_unit")
    out = subprocess.run([exe, "security", "--offline=true", "--no-pager", str(unit)], capture_output=True,
                         text=True, timeout=60)
    # a template is scored as an instance of it: edge-consume@i.service
    m = re.search(r"Overall exposure level for (\S+): ([0-9.]+)", out.stdout + out.stderr)
    assert m, f"no exposure score in systemd-analyze output:\n{out.stdout}\n{out.stderr}"
    assert m.group(1) == unit.name.replace("@.", "@i."), m.group(1)
    assert float(m.group(2)) <= 2.0, f"{unit.name}: exposure {m.group(2)} > 2.0:\n{out.stdout}"


# --- the operator's units ---------------------------------------------------------------------------------------
#: What both operator units share: the user, the state and config directories, restart, and edge.service's
#: hardening plus what a service without camera or supplementary groups can also have (PrivateDevices,
#: PrivateUsers, ProcSubset=pid).
OPERATOR_EXPECTED = {
    "Type": "exec", "Restart": "on-failure", "User": "edge-operator", "Group": "edge-operator",
    "StateDirectory": "edge-operator", "StateDirectoryMode": "0700", "ConfigurationDirectory": "edge-operator",
    "WorkingDirectory": "/var/lib/edge-operator", "EnvironmentFile": "/etc/edge-operator/operator.env",
    "PrivateDevices": "yes", "PrivateUsers": "yes", "ProcSubset": "pid",
    **{k: v for k, v in EXPECTED.items() if k not in {
        "Type", "NotifyAccess", "WatchdogSec", "RestartSec", "User", "Group", "StateDirectory", "StateDirectoryMode",
        "ConfigurationDirectory", "ExecStart", "PrivateUsers"}},
}


def env_file() -> dict[str, str]:
    return dict(line.split("=", 1) for line in OPERATOR_ENV.read_text().splitlines()
                if line.strip() and not line.startswith("#"))


def command(service: dict[str, list[str]], instance: str = "operator") -> list[str]:
    """ExecStart as the edge CLI will see it: the env file's variables, %i and %d (the credentials) substituted."""
    import shlex

    env = env_file()
    line = one(service, "ExecStart").replace("%i", instance).replace("%d", "/run/credentials/x")
    line = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], line)
    words = []
    for word in shlex.split(line):  # an unbraced $VAR alone is split into words (systemd.service, Command lines)
        words += env[word[1:]].split() if re.fullmatch(r"\$\w+", word) else [word]
    assert words[0] == "/opt/edge/venv/bin/edge", words
    return words[1:]


@pytest.mark.parametrize("unit", [CONSUME, CONSOLE], ids=lambda u: u.name)
def test_operator_unit(unit):
    service = parse_unit(unit)["Service"]
    for key, want in OPERATOR_EXPECTED.items():
        assert one(service, key) == want, f"{unit.name}: {key}={one(service, key)!r}, want {want!r}"
    assert "@system-service" in service["SystemCallFilter"]
    assert set(one(service, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "SupplementaryGroups" not in service and "DeviceAllow" not in service
    assert parse_unit(unit)["Install"]["WantedBy"] == ["multi-user.target"]
    # the command line is one the installed CLI accepts (an option renamed would fail the unit at start)
    from edge.cli.main import build_parser

    args = build_parser().parse_args(command(service))
    creds = dict(v.split(":", 1) for v in service["LoadCredential"])
    if unit is CONSUME:
        assert args.func.__name__ == "cmd_events_consume"
        assert creds == {"tls.key": "/etc/edge-operator/credentials/%i.key"}
        assert str(args.key) == "/run/credentials/x/tls.key" and str(args.cert) == "/etc/edge-operator/tls/operator.crt"
        assert args.client_id == "operator" and args.store == env_file()["EDGE_STORE"]
        assert one(service, "RestartPreventExitStatus").split() == ["1", "2"]  # a configuration that cannot work
        assert "IPAddressDeny" not in service  # the broker and the database may be anywhere
    else:
        assert args.func.__name__ == "cmd_console"
        assert creds == {"evidence.key": "/etc/edge-operator/credentials/evidence.key"}
        assert str(args.thumbnail_key) == "/run/credentials/x/evidence.key"
        assert str(args.audit) == "/var/lib/edge-operator/console-audit.log"  # in the StateDirectory
        assert args.trust_proxy == "127.0.0.1" and not args.allow_remote
        from edge.cli.console import is_loopback, parse_listen

        assert is_loopback(parse_listen(args.listen)[0])
        assert one(service, "IPAddressDeny") == "any" and one(service, "IPAddressAllow") == "localhost"
        # a database down at start is exit 1: restarted every RestartSec, never given up on
        assert one(service, "RestartPreventExitStatus") == "2"
        assert parse_unit(unit)["Unit"]["StartLimitIntervalSec"] == ["0"]


# --- install.sh / uninstall.sh into a staged root --------------------------------------------------------------
def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) + ("/" if p.is_dir() and not p.is_symlink() else "") for p in root.rglob("*")}


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EDGE_INSTALL_SKIP_PIP="1", PYTHON=sys.executable)
    r = subprocess.run(["sh", str(REPO / "systemd" / name), *args], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, f"{name} {args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


@pytest.mark.models  # the installer copies models/
def test_install_then_uninstall_staged(tmp_path):
    root = tmp_path / "root"
    r = run_script("install.sh", "--root", str(root), "--profile", "pi5", "--no-systemctl")
    assert "would: useradd" in r.stdout and "would: systemctl enable edge.service" in r.stdout
    assert (root / "etc/systemd/system/edge.service").read_bytes() == UNIT.read_bytes()
    assert (root / "etc/edge/edge.yaml").read_bytes() == (REPO / "firmware-config/profiles/pi5.yaml").read_bytes()
    assert (root / "etc/edge/credentials").stat().st_mode & 0o777 == 0o700
    assert (root / "opt/edge/venv/bin/python").exists()
    models = root / "opt/edge/venv/share/edge/models"  # edge/paths.py: sys.prefix/share/edge/models
    assert (models / "manifest.json").exists() and list(models.glob("*.tflite"))
    # Every file the manifest names is installed (the landmark model is numpy arrays, not a .tflite).
    manifest = json.loads((models / "manifest.json").read_text())
    assert all((models / m["file"]).is_file() for m in manifest["models"].values())
    first = tree(root)

    # idempotent: a second run changes nothing and keeps an edited config
    (root / "etc/edge/edge.yaml").write_text("# edited\n")
    run_script("install.sh", "--root", str(root), "--profile", "pi5", "--no-systemctl")
    assert tree(root) == first and (root / "etc/edge/edge.yaml").read_text() == "# edited\n"

    # state the service would have written
    (root / "var/lib/edge/keys").mkdir(parents=True)
    (root / "var/lib/edge/keys/device.key").write_text("secret")
    r = run_script("uninstall.sh", "--root", str(root), "--keep-data", "--no-systemctl")
    assert "would: userdel edge" in r.stdout
    assert tree(root) == {"etc/", "etc/systemd/", "etc/systemd/system/", "opt/", "var/", "var/lib/",
                          "var/lib/edge/", "var/lib/edge/keys/", "var/lib/edge/keys/device.key"}

    run_script("uninstall.sh", "--root", str(root), "--no-systemctl")  # again, without --keep-data
    assert not any(p.is_file() for p in root.rglob("*")), sorted(tree(root))


@pytest.mark.models  # the installer copies models/
def test_install_operator_then_uninstall_staged(tmp_path):
    root = tmp_path / "root"
    r = run_script("install.sh", "--operator", "--root", str(root), "--no-systemctl")
    assert "would: useradd" in r.stdout and " edge-operator" in r.stdout
    assert "would: systemctl enable edge-consume@operator.service edge-console.service" in r.stdout
    assert "would: install -d -o edge-operator -g edge-operator -m 0700 /var/lib/edge-operator" in r.stdout
    units = root / "etc/systemd/system"
    assert sorted(p.name for p in units.iterdir()) == ["edge-console.service", "edge-consume@.service"]
    assert (units / "edge-consume@.service").read_bytes() == CONSUME.read_bytes()
    assert (units / "edge-console.service").read_bytes() == CONSOLE.read_bytes()
    etc = root / "etc/edge-operator"
    assert (etc / "operator.env").read_bytes() == OPERATOR_ENV.read_bytes()
    assert (etc / "credentials").stat().st_mode & 0o777 == 0o700 and (etc / "tls").is_dir()
    assert not (root / "etc/edge").exists()  # nothing of the device's side
    assert (root / "opt/edge/venv/bin/python").exists()
    assert (root / "opt/edge/venv/share/edge/models/manifest.json").exists()  # the console's demographics
    for missing in ("tls/ca.crt", "tls/operator.crt", "credentials/operator.key", "credentials/evidence.key"):
        assert f"put {missing} in" in r.stdout
    first = tree(root)

    (etc / "operator.env").write_text("EDGE_STORE=postgresql://edge@db/edge\n")  # the operator's own settings
    run_script("install.sh", "--operator", "--root", str(root), "--no-systemctl")
    assert tree(root) == first and (etc / "operator.env").read_text() == "EDGE_STORE=postgresql://edge@db/edge\n"

    (root / "var/lib/edge-operator").mkdir(parents=True)
    (root / "var/lib/edge-operator/events.db").write_text("store")
    r = run_script("uninstall.sh", "--operator", "--root", str(root), "--keep-data", "--no-systemctl")
    assert "would: userdel edge-operator" in r.stdout
    assert tree(root) == {"etc/", "etc/systemd/", "etc/systemd/system/", "opt/", "var/", "var/lib/",
                          "var/lib/edge-operator/", "var/lib/edge-operator/events.db"}
    run_script("uninstall.sh", "--operator", "--root", str(root), "--no-systemctl")
    assert not any(p.is_file() for p in root.rglob("*")), sorted(tree(root))


@pytest.mark.models  # the installer copies models/
def test_device_and_operator_on_one_host_keep_the_shared_venv_until_both_are_gone(tmp_path):
    root = tmp_path / "root"
    run_script("install.sh", "--root", str(root), "--profile", "x86", "--no-systemctl")
    run_script("install.sh", "--operator", "--root", str(root), "--no-systemctl")
    run_script("uninstall.sh", "--operator", "--root", str(root), "--no-systemctl")
    assert (root / "opt/edge/venv/bin/python").exists() and (root / "etc/systemd/system/edge.service").exists()
    run_script("install.sh", "--operator", "--root", str(root), "--no-systemctl")
    run_script("uninstall.sh", "--root", str(root), "--no-systemctl")
    assert (root / "opt/edge/venv/bin/python").exists() and (root / "etc/systemd/system/edge-console.service").exists()
    run_script("uninstall.sh", "--operator", "--root", str(root), "--no-systemctl")
    assert not any(p.is_file() for p in root.rglob("*")), sorted(tree(root))


def test_install_operator_refuses_a_device_profile(tmp_path):
    env = dict(os.environ, EDGE_INSTALL_SKIP_PIP="1", PYTHON=sys.executable)
    r = subprocess.run(["sh", str(REPO / "systemd/install.sh"), "--operator", "--root", str(tmp_path), "--profile",
                        "pi5"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "--operator installs the operator's side" in r.stderr


@pytest.mark.models  # the installer copies models/
def test_install_rejects_unknown_profile(tmp_path):
    env = dict(os.environ, EDGE_INSTALL_SKIP_PIP="1", PYTHON=sys.executable)
    r = subprocess.run(["sh", str(REPO / "systemd/install.sh"), "--root", str(tmp_path), "--profile", "nope"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "no profile" in r.stderr
