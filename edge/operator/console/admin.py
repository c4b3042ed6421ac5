"""Administration: the admin page (users, counts, the retention period) and the retention purge, whose every run
is appended to the audit log. Admins only (the "purge" action)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from edge.operator.accounts import Session
from edge.operator.console.base import Console


def register(app: FastAPI, console: Console) -> None:
    """Add to `app`: GET /admin and /api/admin, POST /admin/purge (the form) and /api/admin/purge."""
    data = console.data

    @console.twin(app, "/admin", "/api/admin", "admin.html", action="purge")
    def admin(request: Request, me: Session) -> dict:
        purged = {k: request.query_params[k] for k in ("events", "decisions") if k in request.query_params}
        return {"retention_days": data.retention_days, "purged": purged or None, "users": data.users(),
                "counts": data.counts()}

    @app.post("/admin/purge")
    async def admin_purge(request: Request) -> Response:
        result = await run_in_threadpool(data.purge, (await console.guard(request, "purge"))[0])
        return RedirectResponse(f"/admin?events={result['events']}&decisions={result['decisions']}", 303)

    @app.post("/api/admin/purge")
    async def api_purge(request: Request) -> dict:
        return await run_in_threadpool(data.purge, (await console.guard(request, "purge"))[0])

