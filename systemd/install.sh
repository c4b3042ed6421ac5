#!/bin/sh
# Install the edge appliance as a systemd service (DESIGN.md §7). Idempotent: safe to run again to upgrade.
#
#   sudo systemd/install.sh [--profile pi4|pi5|jetson|x86|FILE] [--wheel FILE.whl] [--wheelhouse DIR] [--start]
#                           [--root DIR] [--no-systemctl] [--force-config]
#   sudo systemd/install.sh --operator [--wheel FILE.whl] [--wheelhouse DIR] [--start] [--root DIR] [--no-systemctl]
#
# --operator       the operator's side instead of a device: user edge-operator, /etc/edge-operator/operator.env,
#                  edge-consume@.service (enabled as edge-consume@operator) and edge-console.service.
# --root DIR       install under DIR (DESTDIR-like, for packaging and tests): no useradd/chown/systemctl, they are
#                  printed as "would: ..." instead.
# --no-systemctl   do not run systemctl (daemon-reload, enable, start).
# --profile        firmware-config/profiles/NAME.yaml (or a path) copied to /etc/edge/edge.yaml unless it exists
#                  (--force-config overwrites; the old file is kept as edge.yaml.bak).
# --wheel          pip install this wheel instead of the source tree this script lives in.
# --wheelhouse     install offline (pip --no-index) from the wheels in DIR (the first-boot recipe's card).
# --start          start (or restart) the service after enabling it.
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=""
PROFILE=""
WHEEL=""
WHEELHOUSE=""
START=0
SYSTEMCTL=1
FORCE_CONFIG=0
PYTHON=${PYTHON:-python3}

OPERATOR=0

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=${2:?--root needs a directory}; shift ;;
        --root=*) ROOT=${1#*=} ;;
        --profile) PROFILE=${2:?--profile needs a name}; shift ;;
        --profile=*) PROFILE=${1#*=} ;;
        --wheel) WHEEL=${2:?--wheel needs a file}; shift ;;
        --wheel=*) WHEEL=${1#*=} ;;
        --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a directory}; shift ;;
        --wheelhouse=*) WHEELHOUSE=${1#*=} ;;
        --start) START=1 ;;
        --no-systemctl) SYSTEMCTL=0 ;;
        --force-config) FORCE_CONFIG=1 ;;
        --operator) OPERATOR=1 ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
    shift
done

if [ "$OPERATOR" = 1 ] && [ -n "$PROFILE" ]; then
    echo "install.sh: --profile is a device's configuration; --operator installs the operator's side" >&2
    exit 2
fi

