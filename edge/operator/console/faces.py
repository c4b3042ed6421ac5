"""The faces and the case file: an event's captured faces (/events/ID/evidence/1|2, and /thumbnail for the best)
and the enrolled ones (/events/ID/reference/1|2), the case export a supervisor keeps (/api/events/ID/case), and
the console's own icon."""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from edge.operator.console.base import Console, image
from edge.operator.request_checks import Refused

#: The console's icon (a browser asks for /favicon.ico on every first visit).
FAVICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3"'
           b' fill="#1f2a37"/><circle cx="8" cy="7" r="3.2" fill="#cfe3ff"/><path d="M3 14c1-3 3-4 5-4s4 1 5 4"'
           b' fill="#cfe3ff"/></svg>')


def register(app: FastAPI, console: Console) -> None:
    """Add to `app`: GET /api/events/ID/case, /events/ID/{evidence,reference}/{1,2}, /favicon.ico and
    /events/ID/thumbnail."""
    data = console.data

    @app.get("/api/events/{event_id}/case")
    async def api_case(request: Request, event_id: str) -> dict:
        me, _ = await console.guard(request, "export")
        return await run_in_threadpool(data.case, me, event_id)

    @app.get("/events/{event_id}/{kind}/{n}")
    async def face(request: Request, event_id: str, kind: str, n: str) -> Response:
        """/events/ID/evidence/1|2: the captured faces; /events/ID/reference/1|2: the enrolled ones."""
        await console.guard(request, "view")
        if kind not in ("evidence", "reference") or n not in ("1", "2"):
            raise Refused(404, "faces are /events/ID/evidence/1 or 2 (captured: the track's best and second best)"
                               " and /events/ID/reference/1 or 2 (enrolled)")
        which: Literal["evidence", "reference"] = "evidence" if kind == "evidence" else "reference"
        return image(await run_in_threadpool(data.face, which, event_id, int(n)))

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/events/{event_id}/thumbnail")
    async def thumbnail(request: Request, event_id: str) -> Response:
        """The best captured face: evidence slot 1."""
        await console.guard(request, "view")
        return image(await run_in_threadpool(data.face, "evidence", event_id, 1))

