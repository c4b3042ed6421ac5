#!/bin/sh
# End-to-end test of systemd/install.sh and systemd/uninstall.sh in a real Debian root (debootstrap + chroot).
#
#   sudo tools/test_install_debootstrap.sh [--root DIR] [--fresh] [--profile x86] [--out DIR]
#
# 1. debootstrap a minbase Debian bookworm (amd64) into DIR (default /tmp/bookworm; reused if it already holds
#    python3, --fresh recreates it). Host CA files in /usr/local/share/ca-certificates (e.g. a TLS-intercepting
#    egress proxy) are copied in so that pip can reach PyPI; this happens before the baseline.
# 2. Record the baseline: path, type, mode, owner of every file (find / -xdev, without /proc /sys /dev /tmp /run
#    /var/cache /var/log /src) and the sha256 of every regular file under /etc.
# 3. Copy the project (git archive HEAD) to DIR/src, mount proc/sys/dev, run install.sh --no-systemctl in the chroot.
# 4. Check: user edge (+ group video), edge --version, edge doctor (no config), edge run --check --allow-missing as
#    user edge, the unit file, `systemctl --root enable` (offline), systemd-analyze security --offline on the
#    installed unit (<= 2.0), and the venv size.
# 5. Run uninstall.sh --no-systemctl, diff the file list and /etc contents against the baseline: any difference
#    fails the test. Everything is unmounted and DIR/src removed on exit.
# Output and logs: --out DIR (default /tmp/edge-debootstrap-test). Exit 0 only if every check passes.
set -eu

ROOT=/tmp/bookworm
FRESH=0
PROFILE=x86
OUT=/tmp/edge-debootstrap-test
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
MAX_EXPOSURE=2.0
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=$2; shift ;;
        --fresh) FRESH=1 ;;
        --profile) PROFILE=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
FAIL=0
T0=$(date +%s)
log() { echo "== $*"; }
ok() { echo "PASS: $*"; }
bad() { echo "FAIL: $*"; FAIL=1; }
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

MOUNTS=""
cleanup() {
    for m in $MOUNTS; do umount -l "$ROOT/$m" 2>/dev/null || true; done
    rm -rf "$ROOT/src"
}
trap cleanup EXIT INT TERM

# --- 1. the root ------------------------------------------------------------------------------------------------
command -v debootstrap >/dev/null || { apt-get update && apt-get install -y debootstrap; }
if [ "$FRESH" = 1 ]; then
    mount | grep -q " $ROOT/" && { echo "$ROOT has mounts; unmount first" >&2; exit 1; }
    rm -rf "$ROOT"
fi
if [ ! -x "$ROOT/usr/bin/python3" ]; then
    log "debootstrap $SUITE into $ROOT"
    t=$(date +%s)
    debootstrap --variant=minbase --arch=amd64 \
        --include=python3,python3-venv,python3-pip,python3-dev,ca-certificates,g++,passwd,adduser \
        "$SUITE" "$ROOT" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 || { tail -20 "$OUT/debootstrap.log"; exit 1; }
    echo "debootstrap: $(( $(date +%s) - t )) s"
fi
# annoy (a dependency) ships only an sdist: building it needs g++ and Python.h (python3-dev)
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
[ -f "$ROOT/usr/include/python3.11/Python.h" ] || in_root apt-get install -y -q python3-dev >"$OUT/apt.log" 2>&1
# environment, not part of the test: DNS and the host's extra CAs (pip must verify PyPI through an egress proxy)
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    in_root update-ca-certificates >/dev/null 2>&1
fi

# --- 2. baseline ------------------------------------------------------------------------------------------------
snapshot() {  # $1: output prefix
    in_root sh -c 'find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /tmp -o -path /run \
        -o -path /var/cache -o -path /var/log -o -path /src \) -prune -o -printf "%p %y %m %u:%g\n" | LC_ALL=C sort' \
        >"$1.files"
    in_root sh -c 'find /etc -xdev -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum' >"$1.etc.sha256"
}
snapshot "$OUT/before"
log "baseline: $(wc -l <"$OUT/before.files") paths"

