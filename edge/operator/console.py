"""The operator's review console: a server-rendered web app (FastAPI, Jinja2, uvicorn: their only importer) over the
event store — review queue, one event with its decisions and the decision form, fleet, watchlist versions, retention
— with a JSON twin of every page under /api that follows the same access rules.

Access is decided in one place (`guard`): every page and API call needs a live session (pages redirect to /login
with 303, the API answers 401); every POST needs the session's CSRF token (form field `csrf` or header
`X-CSRF-Token`, else 403); the role must be allowed the action (`PERMISSIONS`, else 403). Sign-in is protected by a
double-submit token (a pre-session cookie echoed in the form) and rate-limited by `Accounts.login`. Every decision
and purge is appended to the audit log. Every response carries a CSP with a per-response nonce (only the templates'
own script and style run), no framing, no caching, no referrer.


Lines: the routes share one set of guards (session, CSRF, role) and views, read together as one boundary.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from edge.audit import AuditLog, tail, verify
from edge.errors import DataError
from edge.operator.accounts import ROLES, Accounts, Session, TooManyAttempts
from edge.operator.event_store import DECISIONS, STATUSES, EventStore
from edge.operator.evidence import Evidence, Unavailable, media_type
from edge.operator.request_checks import Refused, json_body, safe_next
from edge.operator.views import alert_budget, device_view, event_view, utc, watchlist_view, with_demographics

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
SESSION_COOKIE = "edge_session"
LOGIN_COOKIE = "edge_login"
#: Seconds between the queue page's polls of /api/events.
POLL_S = 3.0
#: action → the roles allowed it: the console's whole permission model.
PERMISSIONS = {"view": frozenset(ROLES), "decide": frozenset({"reviewer", "supervisor", "admin"}),
               "export": frozenset({"supervisor", "admin"}), "purge": frozenset({"admin"})}
#: The queue's columns after the subject, in order (the template and the polling script both render them).
COLUMNS = ("category", "device", "captured", "similarity", "margin", "chips", "quality", "watchlist", "embedder",
           "confirmations")
MAX_NOTE = 2000


def _float(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name) or None
    try:
        value = None if raw is None else float(raw)
    except ValueError:
        value = math.nan
    if value is not None and not math.isfinite(value):
        raise Refused(400, f"query parameter {name} must be a number, got {str(raw)[:40]!r}")
    return value


def _cookie(resp: Response, request: Request, name: str, value: str, max_age: int) -> None:
    resp.set_cookie(name, value, max_age=max(1, max_age), path="/", httponly=True, samesite="strict",
                    secure=request.url.scheme == "https")


# -------------------------------------------------------------------------------------------------- the app

#: Largest request body accepted, bytes (a decision's note is ≤ 2,000 characters; a sign-in far less).
MAX_BODY = 64 * 1024


class _BodyLimit:
    """ASGI middleware: 413 for a body over MAX_BODY, by its Content-Length or as it streams in."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY:
            return await PlainTextResponse(f"request body over {MAX_BODY} bytes", 413)(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:
                raise Refused(413, f"request body over {MAX_BODY} bytes")
            return message

        await self.app(scope, limited, send)


#: The console's icon (a browser asks for /favicon.ico on every first visit).
FAVICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3"'
           b' fill="#1f2a37"/><circle cx="8" cy="7" r="3.2" fill="#cfe3ff"/><path d="M3 14c1-3 3-4 5-4s4 1 5 4"'
           b' fill="#cfe3ff"/></svg>')


def _image(image: bytes) -> Response:
    return Response(image, media_type=media_type(image))


