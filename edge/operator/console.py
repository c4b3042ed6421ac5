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

import json
import hmac
import logging
import math
import secrets
import time
from datetime import datetime, timezone
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
from edge.messaging.payloads import PayloadError
from edge.messaging.thumbnail import decrypt_thumbnail
from edge.operator.accounts import ROLES, Accounts, Session
from edge.operator.event_store import DECISIONS, STATUSES, EventStore
from edge.vision.demographics import fmr_at, ratio_warning

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


class Refused(Exception):
    """A request the console answers with `status` and a one-line `message` (JSON for /api, a page otherwise)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------------- views (pure)

def _utc(ts: Any) -> str:
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _num(value: Any, digits: int | None = None) -> float | int | None:
    """A number from device-reported JSON, or None (health figures are the device's word, not ours)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return round(value, digits) if digits is not None else value


def event_view(row: dict, decisions: list[dict], labels: dict[str, str], required: int) -> dict:
    """One stored event as the console shows it: the stored columns, what the event body adds, the review state,
    and `text` (the display strings of the queue's columns)."""
    ev = row["event"]
    label = labels.get(row["subject_id"]) or ev.get("label") or row["subject_id"]
    confirmations = len({d["reviewer"] for d in decisions if d["decision"] == "confirm"})
    quality = ev.get("quality") if isinstance(ev.get("quality"), dict) else {}
    margin = _num(ev.get("margin"))
    sim, thr = row["similarity"], row["threshold"]
    view = {k: row[k] for k in ("event_id", "status", "subject_id", "device_id", "seq", "captured_at", "received_at",
                                "watchlist_id", "watchlist_version", "similarity", "threshold")}
    view.update(label=str(label), category=ev.get("category"), margin=margin, chips_used=ev.get("chips_used"),
                quality=quality, embedder_id=ev.get("embedder_id"), track_id=ev.get("track_id"),
                thumbnail=ev.get("thumbnail") is not None, confirmations=confirmations, required=required,
                decisions=decisions)
    view["text"] = {
        "category": str(ev.get("category") or "-"), "device": row["device_id"], "captured": _utc(row["captured_at"]),
        "similarity": f"{sim:.3f} vs {thr:.3f} ({sim - thr:+.3f})",
        "margin": "-" if margin is None else f"{margin:.3f}", "chips": str(ev.get("chips_used", "-")),
        "quality": ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(quality.items())) or "-",
        "watchlist": f"{row['watchlist_id']} v{row['watchlist_version']}", "embedder": str(ev.get("embedder_id", "-")),
        "confirmations": f"{confirmations} / {required}"}
    return view


def device_view(d: dict) -> dict:
    """A device's last reports with the figures the fleet page shows pulled out of its health JSON."""
    health = d["health"] if isinstance(d.get("health"), dict) else {}
    gauges = health.get("gauges") if isinstance(health.get("gauges"), dict) else {}
    temp = _num(health.get("temperature_c"), 1)
    return {**d, "state": {True: "online", False: "offline"}.get(d["online"], "unknown"),
            "fps": _num(health.get("fps"), 1),
            "frames_dropped": _num(gauges.get("frames_dropped")), "outbox_depth": _num(gauges.get("outbox_depth")),
            "temperature_c": temp if temp is not None else _num(gauges.get("cpu_temp_c"), 1),
            "uptime_s": _num(health.get("uptime_s"), 0)}


def watchlist_view(devices: list[dict]) -> list[dict]:
    """[{version, devices: [...]}], newest version first; devices that reported none last (version None)."""
    by: dict[Any, list[dict]] = {}
    for d in devices:
        by.setdefault(d["watchlist_version"], []).append(
            {"device_id": d["device_id"], "state": d["watchlist_state"], "reason": d["watchlist_reason"],
             "online": d["online"]})
    order = sorted((v for v in by if v is not None), reverse=True) + ([None] if None in by else [])
    return [{"version": v, "devices": by[v]} for v in order]


def with_demographics(versions: list[dict], thresholds: dict[int, dict], summaries: dict[str, dict],
                      bound: float) -> list[dict]:
    """Each version of `watchlist_view` with its threshold and embedder (from its events) and, where the embedder's
    summary ships, the within-group false-match rates at that threshold and the ratio warning."""
    out = []
    for v in versions:
        seen = thresholds.get(v["version"]) if v["version"] is not None else None
        entry = dict(v, threshold=None, embedder_id=None, groups=None, warning=None)
        if seen:
            entry.update(threshold=seen["threshold"], embedder_id=seen["embedder_id"])
            summary = summaries.get(seen["embedder_id"])
            if summary:
                rates = fmr_at(summary, seen["threshold"])
                entry.update(groups=dict(sorted(rates.items())), warning=ratio_warning(rates, bound),
                             demographics_source=summary.get("source", ""))
        out.append(entry)
    return out


#: Deepest nesting a JSON request body may have (a decision is one flat object).
MAX_JSON_DEPTH = 4