# --- 3. install -------------------------------------------------------------------------------------------------
mkdir -p "$ROOT/src"
git -C "$REPO" archive HEAD | tar -x -C "$ROOT/src"
for m in proc sys dev; do
    mkdir -p "$ROOT/$m"
    case $m in
        proc) mount -t proc proc "$ROOT/proc" ;;
        sys) mount -t sysfs sys "$ROOT/sys" ;;
        dev) mount --bind /dev "$ROOT/dev" ;;
    esac
    MOUNTS="$m $MOUNTS"
done
log "install: chroot $ROOT sh /src/systemd/install.sh --profile $PROFILE --no-systemctl"
t=$(date +%s)
if in_root sh /src/systemd/install.sh --profile "$PROFILE" --no-systemctl >"$OUT/install.log" 2>&1; then
    ok "install.sh ($(( $(date +%s) - t )) s)"
else
    bad "install.sh exited $? ($(( $(date +%s) - t )) s)"; tail -30 "$OUT/install.log"
fi
cat "$OUT/install.log"
log "install again (upgrade path, must be idempotent)"
t=$(date +%s)
if in_root sh /src/systemd/install.sh --profile "$PROFILE" --no-systemctl >"$OUT/install2.log" 2>&1; then
    ok "install.sh again ($(( $(date +%s) - t )) s)"
else
    bad "install.sh again"; tail -30 "$OUT/install2.log"
fi

# --- 4. checks --------------------------------------------------------------------------------------------------
if in_root id edge; then ok "user edge exists"; else bad "no user edge"; fi
in_root getent passwd edge
if in_root id -nG edge | tr ' ' '\n' | grep -qx video; then ok "edge is in group video"; else bad "edge not in video"; fi
[ "$(in_root getent passwd edge | cut -d: -f6,7)" = "/var/lib/edge:/usr/sbin/nologin" ] \
    && ok "home /var/lib/edge, shell nologin" || bad "home/shell"
V=$(in_root /opt/edge/venv/bin/edge --version 2>&1) && ok "edge --version: $V" || bad "edge --version: $V"
log "edge doctor (no config)"
if in_root /opt/edge/venv/bin/edge doctor >"$OUT/doctor.txt" 2>&1; then ok "edge doctor"; else bad "edge doctor exited non-zero"; fi
cat "$OUT/doctor.txt"
log "edge run --config /etc/edge/edge.yaml --check --allow-missing (as user edge)"
# --allow-missing: the profile's key/cert files and the camera are absent in a chroot
# as systemd would run it: StateDirectory= creates /var/lib/edge (edge, 0700), User= sets HOME to the user's home
# (the x86 profile's paths start with ~); `sudo -u edge` in the README does the same on a live system
in_root install -d -o edge -g edge -m 0700 /var/lib/edge
if in_root setpriv --reuid=edge --regid=edge --init-groups env HOME=/var/lib/edge /opt/edge/venv/bin/edge run \
        --config /etc/edge/edge.yaml --check --allow-missing >"$OUT/check.txt" 2>&1; then
    ok "edge run --check --allow-missing"
else
    bad "edge run --check --allow-missing exited non-zero"
fi
cat "$OUT/check.txt"
UNIT=$ROOT/etc/systemd/system/edge.service
if cmp -s "$UNIT" "$REPO/systemd/edge.service" && [ "$(stat -c %a:%U "$UNIT")" = 644:root ]; then
    ok "unit at /etc/systemd/system/edge.service (0644 root, identical to the source)"
else
    bad "unit file missing or different"
