"""The operator's review console: a server-rendered web app (FastAPI, Jinja2, uvicorn: this package is their only
importer) over the event store — review queue, one event with its decisions and the decision form, fleet, watchlist
versions, retention — with a JSON twin of every page under /api that follows the same access rules.

The package, one module per concern:

- `app`: `create_app` assembles the rest; `server` serves it with uvicorn.
- `permissions`: which role may do which action (`allowed`), the one place that decides it.
- `data`: `ConsoleData`, every call into the event store, the accounts and the audit log.
- `base`: `Console`, what the routes share — render a page, `guard` an action (session, CSRF, role), a page and its
  JSON twin.
- `middleware`: the body limit, the database-away 503, the security headers, how a refusal is answered.
- route groups: `sessions` (sign-in, sign-out, /api/me), `events` (queue, event, decisions), `faces` (captured and
  enrolled faces, the case export), `fleet` (devices, watchlists), `admin` (users, retention purge).

Every decision and purge is appended to the audit log. Every response carries a CSP with a per-response nonce (only
the templates' own script and style run), no framing, no caching, no referrer.
"""

import importlib
from typing import Any

#: Where each name of the package's API lives; loaded on first use (PEP 562), so importing `data` or `permissions`
#: alone does not load FastAPI, Jinja2 and uvicorn.
_EXPORTS = {"COLUMNS": "app", "POLL_S": "app", "create_app": "app", "server": "app", "LOGIN_COOKIE": "base",
            "SESSION_COOKIE": "base", "TEMPLATES": "base", "MAX_NOTE": "data", "MAX_BODY": "middleware",
            "PERMISSIONS": "permissions"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
