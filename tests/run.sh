#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need on a fresh Debian/Ubuntu machine — the
# mosquitto broker the MQTT tests start, a C++ compiler for annoy's wheel build, PostgreSQL for the store tests,
# Debian's chromium for the console's browser tests, systemd-analyze for the units' exposure scores — then
# the venv, then ruff, mypy and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v g++ >/dev/null || need+=(g++)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)  # the store tests' throwaway cluster
command -v chromium >/dev/null || need+=(chromium)                          # the console's browser tests
command -v systemd-analyze >/dev/null || need+=(systemd)                    # the units' exposure scores
python3 -c "import ensurepip" 2>/dev/null || need+=(python3-venv)
python3 -c "import os, sysconfig; raise SystemExit(not os.path.exists(sysconfig.get_paths()['include'] + '/Python.h'))" \
  || need+=(python3-dev)  # annoy compiles against it
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
python3 -m venv .venv
.venv/bin/pip install -q -e '.[dev]'
.venv/bin/ruff check edge tools tests   # rules in pyproject.toml: a finding fails the run
.venv/bin/mypy                          # the package; --strict flags on the pure cores (pyproject.toml)
export EDGE_CHECK_MODEL_MARKERS=1        # a test opening a model file must be marked `models` (tests/markers.py)
exec .venv/bin/python -m pytest -q "$@"
