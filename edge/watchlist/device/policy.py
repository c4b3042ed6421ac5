"""The device's install policy as pure functions: what a device holds (`Holding`) and the facts of a verified bundle
(`Offered`) or wipe statement in, a decision out — `Accept`, `Refuse(reason, message)` or `AcceptWipe`. No disk,
no keys, no clock of its own: the store (`edge.watchlist.device.store`) reads, verifies, persists and swaps around
these decisions.

The rules: a bundle must be current (not expired) and built for the embedder the device runs; it may not be older
than the rollback floor (the highest version accepted or wiped), nor a second content for the floor's version
(nor the version a wipe dropped); the floor's version with the same content is already installed; a delta applies
only on exactly its base version and content. A wipe applies to the device it names, or to the group whose list
the device holds, and only when it covers the version held. At start, the installed bundle must match the install
record (`record_conflict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, NamedTuple, Union

from edge.install_state import InstallReason
from edge.watchlist.manifest import parse_time

#: The install record's content hash after a wipe (`edge.watchlist.device.record`).
WIPED = "wiped"


@dataclass(frozen=True)
class Holding:
    """What the policy knows of the device: its id and embedder; the rollback floor (the highest version accepted or
    wiped; None: nothing yet); `content`, the content hash at the floor when it was verified (WIPED after a wipe,
    None when the floor came from a file that no longer verifies); the served version and its audience (None: none)."""

    device_id: str
    embedder_id: str
    embedder_sha256: str
    floor: int | None = None
    content: str | None = None
    version: int | None = None
    audience: str | None = None

    @property
    def wiped(self) -> bool:
        return self.content == WIPED


@dataclass(frozen=True)
class Offered:
    """The facts of a verified bundle the policy decides on (`Offered.of(manifest)`)."""

    watchlist_id: str
    version: int
    kind: str  # "full" or "delta"
    content_sha256: str
    embedder_id: str
    embedder_sha256: str
    expires: str
    audience: str
    n_items: int
    base_version: int | None = None  # a delta's base
    base_content: str | None = None

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> Offered:
        """The facts of a validated manifest."""
        base = manifest["base"] or {}
        return cls(watchlist_id=manifest["watchlist_id"], version=manifest["version"], kind=manifest["kind"],
                   content_sha256=manifest["content_sha256"], embedder_id=manifest["embedder"]["id"],
                   embedder_sha256=manifest["embedder"]["sha256"], expires=manifest["expires"],
                   audience=manifest["audience"], n_items=manifest["n_items"], base_version=base.get("version"),
                   base_content=base.get("content_sha256"))

    @property
    def title(self) -> str:
        """"watchlist <id> v<version>" for the store's messages."""
        return f"watchlist {self.watchlist_id} v{self.version}"

    @property
    def bundle_label(self) -> str:
        """"bundle <id> v<version>" (+ " (delta on vN)"), as `edge.watchlist.manifest.label` words it."""
        delta = f" (delta on v{self.base_version})" if self.kind == "delta" else ""
        return f"bundle {self.watchlist_id} v{self.version}{delta}"


class Accept(NamedTuple):
    """Install it (reason INSTALLED; a delta is rebuilt on the held version first), or it is already the installed
    version (ALREADY_INSTALLED: nothing to do). message: the line the result carries once done."""

    reason: InstallReason
    message: str


class Refuse(NamedTuple):
    """Do not install (or wipe): the reason code and one line for a person."""

    reason: InstallReason
    message: str


class AcceptWipe(NamedTuple):
    """Drop the held list; `floor` becomes the rollback floor (nothing at or below it is installed again)."""

    floor: int
    message: str


Decision = Union[Accept, Refuse]


def embedder_problem(holding: Holding, embedder_id: str, embedder_sha256: str) -> str | None:
    """Why a list built for (embedder_id, embedder_sha256) cannot serve this device; None when it can."""
    if embedder_id != holding.embedder_id or embedder_sha256 != holding.embedder_sha256:
        return (f"it was built for embedder {embedder_id} (sha256 {embedder_sha256[:12]}…), this device"
                f" runs {holding.embedder_id} (sha256 {holding.embedder_sha256[:12]}…): re-enroll the gallery in this"
                " device's embedding space with `edge watchlist build --gallery CSV` (its --embedder) and seal it"
                " again, or set the device's vision.embedder to the list's")
    return None


