#!/bin/sh
# Remove the edge appliance installed by systemd/install.sh. Idempotent.
#
#   sudo systemd/uninstall.sh [--keep-data] [--keep-config] [--root DIR] [--no-systemctl]
#
# Removes the unit, /opt/edge, /etc/edge (unless --keep-config), /var/lib/edge (unless --keep-data) and the
# `edge` user. --root DIR / --no-systemctl as in install.sh (root-only actions are printed as "would: ...").
set -eu

ROOT=""
KEEP_DATA=0
KEEP_CONFIG=0
SYSTEMCTL=1
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=${2:?--root needs a directory}; shift ;;
        --root=*) ROOT=${1#*=} ;;
        --keep-data) KEEP_DATA=1 ;;
        --keep-config) KEEP_CONFIG=1 ;;
        --no-systemctl) SYSTEMCTL=0 ;;
        -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

rm -rf "$ROOT/opt/edge"
[ "$KEEP_CONFIG" = 1 ] || rm -rf "$ROOT/etc/edge"
[ "$KEEP_DATA" = 1 ] || rm -rf "$ROOT/var/lib/edge" "$ROOT/var/lib/private/edge"

if [ -n "$ROOT" ] || id edge >/dev/null 2>&1; then
    act userdel edge
fi
echo "uninstall.sh: done${ROOT:+ (under $ROOT)}; kept:${KEEP_DATA:+}$( [ "$KEEP_DATA" = 1 ] && echo " /var/lib/edge")$( [ "$KEEP_CONFIG" = 1 ] && echo " /etc/edge")"
