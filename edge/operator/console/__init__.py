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

from edge.operator.console.app import COLUMNS, POLL_S, create_app, server
from edge.operator.console.base import LOGIN_COOKIE, SESSION_COOKIE, TEMPLATES
from edge.operator.console.data import MAX_NOTE
from edge.operator.console.middleware import MAX_BODY
from edge.operator.console.permissions import PERMISSIONS

__all__ = ["COLUMNS", "LOGIN_COOKIE", "MAX_BODY", "MAX_NOTE", "PERMISSIONS", "POLL_S", "SESSION_COOKIE", "TEMPLATES",
           "create_app", "server"]