def decide_install(holding: Holding, offered: Offered, now: datetime) -> Decision:
    """Whether `offered` may replace what the device holds at time `now` (aware). The opener already refuses an
    expired bundle at the same `now`; the rule is stated here too so that the policy is whole."""
    label = offered.title
    if parse_time(offered.expires) <= now:
        return Refuse(InstallReason.EXPIRED, f"{offered.bundle_label} expired at {offered.expires}: the watchlist is"
                                             " stale; ask the operator for a fresh bundle")
    problem = embedder_problem(holding, offered.embedder_id, offered.embedder_sha256)
    if problem:
        return Refuse(InstallReason.WRONG_EMBEDDER, f"{label} refused: {problem}")
    floor, version = holding.floor, offered.version
    if floor is not None and version < floor:
        return Refuse(InstallReason.ROLLBACK, f"{label} refused: version {version} is older than the installed"
                                              f" version {floor} (rollback)")
    # With nothing verified held (the floor came from an unverifiable file), the same version may be re-sent to
    # repair the device; after a wipe it may not.
    if floor is not None and version == floor and holding.content is not None:
        if offered.content_sha256 != holding.content:
            why = "was wiped" if holding.wiped else "is already installed with different content"
            return Refuse(InstallReason.SAME_VERSION_DIFFERENT_CONTENT,
                          f"{label} refused: version {version} {why}; a changed watchlist needs a new version")
        return Accept(InstallReason.ALREADY_INSTALLED, f"{label} is already installed")
    how = ""
    if offered.kind == "delta":
        if holding.version != offered.base_version or holding.content != offered.base_content:
            have = f"v{holding.version}" if holding.version is not None else "nothing"
            return Refuse(InstallReason.BASE_MISSING, f"{label} refused: it is a delta on v{offered.base_version} and"
                                                      f" this device holds {have} (or other content): the full"
                                                      " version is needed")
        how = f" from a delta on v{offered.base_version}"
    return Accept(InstallReason.INSTALLED, f"installed {label}{how} ({offered.n_items} items,"
                                           f" expires {offered.expires})")


def decide_wipe(holding: Holding, statement: Mapping[str, Any]) -> AcceptWipe | Refuse:
    """Whether a verified wipe statement ({"audience", "upto_version", …}) drops what the device holds: it must name
    this device, or the audience of the list it holds, and cover the held version; a statement at or below the
    floor when nothing is held is a replay (unless it names this device and the floor was not a wipe)."""
    upto, audience = int(statement["upto_version"]), str(statement["audience"])
    mine = audience == f"device:{holding.device_id}"
    floor = holding.floor
    if holding.version is None:
        if floor is not None and upto <= floor and (holding.wiped or not mine):
            return Refuse(InstallReason.REPLAYED_WIPE, f"wipe up to v{upto} refused: nothing is installed and"
                                                       f" versions up to v{floor} are already refused")
        if not mine:
            return Refuse(InstallReason.NOT_FOR_THIS_DEVICE, f"wipe for {audience} refused: nothing is installed"
                                                             " from it")
    elif not mine and audience != holding.audience:
        return Refuse(InstallReason.NOT_FOR_THIS_DEVICE, f"wipe for {audience} refused: this device holds a"
                                                         f" watchlist for {holding.audience}")
    elif holding.version > upto:
        return Refuse(InstallReason.REPLAYED_WIPE, f"wipe up to v{upto} refused: v{holding.version} is newer (an"
                                                   " old or replayed statement)")
    new_floor = max(upto, floor or 0)
    return AcceptWipe(new_floor, f"watchlist wiped: versions up to v{new_floor} are refused from now on")


def record_conflict(record: tuple[int, str], version: int, content: str) -> Refuse | None:
    """At start: why a bundle of `version` with content hash `content` may not be installed over the install record
    (version, content sha256): older ("rollback"), or the same version with other content (or wiped); None when it
    may."""
    floor, sha = record
    if version < floor:
        return Refuse(InstallReason.ROLLBACK, f"installed watchlist v{version} is older than v{floor}, the highest"
                                              " this device accepted (rolled back while stopped?)")
    if version == floor and content != sha:
        return Refuse(InstallReason.SAME_VERSION_DIFFERENT_CONTENT, f"installed watchlist v{floor} is not the bundle"
                                                                    " this device accepted as that version")
    return None
