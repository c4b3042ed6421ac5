"""The console assembled: `create_app` checks its arguments, builds the data and the templates, and mounts the
middleware and the route groups (sign-in, events, faces and case files, fleet, admin); `server` serves it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jinja2
import uvicorn
from fastapi import FastAPI

from edge.audit import AuditLog
from edge.errors import DataError
from edge.operator.accounts import Accounts
from edge.operator.console import admin, events, faces, fleet, middleware, sessions
from edge.operator.console.base import TEMPLATES, Console
from edge.operator.console.data import ConsoleData
from edge.operator.event_store import STATUSES, EventStore
from edge.operator.evidence import Evidence
from edge.operator.request_checks import Refused
from edge.operator.views import utc

if TYPE_CHECKING:
    from edge.keys import PrivateKey
    from edge.watchlist.operator.references import References

#: Seconds between the queue page's polls of /api/events.
POLL_S = 3.0
#: The queue's columns after the subject, in order (the template and the polling script both render them).
COLUMNS = ("category", "device", "captured", "similarity", "margin", "chips", "quality", "watchlist", "embedder",
           "confirmations")


def create_app(store: EventStore, accounts: Accounts, audit: AuditLog, labels: dict[str, str], required: int,
               retention_days: float | None, *, thumbnail_key: PrivateKey | None = None,
               references: References | None = None, demographics: dict[str, dict] | None = None,
               demographic_bound: float = 3.0) -> FastAPI:
    """The console over `store`. labels: subject id → name (`labels_from_build`); required: confirmations that
    confirm an event (the store's own); retention_days: what the admin's purge deletes (None: no purge).
    thumbnail_key: the operator's X25519 evidence private key; without it, the faces events carry stay sealed.
    references: the build's enrolled chips (`edge.watchlist.operator.references.References`), shown beside them.
    demographics: embedding space → the model's demographic summary (model manifest), for the per-group
    false-match rates the Watchlists page shows at each version's threshold; demographic_bound: the ratio past which
    it warns."""
    if required != store.required:
        raise DataError(f"the console shows {required} required confirmations but the store applies {store.required}")
    if retention_days is not None and not retention_days > 0:
        raise DataError(f"retention must be a positive number of days, got {retention_days}")
    evidence = Evidence(thumbnail_key, references)
    data = ConsoleData(store, accounts, audit, labels, required, retention_days, evidence, demographics or {},
                       demographic_bound)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["utc"] = utc
    env.globals.update(required=required, columns=COLUMNS, statuses=STATUSES, poll_ms=int(POLL_S * 1000),
                       thumbnails=evidence.can_open, references_on=evidence.has_references)
    console = Console(data, env)

    app = FastAPI(title="edge console", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(middleware.BodyLimit)  # innermost of the three: the last added wraps the others
    app.middleware("http")(middleware.store_unavailable(console))
    app.middleware("http")(middleware.security_headers)
    app.add_exception_handler(Refused, middleware.refused(console))  # type: ignore[arg-type]  # Refused only
    for group in (sessions, events, faces, fleet, admin):  # in this order: the routes are matched in it
        group.register(app, console)
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
