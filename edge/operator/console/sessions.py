"""Sign-in and the session: the sign-in form and its post, sign-out, and /api/me. Sign-in is protected by a
double-submit token (a pre-session cookie echoed in the form) and rate-limited by `Accounts.login` (429 with
`TooManyAttempts`, 401 for any other refusal, on the form again)."""

from __future__ import annotations

import hmac
import secrets
import time

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from edge.errors import DataError
from edge.operator.accounts import TooManyAttempts
from edge.operator.console.base import LOGIN_COOKIE, SESSION_COOKIE, Console, set_cookie
from edge.operator.console.permissions import actions
from edge.operator.request_checks import Refused, safe_next


def register(app: FastAPI, console: Console) -> None:
    """Add to `app`: GET and POST /login, POST /logout, GET /api/me."""

    @app.get("/login")
    async def login_form(request: Request) -> Response:
        target = safe_next(request.query_params.get("next", "/"))
        if await console.session(request) is not None:
            return RedirectResponse(target, 303)
        token = request.cookies.get(LOGIN_COOKIE) or ""
        token = token if 32 <= len(token) <= 64 else secrets.token_urlsafe(32)
        resp = console.page(request, "login.html", None, csrf=token, next=target, error=None, username="")
        set_cookie(resp, request, LOGIN_COOKIE, token, 3600)
        return resp

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        cookie, submitted = request.cookies.get(LOGIN_COOKIE) or "", form.get("csrf")
        if not cookie or not isinstance(submitted, str) or not hmac.compare_digest(cookie, submitted):
            raise Refused(403, "the sign-in form has expired or was not sent by this console: load it again")
        target, username = safe_next(str(form.get("next") or "/")), str(form.get("username") or "")[:64]
        address = request.client.host if request.client else ""
        try:  # argon2 takes tens of milliseconds: off the event loop
            token, me = await run_in_threadpool(console.data.login, username,
                                                str(form.get("password") or "")[:1024], address)
        except DataError as err:  # the accounts' refusals, and the operator extra missing
            status = 429 if isinstance(err, TooManyAttempts) else 401
            return console.page(request, "login.html", None, status, csrf=cookie, next=target, error=str(err),
                                username=username)
        resp = RedirectResponse(target, 303)
        set_cookie(resp, request, SESSION_COOKIE, token, int(me.expires_at - time.time()))
        resp.delete_cookie(LOGIN_COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await console.guard(request, "view")
        await run_in_threadpool(console.data.logout, request.cookies.get(SESSION_COOKIE))
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    @app.get("/api/me")
    async def api_me(request: Request) -> dict:
        me, _ = await console.guard(request, "view")
        return {"username": me.username, "role": me.role, "csrf": me.csrf, "expires_at": me.expires_at,
                "may": actions(me)}

