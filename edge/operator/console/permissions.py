"""Who may do what in the console: the one place a session's role is checked against an action. Every route names
its action (`guard`), the templates ask `can(action)`, and /api/me lists the session's actions, all through
`allowed`."""

from __future__ import annotations

from typing import Literal

from edge.operator.accounts import ROLES, Session

#: What a route does: read pages and the API, record a review decision, export a case file, purge old events.
Action = Literal["view", "decide", "export", "purge"]

#: action → the roles allowed it: the console's whole permission model.
PERMISSIONS: dict[Action, frozenset[str]] = {
    "view": frozenset(ROLES), "decide": frozenset({"reviewer", "supervisor", "admin"}),
    "export": frozenset({"supervisor", "admin"}), "purge": frozenset({"admin"})}


def allowed(session: Session | None, action: Action) -> bool:
    """Whether `session` (None: nobody signed in) may do `action`."""
    return session is not None and session.role in PERMISSIONS[action]


def actions(session: Session) -> list[str]:
    """The actions `session` may do, sorted (what /api/me reports as `may`)."""
    return sorted(a for a in PERMISSIONS if allowed(session, a))
