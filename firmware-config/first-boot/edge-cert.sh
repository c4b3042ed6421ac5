#!/bin/sh
# Installs the broker certificate the operator copied to the card (edge-cert.path runs this), checks the unit's
# configuration, and starts the appliance. EDGE_BOOT / EDGE_FIRSTBOOT_NO_SYSTEMCTL as for edge-firstboot.sh.
set -eu
BOOT=${EDGE_BOOT:-}
[ -n "$BOOT" ] || { [ -d /boot/firmware/edge ] && BOOT=/boot/firmware/edge || BOOT=/boot/edge; }
[ -f "$BOOT/tls.crt" ] || { echo "edge-cert: no $BOOT/tls.crt yet"; exit 1; }
install -d -m 0755 /etc/edge/tls
install -m 0644 "$BOOT/tls.crt" /etc/edge/tls/device.crt
CREDENTIALS_DIRECTORY=/etc/edge/credentials /opt/edge/venv/bin/edge run --check --config /etc/edge/edge.yaml \
    || echo "edge-cert: the check reports problems (above)"
if [ "${EDGE_FIRSTBOOT_NO_SYSTEMCTL:-0}" = 1 ]; then
    echo "would: systemctl enable --now edge.service"
else
    systemctl enable --now edge.service
fi