def json_body(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A request body parsed as JSON, or a 400 `Refused` naming why: not UTF-8 JSON, nested deeper than
    `max_depth` (checked on the bytes before parsing, so `[` × 60,000 never reaches the parser), or an object with
    a duplicate key (which value would count is ambiguous). The size is bounded before this (413 past 64 KiB)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in raw:
        if in_string:
            if escaped:
                escaped = False
            elif ch == 0x5C:  # backslash
                escaped = True
            elif ch == 0x22:  # quote
                in_string = False
        elif ch == 0x22:
            in_string = True
        elif ch in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise Refused(400, f"the body is nested deeper than {max_depth} levels")
        elif ch in (0x5D, 0x7D):
            depth -= 1

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise Refused(400, "the body has a duplicate key: " + next(k for k in keys if keys.count(k) > 1)[:40])
        return dict(pairs)

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refused(400, 'the body is not valid JSON; it must be a JSON object: {"decision": "confirm|reject|unsure", '
                           '"note": "..."}') from None


def _safe_next(target: str) -> str:
    """A local path to go to after sign-in (never another site: `//host`, `/\\host`)."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


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


def create_app(store: EventStore, accounts: Accounts, audit: AuditLog, labels: dict[str, str], required: int,
               retention_days: float | None, *, thumbnail_key: Any = None,
               demographics: dict[str, dict] | None = None, demographic_bound: float = 3.0) -> FastAPI:
    """The console over `store`. labels: subject id → name (`labels_from_build`); required: confirmations that
    confirm an event (the store's own); retention_days: what the admin's purge deletes (None: no purge).
    thumbnail_key: the operator's X25519 private key; without it, encrypted thumbnails stay sealed.
    demographics: embedding space → the model's demographic summary (model manifest), for the per-group
    false-match rates the Watchlists page shows at each version's threshold; demographic_bound: the ratio past which
    it warns."""
    if required != store.required:
        raise DataError(f"the console shows {required} required confirmations but the store applies {store.required}")
    if retention_days is not None and not retention_days > 0:
        raise DataError(f"retention must be a positive number of days, got {retention_days}")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["utc"] = _utc
    env.globals.update(required=required, columns=COLUMNS, statuses=STATUSES, poll_ms=int(POLL_S * 1000),
                       thumbnails=thumbnail_key is not None)
    app = FastAPI(title="edge console", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_BodyLimit)

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
        target = _safe_next(request.query_params.get("next", "/"))
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
        target, username = _safe_next(str(form.get("next") or "/")), str(form.get("username") or "")[:64]
        address = request.client.host if request.client else ""
        try:  # argon2 takes tens of milliseconds: off the event loop
            token, me = await run_in_threadpool(accounts.login, username, str(form.get("password") or "")[:1024],
                                                address)
        except DataError as err:
            status = 429 if str(err).startswith("too many") else 401
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
        events = [event_view(r, store.decisions(r["event_id"]), labels, required)
                  for r in store.queue(int(limit or 100), _float(request, "before"), status)
                  if after is None or r["received_at"] > after]
        sig = ",".join(f"{e['event_id']}:{e['confirmations']}" for e in events)  # the polling script redraws on change
        return {"status": status, "count": store.count(status), "counts": {s: store.count(s) for s in STATUSES},
                "required": required, "sig": sig, "latest": max((e["received_at"] for e in events), default=None),
                "events": events}

    @twin("/events/{event_id}", "/api/events/{event_id}", "event.html")
    def event(request: Request, me: Session) -> dict:
        ev = one(request.path_params["event_id"])[1]
        return {"event": ev, "mine": next((d for d in ev["decisions"] if d["reviewer"] == me.username), None)}

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
        """The case file of one event: the event as stored, its decisions, its audit records and the chain's check."""
        row, _ = one(event_id)
        records = [{"line": no, **rec} for no, rec, _ in tail(audit.path)
                   if rec is not None and rec["kind"] == "review_decision" and rec["data"].get("event_id") == event_id]
        check = verify(audit.path)
        return {"exported_at": _utc(time.time()), "exported_by": me.username,
                "event": {k: v for k, v in row.items() if k != "decisions"}, "decisions": row["decisions"],
                "required": required, "audit": records, "audit_head": audit.head(),
                "audit_chain": {"ok": check.ok, "records": check.records, "problems": check.problems[:20]}}

    @app.get("/events/{event_id}/thumbnail")
    async def thumbnail(request: Request, event_id: str) -> Response:
        await guard(request, "view")
        sealed = (await run_in_threadpool(one, event_id))[0]["event"].get("thumbnail")
        if thumbnail_key is None or sealed is None:
            raise Refused(404, "no thumbnail (none sent, or the console has no operator key to open it)")
        try:
            image = decrypt_thumbnail(sealed, thumbnail_key)
        except PayloadError as err:
            raise Refused(422, str(err)) from None
        return Response(image, media_type="image/jpeg" if image.startswith(b"\xff\xd8") else "image/png")

    # ------------------------------------------------------------------------------------------ fleet, admin

    @twin("/devices", "/api/devices", "devices.html")
    def devices(request: Request, me: Session) -> dict:
        return {"devices": [device_view(d) for d in store.devices()]}

    @twin("/watchlists", "/api/watchlists", "watchlists.html")
    def watchlists(request: Request, me: Session) -> dict:
        return {"versions": with_demographics(watchlist_view(store.devices()), store.version_thresholds(),
                                              demographics or {}, demographic_bound)}

    @twin("/admin", "/api/admin", "admin.html", action="purge")
    def admin(request: Request, me: Session) -> dict:
        purged = {k: request.query_params[k] for k in ("events", "decisions") if k in request.query_params}
        return {"retention_days": retention_days, "purged": purged or None, "users": accounts.users(),
                "counts": {s: store.count(s) for s in STATUSES}}

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
