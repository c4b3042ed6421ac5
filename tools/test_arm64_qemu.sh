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
# 4. The first-boot recipe (firmware-config/first-boot/): an aarch64 wheelhouse on a fake card, the offline install
#    and provisioning, a certificate signed by a throwaway CA, `edge run --check`, then `edge bench` on the demo clip.
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
step "wheelhouse for the card (aarch64 wheels; annoy built under emulation)"
CARD=$ROOT/boot/firmware/edge
rm -rf "$CARD" && mkdir -p "$CARD"
in_root sh -c '/opt/venv/bin/pip install -q wheel && /opt/venv/bin/pip wheel -q /src -w /boot/firmware/edge/wheelhouse' >/tmp/edge-arm64-wheel.log 2>&1 \
    || { tail -30 /tmp/edge-arm64-wheel.log; exit 1; }
echo "   $(ls "$CARD/wheelhouse" | wc -l) wheels, $(du -sh "$CARD/wheelhouse" | cut -f1)"
git -C "$REPO" archive HEAD > "$CARD/src.tar"
echo arm64-01 > "$CARD/device-id"
echo pi4 > "$CARD/profile"
"$REPO/.venv/bin/edge" keys generate operator --out /tmp/edge-arm64-operator --force >/dev/null
cp /tmp/edge-arm64-operator/operator.pub "$CARD/operator.pub"
step "first boot (firmware-config/first-boot/edge-firstboot.sh): offline install, provisioning"
rm -rf "$ROOT/var/lib/edge-firstboot.done" "$ROOT/etc/edge" "$ROOT/opt/edge"  # a kept root: first boot again
in_root env EDGE_FIRSTBOOT_NO_SYSTEMCTL=1 sh -c 'mkdir -p /run/edge-firstboot && tar -x -f /boot/firmware/edge/src.tar -C /run/edge-firstboot firmware-config/first-boot && sh /run/edge-firstboot/firmware-config/first-boot/edge-firstboot.sh' \
    >/tmp/edge-arm64-firstboot.log 2>&1 || { tail -40 /tmp/edge-arm64-firstboot.log; exit 1; }
grep -E "^edge-firstboot|^install.sh|would:" /tmp/edge-arm64-firstboot.log | head -20
[ -s "$CARD/out/arm64-01.pub" ] && [ -s "$CARD/out/arm64-01.csr" ] || { echo "first boot left no key/CSR" >&2; exit 1; }
stat -c '   %a %n' "$ROOT"/etc/edge/credentials/device.key "$ROOT"/etc/edge/credentials/tls.key "$ROOT"/etc/edge/credentials
step "the operator signs the CSR (a throwaway CA here); the certificate arrives: edge-cert.sh"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /tmp/edge-arm64-ca.key \
    -out "$CARD/ca.crt" -subj /CN=edge-arm64-test-ca -days 2 >/dev/null 2>&1
openssl x509 -req -in "$CARD/out/arm64-01.csr" -CA "$CARD/ca.crt" -CAkey /tmp/edge-arm64-ca.key -CAcreateserial \
    -out "$CARD/tls.crt" -days 2 >/dev/null 2>&1
cp "$CARD/ca.crt" "$ROOT/etc/edge/tls/ca.crt"
in_root env EDGE_FIRSTBOOT_NO_SYSTEMCTL=1 /usr/local/sbin/edge-cert 2>&1 | grep -v "Error in cpuinfo" | tail -12
step "edge bench on the demo clip under emulation (correctness, not speed)"
in_root sh -c 'cd /tmp && EDGE_SAMPLES_DIR=/opt/edge/src/tests/data/faces /opt/edge/venv/bin/edge bench --max-seconds 30 --json' 2>/dev/null \
    | "$REPO/.venv/bin/python" -c "import json,sys; r=json.load(sys.stdin); print('   ', {k: r[k] for k in ('frames', 'fps', 'faces', 'embeddings', 'events', 'stage_ms', 'rss_mb', 'backend')})" 2>/dev/null \
    || in_root sh -c 'cd /tmp && EDGE_SAMPLES_DIR=/opt/edge/src/tests/data/faces /opt/edge/venv/bin/edge bench --max-seconds 30 --json' 2>&1 | tail -5
step "done"
