#!/bin/sh
# First boot of a freshly flashed Raspberry Pi OS card (issue 14): install the appliance from the card, with no
# network, provision the device, and leave the service to start once its certificate is on the card.
#
# The operator puts on the card's boot partition (FAT, readable from any computer), in edge/:
#   wheelhouse/      aarch64 wheels of edge-watchlist and its dependencies (tools/test_arm64_qemu.sh builds them:
#                    annoy compiled once under emulation), installed with pip --no-index
#   src.tar          `git archive HEAD` of this repository (systemd/install.sh, models, profiles)
#   device-id        the unit's id (one line; its certificate CN)
#   profile          pi4 | pi5 | jetson | x86 (firmware-config/profiles/), default pi4
#   operator.pub     the operator's Ed25519 public key (watchlist signatures), ca.crt the broker's CA
#   operator-evidence.pub  the operator's X25519 evidence key (`edge keys generate evidence`): match events then
#                    carry the best face chip(s) sealed to it for the reviewers (the profiles point at it)
# It writes edge/out/<id>.pub (the device's X25519 key, for `edge fleet add`) and edge/out/<id>.csr (for the
# broker certificate), and prints both. When the operator copies the signed certificate to edge/tls.crt,
# edge-cert.path sees it and edge-cert.service installs it and starts edge.service.
#
# Environment (tests): EDGE_BOOT (default /boot/firmware/edge, else /boot/edge), EDGE_FIRSTBOOT_NO_SYSTEMCTL=1.
set -eu
BOOT=${EDGE_BOOT:-}
[ -n "$BOOT" ] || { [ -d /boot/firmware/edge ] && BOOT=/boot/firmware/edge || BOOT=/boot/edge; }
DONE=/var/lib/edge-firstboot.done
log() { echo "edge-firstboot: $*"; }
[ -f "$DONE" ] && { log "already done ($DONE)"; exit 0; }
[ -d "$BOOT/wheelhouse" ] && [ -f "$BOOT/src.tar" ] && [ -f "$BOOT/device-id" ] \
    || { log "nothing to do: $BOOT needs wheelhouse/, src.tar and device-id"; exit 1; }
ID=$(head -n1 "$BOOT/device-id" | tr -d ' \r\n')
PROFILE=$(cat "$BOOT/profile" 2>/dev/null | tr -d ' \r\n' || true)
PROFILE=${PROFILE:-pi4}
log "device $ID, profile $PROFILE, installing from $BOOT (no network needed)"

SRC=/opt/edge/src
rm -rf "$SRC" && mkdir -p "$SRC" && tar -x -f "$BOOT/src.tar" -C "$SRC"
SYSTEMCTL=""
[ "${EDGE_FIRSTBOOT_NO_SYSTEMCTL:-0}" = 1 ] && SYSTEMCTL=--no-systemctl
# shellcheck disable=SC2086
"$SRC/systemd/install.sh" --profile "$PROFILE" --wheelhouse "$BOOT/wheelhouse" $SYSTEMCTL
EDGE=/opt/edge/venv/bin/edge

# Identity: X25519 device key, TLS key and CSR (CN = id), the keys 0600 in the 0700 credentials directory.
CRED=/etc/edge/credentials
if [ ! -f "$CRED/device.key" ]; then
    "$EDGE" device provision --id "$ID" --out "$CRED/provision"
    for f in "$CRED"/provision/*; do mv "$f" "$CRED/"; done
    rmdir "$CRED/provision"
fi
chmod 0600 "$CRED"/*.key
# The unit's config: its id; the TLS key from systemd's credentials; the operator's key and the broker's CA
# (when the card carries them) where the profiles expect them.
sed -i -e "s/^\(  id: *\)[^ #]*/\1$ID/" -e 's|^\(  key_file: *\)[^ #]*|\1${CREDENTIALS_DIRECTORY}/tls.key|' \
    /etc/edge/edge.yaml
install -d -m 0755 /etc/edge/tls
[ -f "$BOOT/operator.pub" ] && install -m 0644 "$BOOT/operator.pub" /etc/edge/operator.pub
if [ -f "$BOOT/operator-evidence.pub" ]; then  # evidence for the reviewers, sealed to the operator
    install -m 0644 "$BOOT/operator-evidence.pub" /etc/edge/operator-evidence.pub
    log "evidence key installed: match events carry face chips sealed to /etc/edge/operator-evidence.pub"
else
    log "no operator-evidence.pub on the card: match events carry no face until /etc/edge/operator-evidence.pub exists"
fi
if ! grep -q '^watchlist:' /etc/edge/edge.yaml; then  # the keys the service gets from systemd, the operator's key
    {
        echo ""
        echo "watchlist:"
        echo '  device_key: ${CREDENTIALS_DIRECTORY}/device.key'
        echo "  trusted_keys: [/etc/edge/operator.pub]"
    } >> /etc/edge/edge.yaml
fi
[ -f "$BOOT/ca.crt" ] && install -m 0644 "$BOOT/ca.crt" /etc/edge/tls/ca.crt

mkdir -p "$BOOT/out"
cp "$CRED/device.pub" "$BOOT/out/$ID.pub"
cp "$CRED/tls.csr" "$BOOT/out/$ID.csr"
log "device public key (edge fleet add $ID --key $ID.pub):"
cat "$CRED/device.pub"
log "certificate request for the broker (CN=$ID), sign it and copy the certificate to $BOOT/tls.crt:"
cat "$CRED/tls.csr"

UNITS=/etc/systemd/system
cp "$SRC/firmware-config/first-boot/edge-cert.path" "$SRC/firmware-config/first-boot/edge-cert.service" "$UNITS/"
install -m 0755 "$SRC/firmware-config/first-boot/edge-cert.sh" /usr/local/sbin/edge-cert
if [ -z "$SYSTEMCTL" ]; then
    systemctl daemon-reload
    systemctl enable --now edge-cert.path
else
    log "would: systemctl enable --now edge-cert.path"
fi
mkdir -p "$(dirname "$DONE")" && date -u +%FT%TZ > "$DONE"
log "done: edge.service starts once $BOOT/tls.crt is there"
