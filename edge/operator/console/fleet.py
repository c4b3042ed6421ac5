"""The fleet and what it runs: the devices page (each device's last reports) and the watchlists page (the versions
deployed, their per-group false-match rates at each threshold and their alert budget), each with its JSON twin."""

from __future__ import annotations

from fastapi import APIRouter, Request

from edge.operator.accounts import Session
from edge.operator.console.base import Console


def routes(console: Console) -> APIRouter:
    """GET /devices and /api/devices, GET /watchlists and /api/watchlists."""
    router = APIRouter()
    data = console.data

    @console.twin(router, "/devices", "/api/devices", "devices.html")
    def devices(request: Request, me: Session) -> dict:
        return {"devices": data.devices()}

    @console.twin(router, "/watchlists", "/api/watchlists", "watchlists.html")
    def watchlists(request: Request, me: Session) -> dict:
        return {"versions": data.watchlists()}

    return router
