"""What every console route shares: `Console` (render a page, find the session, `guard` an action, register a page
with its JSON twin) and the small request helpers (a numeric query parameter, a strict cookie, an image response).

Access is decided in `Console.guard`: every page and API call needs a live session (pages redirect to /login with
303, the API answers 401); every POST needs the session's CSRF token (form field `csrf` or header `X-CSRF-Token`,
else 403); the role must be allowed the action (`permissions.allowed`, else 403)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from edge.operator.accounts import Session
from edge.operator.console.data import ConsoleData
from edge.operator.console.permissions import Action, allowed
from edge.operator.evidence import media_type
from edge.operator.request_checks import Refused

#: The page templates (package data of edge.operator).
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SESSION_COOKIE = "edge_session"
LOGIN_COOKIE = "edge_login"

#: A page's data: (request, the guarded session) → the template's context, which is also the JSON twin's body.
PageData = Callable[[Request, Session], dict]


class Console:
    """The routes' shared state: the data (`ConsoleData`) and the templates (`env`)."""

    def __init__(self, data: ConsoleData, env: jinja2.Environment) -> None:
        self.data, self.env = data, env

    def page(self, request: Request, name: str, me: Session | None, code: int = 200, **ctx: object) -> HTMLResponse:
        """Template `name` rendered for `me` (None: signed out) with the response's CSP nonce and `can(action)`."""
        html = self.env.get_template(name).render(
            nonce=request.state.nonce, me=me, can=lambda action: allowed(me, action), **ctx)
        return HTMLResponse(html, code)

    async def session(self, request: Request) -> Session | None:
        """The live session of the request's cookie, or None."""
        return await run_in_threadpool(self.data.session, request.cookies.get(SESSION_COOKIE))

    async def guard(self, request: Request, action: Action) -> tuple[Session, dict]:
        """The session allowed `action` (and, for a POST, its form); Refused 401 / 403 otherwise."""
        me = await self.session(request)
        if me is None:
            raise Refused(401, "sign in first")
        form: dict = {}
        if request.method == "POST":
            if request.headers.get("content-type", "").startswith(("application/x-www-form-urlencoded",
                                                                    "multipart/form-data")):
                form = dict(await request.form())
                submitted = form.get("csrf")
            else:
                submitted = request.headers.get("x-csrf-token")
            if not self.data.csrf_ok(me, submitted if isinstance(submitted, str) else None):
                raise Refused(403, "missing or wrong CSRF token: reload the page and try again")
        if not allowed(me, action):
            raise Refused(403, f"a {me.role} may not {action} here")
        return me, form

    def twin(self, app: FastAPI, path: str, api_path: str, template: str,
             action: Action = "view") -> Callable[[PageData], PageData]:
        """A decorator adding to `app` a page (GET `path`, `template`) and its JSON twin (GET `api_path`),
        both over one data function and guarded by `action`."""
        def register(data: PageData) -> PageData:
            async def html(request: Request) -> Response:
                me, _ = await self.guard(request, action)
                return self.page(request, template, me, **await run_in_threadpool(data, request, me))

            async def api(request: Request) -> dict:
                return await run_in_threadpool(data, request, (await self.guard(request, action))[0])

            app.add_api_route(path, html, methods=["GET"], include_in_schema=False)
            app.add_api_route(api_path, api, methods=["GET"], include_in_schema=False)
            return data
        return register


def query_float(request: Request, name: str) -> float | None:
    """Query parameter `name` as a finite number, None when absent or empty; Refused 400 for anything else."""
    raw = request.query_params.get(name) or None
    try:
        value = None if raw is None else float(raw)
    except ValueError:
        value = math.nan
    if value is not None and not math.isfinite(value):
        raise Refused(400, f"query parameter {name} must be a number, got {str(raw)[:40]!r}")
    return value


def set_cookie(resp: Response, request: Request, name: str, value: str, max_age: int) -> None:
    """Set an HttpOnly, SameSite=Strict cookie for the whole console (Secure over https)."""
    resp.set_cookie(name, value, max_age=max(1, max_age), path="/", httponly=True, samesite="strict",
                    secure=request.url.scheme == "https")


def image(data: bytes) -> Response:
    """An image response, its media type by signature."""
    return Response(data, media_type=media_type(data))
