#!/bin/sh
# Remove the edge appliance installed by systemd/install.sh. Idempotent.
#
#   sudo systemd/uninstall.sh [--operator] [--keep-data] [--keep-config] [--root DIR] [--no-systemctl]
#
# Removes the unit, /opt/edge, /etc/edge (unless --keep-config), /var/lib/edge (unless --keep-data) and the
# `edge` user; with --operator the operator's units, /etc/edge-operator, /var/lib/edge-operator (the SQLite store
# and the console's audit log) and the `edge-operator` user. /opt/edge stays while the other side is installed.
# --root DIR / --no-systemctl as in install.sh (root-only actions are printed as "would: ...").
set -eu

ROOT=""
KEEP_DATA=0
KEEP_CONFIG=0
SYSTEMCTL=1
OPERATOR=0
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=${2:?--root needs a directory}; shift ;;
        --root=*) ROOT=${1#*=} ;;
        --keep-data) KEEP_DATA=1 ;;
        --keep-config) KEEP_CONFIG=1 ;;
        --no-systemctl) SYSTEMCTL=0 ;;
        --operator) OPERATOR=1 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "uninstall.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || { echo "uninstall.sh: no $ROOT" >&2; exit 2; }
    ROOT=$(cd "$ROOT" && pwd)
    SYSTEMCTL=0
elif [ "$(id -u)" -ne 0 ]; then
    echo "uninstall.sh: run as root (or use --root DIR)" >&2
    exit 1
fi
act() { if [ -n "$ROOT" ]; then echo "would: $*"; else "$@"; fi; }
UNIT_DIR=$ROOT/etc/systemd/system

if [ "$OPERATOR" = 1 ]; then
    if [ "$SYSTEMCTL" = 1 ]; then
        systemctl disable --now edge-console.service 2>/dev/null || true
        for w in "$UNIT_DIR"/multi-user.target.wants/edge-consume@*.service; do
            [ -e "$w" ] || [ -L "$w" ] || continue
            systemctl disable --now "$(basename "$w")" 2>/dev/null || true
        done
        systemctl stop 'edge-consume@*.service' 2>/dev/null || true
    else
        echo "would: systemctl disable --now edge-console.service edge-consume@*.service"
    fi
    rm -f "$UNIT_DIR/edge-console.service" "$UNIT_DIR/edge-consume@.service"
    rm -rf "$UNIT_DIR/edge-console.service.d" "$UNIT_DIR"/edge-consume@*.service.d
    rm -f "$UNIT_DIR/multi-user.target.wants/edge-console.service" \
        "$UNIT_DIR"/multi-user.target.wants/edge-consume@*.service
    if [ "$SYSTEMCTL" = 1 ]; then systemctl daemon-reload; else echo "would: systemctl daemon-reload"; fi
    [ -f "$UNIT_DIR/edge.service" ] || rm -rf "$ROOT/opt/edge"  # the device's side still uses it
    [ "$KEEP_CONFIG" = 1 ] || rm -rf "$ROOT/etc/edge-operator"
    [ "$KEEP_DATA" = 1 ] || rm -rf "$ROOT/var/lib/edge-operator" "$ROOT/var/lib/private/edge-operator"
    if [ -n "$ROOT" ] || id edge-operator >/dev/null 2>&1; then
        act userdel edge-operator
    fi
    echo "uninstall.sh: done${ROOT:+ (under $ROOT)}; kept:$( [ "$KEEP_DATA" = 1 ] && echo " /var/lib/edge-operator")$( [ "$KEEP_CONFIG" = 1 ] && echo " /etc/edge-operator")"
    exit 0
fi

if [ "$SYSTEMCTL" = 1 ]; then
    systemctl disable --now edge.service 2>/dev/null || true
else
    echo "would: systemctl disable --now edge.service"
fi
rm -f "$ROOT/etc/systemd/system/edge.service"
rm -rf "$ROOT/etc/systemd/system/edge.service.d"
# enable's symlink (a staged tree has none; a real one is removed by disable, this is belt and braces)
rm -f "$ROOT/etc/systemd/system/multi-user.target.wants/edge.service"
if [ "$SYSTEMCTL" = 1 ]; then systemctl daemon-reload; systemctl reset-failed edge.service 2>/dev/null || true
else echo "would: systemctl daemon-reload"; fi

[ -f "$UNIT_DIR/edge-console.service" ] || rm -rf "$ROOT/opt/edge"  # the operator's side still uses it
[ "$KEEP_CONFIG" = 1 ] || rm -rf "$ROOT/etc/edge"
[ "$KEEP_DATA" = 1 ] || rm -rf "$ROOT/var/lib/edge" "$ROOT/var/lib/private/edge"

if [ -n "$ROOT" ] || id edge >/dev/null 2>&1; then
    act userdel edge
fi
echo "uninstall.sh: done${ROOT:+ (under $ROOT)}; kept:${KEEP_DATA:+}$( [ "$KEEP_DATA" = 1 ] && echo " /var/lib/edge")$( [ "$KEEP_CONFIG" = 1 ] && echo " /etc/edge")"
