"""Console accounts: local users with argon2id password hashes (argon2-cffi; its only importer), roles, and
server-side sessions (a random token in an HttpOnly cookie; the database keeps only its sha256, a per-session
CSRF token and an expiry), plus a per-user and per-address login rate limit.

Refusals are typed (`AccountError` and its kinds, all `DataError`s), so a caller decides by class, never by the
message's wording."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable

from edge.errors import DataError
from edge.operator.db import Database

ROLES = ("reviewer", "supervisor", "admin")
USERNAME = re.compile(r"[a-z][a-z0-9._-]{1,31}\Z")
MIN_PASSWORD = 10
SESSION_S = 8 * 3600.0
#: Failed sign-ins allowed per user name and per client address within LOCKOUT_S seconds.
MAX_FAILURES = 5
LOCKOUT_S = 300.0


class AccountError(DataError):
    """An account operation refused: a bad user name, password or role, an existing user, failed credentials."""


class WrongCredentials(AccountError):
    """A sign-in with an unknown user name, a wrong password or a disabled account (which of them is not said)."""


class TooManyAttempts(AccountError):
    """A sign-in refused unchecked: the user name or the client address failed too often within LOCKOUT_S."""


_HASHER: list = []  # [PasswordHasher, dummy hash], made on first use: argon2 is the operator extra's, not a device's


def _argon2():
    """(hasher, a dummy hash for timing, the exceptions verify raises); DataError naming the extra if missing."""
    try:
        from argon2 import PasswordHasher
        from argon2.exceptions import InvalidHashError, VerificationError
    except ImportError:
        raise DataError("the console needs the operator extra: pip install 'edge-watchlist[operator]'") from None
    if not _HASHER:
        hasher = PasswordHasher()
        _HASHER.extend([hasher, hasher.hash("not a real password, for timing")])
    return _HASHER[0], _HASHER[1], (VerificationError, InvalidHashError)


@dataclass(frozen=True)
class Session:
    """A signed-in user: name, role (one of ROLES), the session's CSRF token and its expiry (unix seconds)."""

    username: str
    role: str
    csrf: str
    expires_at: float


#: Keys (user names, addresses) the sign-in limiter remembers at most: with rotated names and addresses an
#: unbounded table grows without end; past this the least recently failed key is forgotten first.
MAX_TRACKED = 10_000


class FailureLimiter:
    """Failed sign-ins per key in a sliding window of `window` seconds, bounded in memory: at most `max_keys` keys
    (least recently failed forgotten first) and `limit` timestamps each. Thread-safe."""

    def __init__(self, limit: int, window: float, max_keys: int = MAX_TRACKED,
                 clock: Callable[[], float] = time.time) -> None:
        self.limit, self.window, self.max_keys, self.clock = limit, window, max_keys, clock
        self._failures: OrderedDict[str, deque] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._failures)

    def limited(self, key: str) -> bool:
        """Whether `key` has `limit` failures within the window (looking never adds a key)."""
        now = self.clock()
        with self._lock:
            q = self._failures.get(key)
            if q is None:
                return False
            while q and now - q[0] > self.window:
                q.popleft()
            if not q:
                del self._failures[key]
            return len(q) >= self.limit

    def fail(self, *keys: str) -> None:
        """Record one failure for each key."""
        now = self.clock()
        with self._lock:
            for key in keys:
                q = self._failures.pop(key, None) or deque(maxlen=self.limit)
                q.append(now)
                self._failures[key] = q  # most recent last
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)


class Accounts:
    """Users and sessions in the operator database."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db, self.clock = db, clock
        self.limiter = FailureLimiter(MAX_FAILURES, LOCKOUT_S, clock=lambda: self.clock())

    def add_user(self, username: str, password: str, role: str = "reviewer") -> None:
        """Create an account; AccountError for a bad name, a short password, an unknown role or an existing user."""
        if not USERNAME.match(username):
            raise AccountError(f"user name {username!r}: 2-32 of a-z 0-9 . _ -, starting with a letter")
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        with self.db.transaction() as cur:
            if cur.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchall():
                raise AccountError(f"user {username!r} exists")
            cur.execute("INSERT INTO users (username, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
                        (username, _argon2()[0].hash(password), role, self.clock()))

    def users(self) -> list[dict]:
        """Every account as {username, role, disabled}, by name."""
        return [{"username": r[0], "role": r[1], "disabled": bool(r[2])}
                for r in self.db.query("SELECT username, role, disabled FROM users ORDER BY username")]

    def _limited(self, key: str) -> bool:
        return self.limiter.limited(key)

    def _fail(self, *keys: str) -> None:
        self.limiter.fail(*keys)

    def login(self, username: str, password: str, address: str = "") -> tuple[str, Session]:
        """(session token for the cookie, Session); WrongCredentials for bad credentials, TooManyAttempts past the
        rate limit (DataError if the operator extra is missing)."""
        if self._limited(f"u:{username}") or self._limited(f"a:{address}"):
            raise TooManyAttempts("too many failed sign-ins: wait a few minutes")
        hasher, dummy, errors = _argon2()
        rows = self.db.query("SELECT password_hash, role, disabled FROM users WHERE username = ?", (username,))
        stored = rows[0][0] if rows else dummy
        try:
            ok = hasher.verify(stored, password) and bool(rows) and not rows[0][2]
        except errors:
            ok = False
        if not ok:
            self._fail(f"u:{username}", f"a:{address}")
            raise WrongCredentials("wrong user name or password")
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = self.clock() + SESSION_S
        with self.db.transaction() as cur:
            cur.execute("INSERT INTO sessions (token_sha256, username, csrf, created_at, expires_at) VALUES"
                        " (?, ?, ?, ?, ?)", (_sha(token), username, csrf, self.clock(), expires))
        return token, Session(username, rows[0][1], csrf, expires)

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie token, or None."""
        if not token or len(token) > 128:
            return None
        rows = self.db.query("SELECT s.username, u.role, s.csrf, s.expires_at, u.disabled FROM sessions s JOIN users u"
                             " ON u.username = s.username WHERE s.token_sha256 = ?", (_sha(token),))
        if not rows or rows[0][3] < self.clock() or rows[0][4]:
            return None
        return Session(rows[0][0], rows[0][1], rows[0][2], rows[0][3])

    def logout(self, token: str | None) -> None:
        """End the session of a cookie token (none: nothing to do)."""
        if token:
            with self.db.transaction() as cur:
                cur.execute("DELETE FROM sessions WHERE token_sha256 = ?", (_sha(token),))

    @staticmethod
    def csrf_ok(session: Session, submitted: str | None) -> bool:
        """Whether `submitted` is the session's CSRF token (compared in constant time)."""
        return bool(submitted) and hmac.compare_digest(session.csrf, str(submitted))


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
