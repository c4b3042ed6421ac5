"""The appliance on the device: wiring, lifecycle, the capture → vision → match → event loop, tracking, the
decision policy, health, systemd integration, cameras, self-checks and provisioning. Never imports `edge.operator`."""
