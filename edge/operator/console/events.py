"""The review queue and one event: the queue page (polled through /api/events), the event page with its decisions
and the decision form, and the decisions' API (read, and record one as JSON)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from edge.operator.accounts import Session
from edge.operator.console.base import Console, query_float
from edge.operator.event_store import STATUSES
from edge.operator.request_checks import Refused, json_body


def register(app: FastAPI, console: Console) -> None:
    """Add to `app`: GET / and /api/events (the queue), GET /events/ID and /api/events/ID (one event),
    POST /events/ID/decisions (the form), GET and POST /api/events/ID/decisions."""
    data = console.data

    @console.twin(app, "/", "/api/events", "queue.html")
    def queue(request: Request, me: Session) -> dict:
        status = request.query_params.get("status") or "pending"
        if status not in STATUSES:
            raise Refused(400, f"status must be one of {', '.join(STATUSES)}, got {status[:40]!r}")
        limit, after = query_float(request, "limit"), query_float(request, "after")
        events = data.queue(status, int(limit or 100), query_float(request, "before"), after)
        sig = ",".join(f"{e['event_id']}:{e['confirmations']}" for e in events)  # the polling script redraws on change
        counts = data.counts()  # one read of the maintained counters
        return {"status": status, "count": counts[status], "counts": counts,
                "required": data.required, "sig": sig,
                "latest": max((e["received_at"] for e in events), default=None), "events": events}

    @console.twin(app, "/events/{event_id}", "/api/events/{event_id}", "event.html")
    def event(request: Request, me: Session) -> dict:
        ev = data.event(request.path_params["event_id"])[1]
        n_refs = len(data.faces.enrolled(ev["subject_id"]))
        return {"event": ev, "mine": next((d for d in ev["decisions"] if d["reviewer"] == me.username), None),
                "references": list(range(1, n_refs + 1))}

    @app.post("/events/{event_id}/decisions")
    async def decide_form(request: Request, event_id: str) -> Response:
        me, form = await console.guard(request, "decide")
        try:
            await run_in_threadpool(data.decide, me, event_id, form.get("decision"), form.get("note") or "")
        except Refused as err:
            if err.status == 404:
                raise
            return console.page(request, "event.html", me, err.status, error=str(err),
                                **await run_in_threadpool(event, request, me))
        return RedirectResponse(f"/events/{quote(event_id)}", 303)

    @app.get("/api/events/{event_id}/decisions")
    async def api_decisions(request: Request, event_id: str) -> dict:
        await console.guard(request, "view")
        ev = (await run_in_threadpool(data.event, event_id))[1]
        return {k: ev[k] for k in ("event_id", "status", "confirmations", "required", "decisions")}

    @app.post("/api/events/{event_id}/decisions")
    async def api_decide(request: Request, event_id: str) -> dict:
        me, _ = await console.guard(request, "decide")
        body = json_body(await request.body())
        if not isinstance(body, dict):
            raise Refused(400, 'the body must be a JSON object: {"decision": "confirm|reject|unsure", "note": "..."}')
        return await run_in_threadpool(data.decide, me, event_id, body.get("decision"), body.get("note") or "")

