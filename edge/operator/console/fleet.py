"""The fleet and what it runs: the devices page (each device's last reports) and the watchlists page (the versions
deployed, their per-group false-match rates at each threshold and their alert budget), each with its JSON twin."""

from __future__ import annotations

from fastapi import FastAPI, Request

from edge.operator.accounts import Session
from edge.operator.console.base import Console


def register(app: FastAPI, console: Console) -> None:
    """Add to `app`: GET /devices and /api/devices, GET /watchlists and /api/watchlists."""
    data = console.data

    @console.twin(app, "/devices", "/api/devices", "devices.html")
    def devices(request: Request, me: Session) -> dict:
        return {"devices": data.devices()}

    @console.twin(app, "/watchlists", "/api/watchlists", "watchlists.html")
    def watchlists(request: Request, me: Session) -> dict:
        return {"versions": data.watchlists()}