def create_app(store: EventStore, accounts: Accounts, audit: AuditLog, labels: dict[str, str], required: int,
               retention_days: float | None, *, thumbnail_key: Any = None, references: Any = None,
               demographics: dict[str, dict] | None = None, demographic_bound: float = 3.0) -> FastAPI:
    """The console over `store`. labels: subject id → name (`labels_from_build`); required: confirmations that
    confirm an event (the store's own); retention_days: what the admin's purge deletes (None: no purge).
    thumbnail_key: the operator's X25519 evidence private key; without it, the faces events carry stay sealed.
    references: the build's enrolled chips (`edge.watchlist.references.References`), shown beside them.
    demographics: embedding space → the model's demographic summary (model manifest), for the per-group
    false-match rates the Watchlists page shows at each version's threshold; demographic_bound: the ratio past which
    it warns."""
    if required != store.required:
        raise DataError(f"the console shows {required} required confirmations but the store applies {store.required}")
    if retention_days is not None and not retention_days > 0:
        raise DataError(f"retention must be a positive number of days, got {retention_days}")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["utc"] = utc
    faces = Evidence(thumbnail_key, references)
    env.globals.update(required=required, columns=COLUMNS, statuses=STATUSES, poll_ms=int(POLL_S * 1000),
                       thumbnails=faces.can_open, references_on=faces.has_references)
    app = FastAPI(title="edge console", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_BodyLimit)

    @app.middleware("http")
    async def store_unavailable(request: Request, call_next):
        """The database away (down, restarting) is a 503 with one line, page or JSON, never a 500 traceback; the
        pool drops the broken connections, so the next request after it is back is served normally."""
        try:
            return await call_next(request)
        except Exception as err:  # noqa: BLE001 - only what the store calls transient; the rest re-raised
            if not store.db.transient(err):
                raise
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            log.warning("store unavailable for %s %s: %s%s", request.method, request.url.path, type(err).__name__,
                        f": {reason}" if reason else "")
            message = "the event store is unavailable (database down or restarting): try again in a minute"
            headers = {"Retry-After": "30"}
            if request.url.path.startswith("/api/"):
                return JSONResponse({"error": message}, 503, headers=headers)
            response = page(request, "error.html", None, 503, message=message)
            response.headers.update(headers)
            return response

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        request.state.nonce = nonce = secrets.token_urlsafe(16)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self';"
            " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
        response.headers.update({"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})
        return response

    def page(request: Request, name: str, me: Session | None, code: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(
            nonce=request.state.nonce, me=me, can=lambda action: me is not None and me.role in PERMISSIONS[action],
            **ctx)
        return HTMLResponse(html, code)

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, exc.status)
        if exc.status == 401:
            return RedirectResponse(f"/login?next={quote(request.url.path)}", 303)
        me = await run_in_threadpool(accounts.session, request.cookies.get(SESSION_COOKIE))
        return page(request, "error.html", me, exc.status, message=str(exc))

    async def guard(request: Request, action: str) -> tuple[Session, dict]:
        """The session allowed `action` (and, for a POST, its form); Refused 401 / 403 otherwise."""
        me = await run_in_threadpool(accounts.session, request.cookies.get(SESSION_COOKIE))
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
            if not accounts.csrf_ok(me, submitted if isinstance(submitted, str) else None):
                raise Refused(403, "missing or wrong CSRF token: reload the page and try again")
        if me.role not in PERMISSIONS[action]:
            raise Refused(403, f"a {me.role} may not {action} here")
        return me, form

    def twin(path: str, api_path: str, template: str, action: str = "view"):
        """Register a page and its JSON twin over one data function `(request, session) -> dict`."""
        def register(data: Any) -> Any:
            async def html(request: Request) -> Response:
                me, _ = await guard(request, action)
                return page(request, template, me, **await run_in_threadpool(data, request, me))

            async def api(request: Request) -> dict:
                return await run_in_threadpool(data, request, (await guard(request, action))[0])

            app.add_api_route(path, html, methods=["GET"], include_in_schema=False)
            app.add_api_route(api_path, api, methods=["GET"], include_in_schema=False)
            return data
        return register

    def one(event_id: str) -> tuple[dict, dict]:
        row = store.event(event_id)
        if row is None:
            raise Refused(404, f"event {event_id[:64]} is not in the store (never received, or purged)")
        return row, event_view(row, row["decisions"], labels, required)

    def decide(me: Session, event_id: str, decision: Any, note: Any) -> dict:
        one(event_id)
        if decision not in DECISIONS:
            raise Refused(400, f"decision must be one of {', '.join(DECISIONS)}, got {str(decision)[:40]!r}")
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise Refused(400, f"a note is text of at most {MAX_NOTE} characters")
        def record(result: dict) -> None:  # inside the decision's transaction: no decision without its record
            audit.append("review_decision", {"event_id": event_id, "reviewer": me.username, "decision": decision,
                                             "note": note.strip(), "status_after": result["status"]})

        try:
            result = store.decide(event_id, me.username, decision, note.strip(), before_commit=record)
        except DataError as err:
            raise Refused(409, str(err)) from None
        log.info("review: %s %s %s -> %s", me.username, decision, event_id, result["status"])
        return result

    def purge(me: Session) -> dict:
        if retention_days is None:
            raise Refused(409, "no retention period is set: start the console with --retention-days D")
        result = store.purge(retention_days * 86400.0)
        audit.append("retention_purge", {"by": me.username, "retention_days": retention_days, **result})
        return result

    # ------------------------------------------------------------------------------------------ sign-in

    @app.get("/login")
    async def login_form(request: Request) -> Response:
        target = safe_next(request.query_params.get("next", "/"))
        if await run_in_threadpool(accounts.session, request.cookies.get(SESSION_COOKIE)) is not None:
            return RedirectResponse(target, 303)
        token = request.cookies.get(LOGIN_COOKIE) or ""
        token = token if 32 <= len(token) <= 64 else secrets.token_urlsafe(32)
        resp = page(request, "login.html", None, csrf=token, next=target, error=None, username="")
        _cookie(resp, request, LOGIN_COOKIE, token, 3600)
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
            token, me = await run_in_threadpool(accounts.login, username, str(form.get("password") or "")[:1024],
                                                address)
        except DataError as err:
            status = 429 if isinstance(err, TooManyAttempts) else 401
            return page(request, "login.html", None, status, csrf=cookie, next=target, error=str(err),
                        username=username)
        resp = RedirectResponse(target, 303)
        _cookie(resp, request, SESSION_COOKIE, token, int(me.expires_at - time.time()))
        resp.delete_cookie(LOGIN_COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await guard(request, "view")
        await run_in_threadpool(accounts.logout, request.cookies.get(SESSION_COOKIE))
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    @app.get("/api/me")
    async def api_me(request: Request) -> dict:
        me, _ = await guard(request, "view")
        return {"username": me.username, "role": me.role, "csrf": me.csrf, "expires_at": me.expires_at,
                "may": sorted(a for a, roles in PERMISSIONS.items() if me.role in roles)}

    # ------------------------------------------------------------------------------------------ events

    @twin("/", "/api/events", "queue.html")
    def queue(request: Request, me: Session) -> dict:
        status = request.query_params.get("status") or "pending"
        if status not in STATUSES:
            raise Refused(400, f"status must be one of {', '.join(STATUSES)}, got {status[:40]!r}")
        limit, after = _float(request, "limit"), _float(request, "after")
        rows = [r for r in store.queue(int(limit or 100), _float(request, "before"), status)
                if after is None or r["received_at"] > after]
        decided = store.decisions_for([r["event_id"] for r in rows])  # one query, not one per event
        events = [event_view(r, decided[r["event_id"]], labels, required) for r in rows]
        sig = ",".join(f"{e['event_id']}:{e['confirmations']}" for e in events)  # the polling script redraws on change
        counts = store.counts()  # one read of the maintained counters
        return {"status": status, "count": counts[status], "counts": counts,
                "required": required, "sig": sig, "latest": max((e["received_at"] for e in events), default=None),
                "events": events}

    @twin("/events/{event_id}", "/api/events/{event_id}", "event.html")
    def event(request: Request, me: Session) -> dict:
        ev = one(request.path_params["event_id"])[1]
        n_refs = len(faces.enrolled(ev["subject_id"]))
        return {"event": ev, "mine": next((d for d in ev["decisions"] if d["reviewer"] == me.username), None),
                "references": list(range(1, n_refs + 1))}

    @app.post("/events/{event_id}/decisions")
    async def decide_form(request: Request, event_id: str) -> Response:
        me, form = await guard(request, "decide")
        try:
            await run_in_threadpool(decide, me, event_id, form.get("decision"), form.get("note") or "")
        except Refused as err:
            if err.status == 404:
                raise
            return page(request, "event.html", me, err.status, error=str(err),
                        **await run_in_threadpool(event, request, me))
        return RedirectResponse(f"/events/{quote(event_id)}", 303)

    @app.get("/api/events/{event_id}/decisions")
    async def api_decisions(request: Request, event_id: str) -> dict:
        await guard(request, "view")
        ev = (await run_in_threadpool(one, event_id))[1]
        return {k: ev[k] for k in ("event_id", "status", "confirmations", "required", "decisions")}

    @app.post("/api/events/{event_id}/decisions")
    async def api_decide(request: Request, event_id: str) -> dict:
        me, _ = await guard(request, "decide")
        body = json_body(await request.body())
        if not isinstance(body, dict):
            raise Refused(400, 'the body must be a JSON object: {"decision": "confirm|reject|unsure", "note": "..."}')
        return await run_in_threadpool(decide, me, event_id, body.get("decision"), body.get("note") or "")

    @app.get("/api/events/{event_id}/case")
    async def api_case(request: Request, event_id: str) -> dict:
        me, _ = await guard(request, "export")
        return await run_in_threadpool(case, me, event_id)

    def case(me: Session, event_id: str) -> dict:
        """The case file of one event: the event as stored, its decisions, its audit records and the chain's check,
        and the seal that now covers them (a sealed log is sealed first: the export carries a head to keep)."""
        row, _ = one(event_id)
        seal = getattr(audit, "seal", None)  # edge.audit_seal.SealedAuditLog
        sealed = seal() if seal is not None else None
        records = [{"line": no, **rec} for no, rec, _ in tail(audit.path)
                   if rec is not None and rec["kind"] == "review_decision" and rec["data"].get("event_id") == event_id]
        check = verify(audit.path)
        return {"exported_at": utc(time.time()), "exported_by": me.username,
                "event": {k: v for k, v in row.items() if k != "decisions"}, "decisions": row["decisions"],
                "required": required, "audit": records, "audit_head": audit.head(), "audit_seal": sealed,
                "audit_chain": {"ok": check.ok, "records": check.records, "problems": check.problems[:20]},
                "evidence": faces.case(row)}

    def face_image(kind: str, event_id: str, n: int) -> bytes:
        """A face of the event: "evidence" n (the captured chip in slot n) or "reference" n (the n-th enrolled)."""
        opener = faces.captured if kind == "evidence" else faces.reference
        try:
            return opener(one(event_id)[0], n)
        except Unavailable as err:
            raise Refused(err.status, str(err)) from None

    @app.get("/events/{event_id}/{kind}/{n}")
    async def face(request: Request, event_id: str, kind: str, n: str) -> Response:
        """/events/ID/evidence/1|2: the captured faces; /events/ID/reference/1|2: the enrolled ones."""
        await guard(request, "view")
        if kind not in ("evidence", "reference") or n not in ("1", "2"):
            raise Refused(404, "faces are /events/ID/evidence/1 or 2 (captured: the track's best and second best)"
                               " and /events/ID/reference/1 or 2 (enrolled)")
        return _image(await run_in_threadpool(face_image, kind, event_id, int(n)))

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/events/{event_id}/thumbnail")
    async def thumbnail(request: Request, event_id: str) -> Response:  # the best face: evidence slot 1
        await guard(request, "view")
        return _image(await run_in_threadpool(face_image, "evidence", event_id, 1))

    # ------------------------------------------------------------------------------------------ fleet, admin

    @twin("/devices", "/api/devices", "devices.html")
    def devices(request: Request, me: Session) -> dict:
        return {"devices": [device_view(d) for d in store.devices()]}

    @twin("/watchlists", "/api/watchlists", "watchlists.html")
    def watchlists(request: Request, me: Session) -> dict:
        devices = store.devices()
        versions = with_demographics(watchlist_view(devices), store.version_thresholds(), demographics or {},
                                     demographic_bound)
        reviews = store.version_reviews()
        for v in versions:
            v["budget"] = None if v["version"] is None else alert_budget(v["version"], devices,
                                                                         reviews.get(v["version"]))
        return {"versions": versions}

    @twin("/admin", "/api/admin", "admin.html", action="purge")
    def admin(request: Request, me: Session) -> dict:
        purged = {k: request.query_params[k] for k in ("events", "decisions") if k in request.query_params}
        return {"retention_days": retention_days, "purged": purged or None, "users": accounts.users(),
                "counts": store.counts()}

    @app.post("/admin/purge")
    async def admin_purge(request: Request) -> Response:
        result = await run_in_threadpool(purge, (await guard(request, "purge"))[0])
        return RedirectResponse(f"/admin?events={result['events']}&decisions={result['decisions']}", 303)

    @app.post("/api/admin/purge")
    async def api_purge(request: Request) -> dict:
        return await run_in_threadpool(purge, (await guard(request, "purge"))[0])

    return app


def server(app: FastAPI, host: str, port: int, log_level: str = "info",
           trusted_proxies: str | None = None) -> uvicorn.Server:
    """A uvicorn server for `app` (run it with `.run()`; stop it with `.should_exit = True`). X-Forwarded-For and
    -Proto are believed only from `trusted_proxies` (comma-separated addresses, e.g. "127.0.0.1" for a TLS reverse
    proxy on this host, which then makes the cookies Secure); by default from nobody: a local client rotating
    X-Forwarded-For would otherwise get a fresh sign-in rate limit with every request."""
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, proxy_headers=bool(trusted_proxies),
                                         forwarded_allow_ips=trusted_proxies or "", server_header=False,
                                         log_level=log_level, access_log=False))
