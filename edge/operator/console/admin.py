"""Administration: the admin page (users, counts, the retention period) and the retention purge, whose every run
is appended to the audit log. Admins only (the "purge" action)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from edge.operator.accounts import Session
from edge.operator.console.base import Console


def routes(console: Console) -> APIRouter:
    """GET /admin and /api/admin, POST /admin/purge (the form) and /api/admin/purge."""
    router = APIRouter()
    data = console.data

    @console.twin(router, "/admin", "/api/admin", "admin.html", action="purge")
    def admin(request: Request, me: Session) -> dict:
        purged = {k: request.query_params[k] for k in ("events", "decisions") if k in request.query_params}
        return {"retention_days": data.retention_days, "purged": purged or None, "users": data.users(),
                "counts": data.counts()}

    @router.post("/admin/purge")
    async def admin_purge(request: Request) -> Response:
        result = await run_in_threadpool(data.purge, (await console.guard(request, "purge"))[0])
        return RedirectResponse(f"/admin?events={result['events']}&decisions={result['decisions']}", 303)

    @router.post("/api/admin/purge")
    async def api_purge(request: Request) -> dict:
        return await run_in_threadpool(data.purge, (await console.guard(request, "purge"))[0])

    return router
