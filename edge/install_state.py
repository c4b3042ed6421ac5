"""The vocabulary of a watchlist install that crosses packages — the store (`edge.watchlist.device`), the sync
(`edge.messaging.sync`), the device's wiring, status, audit and doctor: why an install or wipe ended as it did
(`InstallReason`), what the device serves (`Serving`), one attempt's outcome (`InstallResult`) and the store's
state (`InstalledState`). The enums are str-valued, so JSON, MQTT and audit records carry the same strings as the
bare codes did; `InstalledState.to_dict()` is the dict the status heartbeat and the audit log publish."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10 (requires-python): enum.StrEnum's behaviour, str() and format() give the value
    from enum import Enum

    class StrEnum(str, Enum):
        """`enum.StrEnum` for Python 3.10: members are strings, and str() and f-strings give the bare value."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return str(self.value).__format__(spec)


class InstallReason(StrEnum):
    """Why an install, wipe or sync ended as it did: a stable short code (the `reason` on watchlist/state)."""

    # it worked
    INSTALLED = "installed"
    ALREADY_INSTALLED = "already_installed"
    WIPED = "wiped"
    # the install policy (`edge.watchlist.device.policy`) and the store
    WRONG_EMBEDDER = "wrong_embedder"
    ROLLBACK = "rollback"
    SAME_VERSION_DIFFERENT_CONTENT = "same_version_different_content"
    BASE_MISSING = "base_missing"
    LOAD_FAILED = "load_failed"
    PERSIST_FAILED = "persist_failed"
    UNREADABLE = "unreadable"
    INSTALL_RECORD_INVALID = "install_record_invalid"
    INSTALL_RECORD_MISSING = "install_record_missing"
    NOT_FOR_THIS_DEVICE = "not_for_this_device"
    REPLAYED_WIPE = "replayed_wipe"
    # the bundle or wipe statement itself (`edge.watchlist.frame.BundleError`)
    BAD_MAGIC = "bad_magic"
    TRUNCATED = "truncated"
    OVERSIZED = "oversized"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    MALFORMED_MANIFEST = "malformed_manifest"
    UNSUPPORTED_FORMAT = "unsupported_format"
    NOT_RECIPIENT = "not_recipient"
    EXPIRED = "expired"
    PAYLOAD_MISMATCH = "payload_mismatch"
    UNWRAP_FAILED = "unwrap_failed"
    DECRYPT_FAILED = "decrypt_failed"
    CONTENT_MISMATCH = "content_mismatch"
    BAD_WIPE = "bad_wipe"
    # the sync's download (`edge.messaging.sync`)
    MALFORMED_OFFER = "malformed_offer"
    INCOMING_REFUSED = "incoming_refused"
    SYNC_TIMEOUT = "sync_timeout"
    SYNC_FAILED = "sync_failed"
    SYNC_MISMATCH = "sync_mismatch"


class Serving(StrEnum):
    """What the device serves: a current list, an expired one (still served, or not: watchlist.stale_after_expiry),
    nothing, or nothing because a signed wipe dropped it."""

    OK = "ok"
    STALE = "stale"
    NONE = "none"
    WIPED = "wiped"


@dataclass(frozen=True)
class InstallResult:
    """One install or wipe attempt. ok: the bundle is (now or already) the installed one, or the wipe happened.
    reason: INSTALLED, ALREADY_INSTALLED, WIPED or why it was refused. version: the offered bundle's (or the wipe's)
    version when known. message: one line for a person."""

    ok: bool
    reason: InstallReason
    version: int | None
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", InstallReason(self.reason))


@dataclass(frozen=True)
class Rejection:
    """The last refusal the store recorded: its reason, message and UTC time ("YYYY-MM-DDTHH:MM:SSZ")."""

    reason: InstallReason
    message: str
    at: str

    def to_dict(self) -> dict[str, str]:
        return {"reason": InstallReason(self.reason).value, "message": self.message, "at": self.at}


@dataclass(frozen=True)
class InstalledState:
    """The store's state for status, audit and doctor. For an installed list (`installed`): its version, id, expiry,
    size ("n_items" templates, "n_subjects") and what it was sealed for ("sealed_for": the match threshold, the FPIR
    target and the predicted FPIR, when the operator's seal recorded them) — the operator's alert budget reads them
    from the status heartbeat."""

    state: Serving
    version: int | None = None
    watchlist_id: str | None = None
    expires: str | None = None
    last_rejection: Rejection | None = None
    n_items: int | None = None
    n_subjects: int | None = None
    sealed_for: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", Serving(self.state))

    @property
    def installed(self) -> bool:
        """A list is installed (served, or stale)."""
        return self.state in (Serving.OK, Serving.STALE)

    def to_dict(self) -> dict[str, Any]:
        """The published form: {"version", "watchlist_id", "state", "expires", "last_rejection"}, and for an
        installed list "n_items", "n_subjects", "sealed_for" too (plain strings and numbers, in this order)."""
        out: dict[str, Any] = {"version": self.version, "watchlist_id": self.watchlist_id, "state": self.state.value,
                               "expires": self.expires,
                               "last_rejection": self.last_rejection.to_dict() if self.last_rejection else None}
        if self.installed:
            out.update(n_items=self.n_items, n_subjects=self.n_subjects, sealed_for=dict(self.sealed_for))
        return out
