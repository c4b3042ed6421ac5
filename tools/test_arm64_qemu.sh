#!/bin/sh
# The appliance on arm64, under emulation (issue 14): correctness, not speed.
#
#   sudo tools/test_arm64_qemu.sh [--root DIR] [--suite bookworm] [--keep]
#
# 1. qemu-user-static + binfmt (the aarch64 handler enabled), then `debootstrap --arch=arm64 --variant=minbase` with
#    python3, python3-venv, python3-dev, g++ (annoy has no wheel: it compiles inside the root).
# 2. The project (git archive HEAD) installed into a venv inside the root; `edge --version`, `edge doctor`.
# 3. tools/parity_dump.py on tests/data/faces inside the root and on the host, then the comparison (box IoU, detector
#    scores, embedding cosines).
# The root gets its own /proc (update-ca-certificates and pip need it) but not /sys: with the host's /proc and /sys
# mounted, XNNPACK's cpuinfo reads the x86 host's CPU description and the interpreter dies under qemu; with /proc only
# it prints three cpuinfo warnings about /sys and works. /proc is unmounted on exit (a mounted /proc left under /tmp
# hangs anything that walks /tmp). Each step prints its time. --keep keeps the root for another run.
set -u
ROOT=/tmp/edge-arm64-root
SUITE=bookworm
KEEP=0
MIRROR=${MIRROR:-http://deb.debian.org/debian}
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=$2; shift ;;
        --suite) SUITE=$2; shift ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
T0=$(date +%s)
step() { echo "== $(( $(date +%s) - T0 )) s: $*"; }
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
cleanup() {
    mountpoint -q "$ROOT/proc" 2>/dev/null && umount -l "$ROOT/proc"
    [ "$KEEP" = 1 ] || rm -rf "$ROOT"
}
trap cleanup EXIT INT TERM

step "qemu-user-static, binfmt-support, debootstrap"
command -v debootstrap >/dev/null && [ -x /usr/bin/qemu-aarch64-static ] || {
    apt-get update -qq && apt-get install -y -qq debootstrap qemu-user-static binfmt-support >/dev/null; }
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "no aarch64 binfmt handler" >&2; exit 1; }
if [ ! -x "$ROOT/usr/bin/python3" ]; then
    step "debootstrap --arch=arm64 $SUITE"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-dev,g++,ca-certificates \
        "$SUITE" "$ROOT" "$MIRROR" >/tmp/edge-arm64-debootstrap.log 2>&1 || { tail -20 /tmp/edge-arm64-debootstrap.log; exit 1; }
fi
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"  # debootstrap may have left it mounted
step "root: $(in_root uname -m), $(in_root python3 --version)"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then  # a TLS-intercepting egress proxy's CA
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    in_root update-ca-certificates >/dev/null 2>&1 || { echo "update-ca-certificates failed in the root" >&2; exit 1; }
fi
rm -rf "$ROOT/src" && mkdir -p "$ROOT/src" && git -C "$REPO" archive HEAD | tar -x -C "$ROOT/src"
step "venv + pip install (annoy compiles under emulation)"
in_root sh -c 'python3 -m venv /opt/venv && /opt/venv/bin/pip install -q /src' >/tmp/edge-arm64-pip.log 2>&1 \
    || { tail -30 /tmp/edge-arm64-pip.log; exit 1; }
step "installed: $(in_root /opt/venv/bin/edge --version)"
in_root env EDGE_MODELS_DIR=/src/models /opt/venv/bin/edge doctor 2>&1 | tail -5
step "parity: the int8 models on tests/data/faces, arm64 vs this host"
in_root sh -c 'cd /src && EDGE_MODELS_DIR=/src/models /opt/venv/bin/python tools/parity_dump.py tests/data/faces /tmp/arm64.npz' \
    2>&1 | grep -v "Error in cpuinfo" | tail -2
cp "$ROOT/tmp/arm64.npz" /tmp/edge-parity-arm64.npz
"$REPO/.venv/bin/python" "$REPO/tools/parity_dump.py" "$REPO/tests/data/faces" /tmp/edge-parity-x86.npz | tail -1
"$REPO/.venv/bin/python" "$REPO/tools/parity_dump.py" --compare /tmp/edge-parity-x86.npz /tmp/edge-parity-arm64.npz
step "done"