fi
[ "$(stat -c %a "$ROOT/etc/edge/credentials")" = 700 ] && ok "/etc/edge/credentials is 0700" || bad "credentials mode"
[ -f "$ROOT/opt/edge/venv/share/edge/models/manifest.json" ] && ok "models installed" || bad "no models"
du -sh "$ROOT/opt/edge/venv" | sed 's/^/venv size: /'
du -sh "$ROOT/opt/edge/venv/lib/python3"*/site-packages/* 2>/dev/null | sort -rh | head -8
log "systemd-analyze security --offline=true --root=$ROOT edge.service"
if systemd-analyze security --offline=true --root="$ROOT" edge.service >"$OUT/security.txt" 2>&1 ||
        grep -q "Overall exposure" "$OUT/security.txt"; then :; fi
grep -v '^✓' "$OUT/security.txt" || true
SCORE=$(sed -n 's/.*Overall exposure level for edge.service: \([0-9.]*\).*/\1/p' "$OUT/security.txt")
if [ -n "$SCORE" ] && awk "BEGIN{exit !($SCORE <= $MAX_EXPOSURE)}"; then ok "exposure $SCORE <= $MAX_EXPOSURE"
else bad "exposure '${SCORE:-?}' (want <= $MAX_EXPOSURE)"; fi
log "systemctl --root=$ROOT enable edge.service (offline; what install.sh does on a live system)"
WANTS_EXISTED=0; [ -d "$ROOT/etc/systemd/system/multi-user.target.wants" ] && WANTS_EXISTED=1
if systemctl --root="$ROOT" enable edge.service 2>&1 && [ -L "$ROOT/etc/systemd/system/multi-user.target.wants/edge.service" ]
then ok "enable symlink created"; else bad "systemctl --root enable"; fi

# --- 5. uninstall and compare -----------------------------------------------------------------------------------
log "uninstall: chroot $ROOT sh /src/systemd/uninstall.sh --no-systemctl"
if in_root sh /src/systemd/uninstall.sh --no-systemctl >"$OUT/uninstall.log" 2>&1; then ok "uninstall.sh"
else bad "uninstall.sh"; fi
cat "$OUT/uninstall.log"
# the wants/ directory is created by systemctl enable on this systemd-less minbase root; on a real system it exists
[ "$WANTS_EXISTED" = 0 ] && rmdir "$ROOT/etc/systemd/system/multi-user.target.wants" 2>/dev/null \
    && echo "note: removed multi-user.target.wants/ created by the test's offline enable (not by install.sh)"
in_root id edge >/dev/null 2>&1 && bad "user edge still exists" || ok "user edge removed"
in_root getent group edge >/dev/null 2>&1 && bad "group edge still exists" || ok "group edge removed"
snapshot "$OUT/after"
log "file list diff (before -> after uninstall)"
# useradd/userdel (shadow) keep the previous /etc/{passwd,group,shadow,gshadow} as FILE-: expected, not a leftover
SHADOW_BACKUPS='^[-+]/etc/(passwd|group|shadow|gshadow)- '
diff -u "$OUT/before.files" "$OUT/after.files" >"$OUT/files.diff" || true
grep -E '^[-+][^-+]' "$OUT/files.diff" | grep -E "$SHADOW_BACKUPS" | sed 's/^/expected (shadow backup): /' || true
if grep -E '^[-+][^-+]' "$OUT/files.diff" | grep -Ev "$SHADOW_BACKUPS"; then bad "file list differs (lines above)"
else ok "no leftover or missing paths (besides shadow backups)"; fi
log "/etc content diff"
diff -u "$OUT/before.etc.sha256" "$OUT/after.etc.sha256" >"$OUT/etc.diff" || true
if grep -E '^[-+][^-+]' "$OUT/etc.diff" | grep -Ev '  /etc/(passwd|group|shadow|gshadow)-$'; then
    bad "/etc contents differ (lines above)"
else ok "/etc contents identical (besides shadow backups)"; fi

echo "total: $(( $(date +%s) - T0 )) s; logs in $OUT"
[ "$FAIL" = 0 ] && echo "RESULT: PASS" || echo "RESULT: FAIL"
exit "$FAIL"
