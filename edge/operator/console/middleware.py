"""The console's wrapping of every request: a body limit (413), the database away as a 503 (never a traceback),
the security headers (a CSP with a per-response nonce — only the templates' own script and style run —, no framing,
no caching, no referrer), and how a `Refused` is answered (JSON for /api, a redirect to sign in, or an error page)."""

from __future__ import annotations

import logging
import secrets
from typing import Awaitable, Callable
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.middleware.base import DispatchFunction, RequestResponseEndpoint
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.operator.console.base import Console
from edge.operator.request_checks import Refused

log = logging.getLogger(__package__)

#: Largest request body accepted, bytes (a decision's note is ≤ 2,000 characters; a sign-in far less).
MAX_BODY = 64 * 1024
STORE_DOWN = "the event store is unavailable (database down or restarting): try again in a minute"


class BodyLimit:
    """ASGI middleware: 413 for a body over MAX_BODY, by its Content-Length or as it streams in."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY:
            return await PlainTextResponse(f"request body over {MAX_BODY} bytes", 413)(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:
                raise Refused(413, f"request body over {MAX_BODY} bytes")
            return message

        await self.app(scope, limited, send)


def store_unavailable(console: Console) -> DispatchFunction:
    """HTTP middleware: the database away (down, restarting) is a 503 with one line, page or JSON, never a 500
    traceback; the pool drops the broken connections, so the next request after it is back is served normally."""
    async def dispatch(request: Request, call_next: RequestResponseEndpoint) -> Response:
        try:
            return await call_next(request)
        except Exception as err:  # noqa: BLE001 - only what the store calls transient; the rest re-raised
            if not console.data.transient(err):
                raise
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            log.warning("store unavailable for %s %s: %s%s", request.method, request.url.path, type(err).__name__,
                        f": {reason}" if reason else "")
            headers = {"Retry-After": "30"}
            if request.url.path.startswith("/api/"):
                return JSONResponse({"error": STORE_DOWN}, 503, headers=headers)
            response = console.page(request, "error.html", None, 503, message=STORE_DOWN)
            response.headers.update(headers)
            return response

    return dispatch


async def security_headers(request: Request, call_next: RequestResponseEndpoint) -> Response:
    """HTTP middleware: a fresh CSP nonce for the request (`request.state.nonce`) and the security headers."""
    request.state.nonce = nonce = secrets.token_urlsafe(16)
    response = await call_next(request)
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    response.headers.update({"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                             "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})
    return response


def refused(console: Console) -> Callable[[Request, Refused], Awaitable[Response]]:
    """The exception handler of `Refused`: JSON {"error"} under /api, a redirect to sign in for a 401, else the
    error page (with the session's navigation when there is one)."""
    async def handle(request: Request, exc: Refused) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, exc.status)
        if exc.status == 401:
            return RedirectResponse(f"/login?next={quote(request.url.path)}", 303)
        return console.page(request, "error.html", await console.session(request), exc.status, message=str(exc))

    return handle