if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    SYSTEMCTL=0
elif [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (or use --root DIR for a staged install)" >&2
    exit 1
fi

# Run a root-only side effect, or print it under --root.
act() { if [ -n "$ROOT" ]; then echo "would: $*"; else "$@"; fi; }
say() { echo "install.sh: $*"; }

PREFIX=$ROOT/opt/edge
VENV=$PREFIX/venv
ETC=$ROOT/etc/edge
UNIT_DIR=$ROOT/etc/systemd/system

# --- user -------------------------------------------------------------------------------------------------------
if [ "$OPERATOR" = 1 ]; then
    if [ -n "$ROOT" ] || ! id edge-operator >/dev/null 2>&1; then
        act useradd --system --user-group --no-create-home --home-dir /var/lib/edge-operator \
            --shell /usr/sbin/nologin --comment "edge operator: event consumers and review console" edge-operator
    fi
elif [ -n "$ROOT" ] || ! id edge >/dev/null 2>&1; then
    getent group video >/dev/null 2>&1 || act groupadd --system video
    act useradd --system --user-group --no-create-home --home-dir /var/lib/edge --shell /usr/sbin/nologin \
        --comment "edge face-watchlist appliance" --groups video edge
else
    act usermod -a -G video edge
fi

# --- venv -------------------------------------------------------------------------------------------------------
is_rpi=0
if [ -f /etc/rpi-issue ] || grep -qs "Raspberry Pi" /proc/device-tree/model; then is_rpi=1; fi
SITE=""
# Raspberry Pi OS: picamera2/libcamera come from apt (python3-picamera2), visible through the system site-packages.
[ "$is_rpi" = 1 ] && SITE="--system-site-packages"
mkdir -p "$PREFIX"
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV ${SITE:+($SITE)}"
    NOPIP=""
    [ "${EDGE_INSTALL_SKIP_PIP:-0}" = 1 ] && NOPIP="--without-pip"
    # shellcheck disable=SC2086
    "$PYTHON" -m venv $SITE $NOPIP "$VENV"
fi
if [ "${EDGE_INSTALL_SKIP_PIP:-0}" = 1 ]; then
    say "EDGE_INSTALL_SKIP_PIP=1: not installing the package"
elif [ -n "$WHEELHOUSE" ]; then
    "$VENV/bin/pip" install --quiet --upgrade --no-index --find-links "$WHEELHOUSE" "${WHEEL:-edge-watchlist}"
elif [ -n "$WHEEL" ]; then
    "$VENV/bin/pip" install --quiet --upgrade "$WHEEL"
else
    "$VENV/bin/pip" install --quiet --upgrade "$SRC"
fi

# --- models (edge/paths.py: sys.prefix/share/edge/models) -------------------------------------------------------
MODELS=$VENV/share/edge/models
mkdir -p "$MODELS"
for f in "$SRC"/models/manifest.json "$SRC"/models/NOTICE.md "$SRC"/models/*.tflite "$SRC"/models/*.npz; do
    [ -f "$f" ] && cp -f "$f" "$MODELS/"
done
chmod -R a+rX,go-w "$PREFIX"

# --- operator: config, credentials, units ----------------------------------------------------------------------
if [ "$OPERATOR" = 1 ]; then
    OETC=$ROOT/etc/edge-operator
    mkdir -p "$OETC/tls" "$OETC/credentials"
    chmod 0755 "$OETC" "$OETC/tls"
    chmod 0700 "$OETC/credentials"
    if [ -f "$OETC/operator.env" ]; then
        say "keeping existing $OETC/operator.env"
    else
        cp "$SRC/systemd/edge-operator.env" "$OETC/operator.env"
        chmod 0644 "$OETC/operator.env"
        say "installed $OETC/operator.env: set the store and the broker there"
    fi
    for f in tls/ca.crt tls/operator.crt credentials/operator.key credentials/evidence.key; do
        [ -f "$OETC/$f" ] || say "put $f in $OETC/$f (see systemd/README.md): the units need it"
    done
    mkdir -p "$UNIT_DIR"
    for u in edge-consume@.service edge-console.service; do
        cp "$SRC/systemd/$u" "$UNIT_DIR/$u"
        chmod 0644 "$UNIT_DIR/$u"
    done
    act install -d -o root -g root -m 0700 /etc/edge-operator/credentials
    # StateDirectory= would create it at the first start; `edge console user add` (as edge-operator) needs it before.
    act install -d -o edge-operator -g edge-operator -m 0700 /var/lib/edge-operator
    UNITS="edge-consume@operator.service edge-console.service"
    if [ "$SYSTEMCTL" = 1 ]; then
        systemctl daemon-reload
        # shellcheck disable=SC2086
        systemctl enable $UNITS
        # shellcheck disable=SC2086
        if [ "$START" = 1 ]; then systemctl restart $UNITS; fi
    else
        echo "would: systemctl daemon-reload"
        echo "would: systemctl enable $UNITS"
        [ "$START" = 1 ] && echo "would: systemctl restart $UNITS"
    fi
    say "done${ROOT:+ (staged under $ROOT)}"
    exit 0
fi

# --- config and credentials -------------------------------------------------------------------------------------
mkdir -p "$ETC"
chmod 0755 "$ETC"
mkdir -p "$ETC/credentials"
chmod 0700 "$ETC/credentials"
if [ -n "$PROFILE" ]; then
    case "$PROFILE" in
        */*|*.yaml) PFILE=$PROFILE ;;
        *) PFILE=$SRC/firmware-config/profiles/$PROFILE.yaml ;;
    esac
    [ -f "$PFILE" ] || { echo "install.sh: no profile $PFILE" >&2; exit 2; }
    if [ -f "$ETC/edge.yaml" ] && [ "$FORCE_CONFIG" = 0 ]; then
        say "keeping existing $ETC/edge.yaml (--force-config replaces it)"
    else
        [ -f "$ETC/edge.yaml" ] && cp -p "$ETC/edge.yaml" "$ETC/edge.yaml.bak"
        cp "$PFILE" "$ETC/edge.yaml"
        chmod 0644 "$ETC/edge.yaml"
        say "installed $PFILE as $ETC/edge.yaml"
    fi
elif [ ! -f "$ETC/edge.yaml" ]; then
    say "no --profile and no $ETC/edge.yaml yet: copy one from firmware-config/profiles/ before starting"
fi
for k in device.key tls.key; do
    [ -f "$ETC/credentials/$k" ] || say "put the $k credential in $ETC/credentials/$k (root, 0600): LoadCredential= needs it"
done

# --- unit -------------------------------------------------------------------------------------------------------
mkdir -p "$UNIT_DIR"
cp "$SRC/systemd/edge.service" "$UNIT_DIR/edge.service"
chmod 0644 "$UNIT_DIR/edge.service"
act install -d -o root -g root -m 0700 /etc/edge/credentials

if [ "$SYSTEMCTL" = 1 ]; then
    systemctl daemon-reload
    systemctl enable edge.service
    if [ "$START" = 1 ]; then systemctl restart edge.service; fi
else
    echo "would: systemctl daemon-reload"
    echo "would: systemctl enable edge.service"
    [ "$START" = 1 ] && echo "would: systemctl restart edge.service"
fi
say "done${ROOT:+ (staged under $ROOT)}"
