"""The MQTT topic tree: pure functions on strings (no network, no paho). The payloads are `edge.messaging.payloads`.

Topics, under a configurable prefix (default `edge`), one subtree per device (DESIGN §6):

    <prefix>/<device>/events                      match events, QoS 1            device → operator
    <prefix>/<device>/events/ack                  {"seqs": [...]} acknowledgements operator → device
    <prefix>/<device>/status                      retained online/offline + health device → operator
    <prefix>/<device>/watchlist/manifest          retained offer of a bundle     operator → device
    <prefix>/<device>/watchlist/chunk/<ver>/<n>   bundle chunk n of version ver  operator → device
    <prefix>/<device>/watchlist/state             installed version or rejection device → operator
    <prefix>/<device>/watchlist/delta/manifest    retained offer of a delta      operator → device
    <prefix>/<device>/watchlist/delta/chunk/<ver>/<n>  delta chunk n             operator → device
    <prefix>/<device>/watchlist/wipe              retained signed wipe statement operator → device
    <prefix>/groups/<group>/watchlist/...         the same five watchlist topics (manifest, chunk, delta/…, wipe)
                                                  for every member of a group: members read, operators write

A device id or prefix level is 1–64 of [A-Za-z0-9._-], so never an MQTT wildcard or a level separator; "groups"
is reserved (it is the group subtree's level) and is never a device id. Every
topic a program routes on goes through `parse_topic`; every refusal is a `TopicError` naming the cause.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from edge.errors import EdgeError

KINDS = ("events", "events_ack", "status", "watchlist_manifest", "watchlist_chunk", "watchlist_state",
         "watchlist_delta", "watchlist_delta_chunk", "watchlist_wipe")
#: The level under the prefix that holds group subtrees (never a device id).
GROUPS = "groups"
#: Watchlist kinds a group subtree has.
GROUP_KINDS = ("watchlist_manifest", "watchlist_chunk", "watchlist_delta", "watchlist_delta_chunk", "watchlist_wipe")
MAX_SEQ = 2**63 - 1  # SQLite's INTEGER range: seqs and watchlist versions
#: A device id, or one level of a topic prefix.
DEVICE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_DEVICE_ID = DEVICE_ID
_CANONICAL_UINT = re.compile(r"(0|[1-9][0-9]{0,18})\Z")


class TopicError(EdgeError):
    """A device id, topic prefix or topic string is not part of our topic tree."""


def is_int(value: object, low: int, high: int = MAX_SEQ) -> bool:
    """`value` is an int (not a bool) in [low, high]."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_device_id(device_id: object) -> str:
    """`device_id` if it is 1–64 of [A-Za-z0-9._-] (so never an MQTT wildcard or a level separator)."""
    if not isinstance(device_id, str) or not _DEVICE_ID.match(device_id):
        raise TopicError(f"device id {device_id!r} is invalid: use 1-64 characters from A-Z a-z 0-9 . _ -"
                         " (no '+', '#' or '/')")
    if device_id == GROUPS:
        raise TopicError(f"device id {GROUPS!r} is reserved for the group subtree; choose another id")
    return device_id


def check_group(group: object) -> str:
    """`group` if it is a valid group name (the same alphabet as device ids)."""
    if not isinstance(group, str) or not _DEVICE_ID.match(group):
        raise TopicError(f"group name {group!r} is invalid: use 1-64 characters from A-Z a-z 0-9 . _ -")
    return group


def _check_prefix(prefix: object) -> str:
    levels = prefix.split("/") if isinstance(prefix, str) else [None]
    if not all(isinstance(lv, str) and _DEVICE_ID.match(lv) for lv in levels):
        raise TopicError(f"topic prefix {prefix!r} is invalid: use '/'-separated levels of 1-64 characters from"
                         " A-Z a-z 0-9 . _ - (no '+', '#', empty or leading/trailing levels)")
    return str(prefix)


class ParsedTopic(NamedTuple):
    """A topic of our tree: kind is one of KINDS; extra is (version, n) for the chunk kinds, () otherwise.
    A group topic has device_id "" and `group` set."""

    device_id: str
    kind: str
    extra: tuple[int, ...]
    group: str | None = None


_KIND_SUFFIX = {"events": "events", "events_ack": "events/ack", "status": "status",
                "watchlist_manifest": "watchlist/manifest", "watchlist_chunk": "watchlist/chunk/+/+",
                "watchlist_state": "watchlist/state", "watchlist_delta": "watchlist/delta/manifest",
                "watchlist_delta_chunk": "watchlist/delta/chunk/+/+", "watchlist_wipe": "watchlist/wipe"}
_SUFFIXES = {tuple(suffix.split("/")): kind for kind, suffix in _KIND_SUFFIX.items() if "+" not in suffix}


def parse_topic(topic: str, prefix: str = "edge") -> ParsedTopic:
    """Split a concrete topic of any device under `prefix` (the operator side); TopicError if it is not ours."""
    _check_prefix(prefix)
    head = prefix + "/"
    if not isinstance(topic, str) or not topic.startswith(head):
        raise TopicError(f"topic {topic!r} is not under prefix {prefix!r}")
    device, _, rest = topic[len(head):].partition("/")
    group = None
    if device == GROUPS:
        group, _, rest = rest.partition("/")
        check_group(group)
        device = ""
    else:
        check_device_id(device)
    levels = tuple(rest.split("/"))
    kind = _SUFFIXES.get(levels)
    extra: tuple[int, ...] = ()
    if kind is None:
        chunk = {("watchlist", "chunk"): "watchlist_chunk", ("watchlist", "delta", "chunk"): "watchlist_delta_chunk"}
        kind = chunk.get(levels[:-2]) if len(levels) >= 4 else None
        if kind and all(_CANONICAL_UINT.match(x) for x in levels[-2:]):
            version, n = int(levels[-2]), int(levels[-1])
            extra = (version, n) if 1 <= version <= MAX_SEQ and n <= MAX_SEQ else ()
        if not extra:
            kind = None
    if kind is not None and (group is None or kind in GROUP_KINDS):
        return ParsedTopic(device, kind, extra, group)
    raise TopicError(f"topic {topic!r} is not one of ours: expected {head}<device>/ followed by events, events/ack,"
                     " status, watchlist/manifest, watchlist/chunk/<version ≥ 1>/<n ≥ 0>, watchlist/state,"
                     f" watchlist/delta/…, watchlist/wipe, or {head}{GROUPS}/<group>/watchlist/…")


def operator_filter(kind: str, prefix: str = "edge") -> str:
    """The subscription filter for `kind` across all devices, e.g. `edge/+/events`."""
    if kind not in _KIND_SUFFIX:
        raise TopicError(f"topic kind {kind!r} is unknown; expected one of {', '.join(KINDS)}")
    return f"{_check_prefix(prefix)}/+/{_KIND_SUFFIX[kind]}"


@dataclass(frozen=True)
class Topics:
    """The topics of one device. `Topics("cam-01")` or `Topics(prefix="site/edge", device_id="cam-01")`."""

    device_id: str
    prefix: str = "edge"

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        _check_prefix(self.prefix)

    def _topic(self, kind: str) -> str:
        return f"{self.prefix}/{self.device_id}/{_KIND_SUFFIX[kind]}"

    @property
    def events(self) -> str:
        return self._topic("events")

    @property
    def events_ack(self) -> str:
        return self._topic("events_ack")

    @property
    def status(self) -> str:
        return self._topic("status")

    @property
    def watchlist_manifest(self) -> str:
        return self._topic("watchlist_manifest")

    @property
    def watchlist_state(self) -> str:
        return self._topic("watchlist_state")

    @property
    def watchlist_chunks(self) -> str:
        """Subscription filter for every chunk of this device: `<prefix>/<device>/watchlist/chunk/+/+`."""
        return self._topic("watchlist_chunk")

    def watchlist_chunk(self, version: int, n: int) -> str:
        """Topic of chunk `n` (≥ 0) of watchlist version `version` (≥ 1)."""
        if not is_int(version, 1) or not is_int(n, 0):
            raise TopicError(f"watchlist chunk needs an integer version ≥ 1 and index ≥ 0, got {version!r}/{n!r}")
        return f"{self.prefix}/{self.device_id}/watchlist/chunk/{version}/{n}"

    def parse(self, topic: str) -> ParsedTopic:
        """`parse_topic(topic, self.prefix)`: any device's topic under this prefix."""
        return parse_topic(topic, self.prefix)


@dataclass(frozen=True)
class WatchlistTopics:
    """The watchlist topics of one source: a device's own subtree or a group's (`for_device` / `for_group`)."""

    base: str  # "<prefix>/<device>/watchlist" or "<prefix>/groups/<group>/watchlist"
    audience: str  # "device:<id>" or "group:<name>", as in the bundle manifest

    @classmethod
    def for_device(cls, device_id: str, prefix: str = "edge") -> "WatchlistTopics":
        return cls(f"{_check_prefix(prefix)}/{check_device_id(device_id)}/watchlist", f"device:{device_id}")

    @classmethod
    def for_group(cls, group: str, prefix: str = "edge") -> "WatchlistTopics":
        return cls(f"{_check_prefix(prefix)}/{GROUPS}/{check_group(group)}/watchlist", f"group:{group}")

    def offer(self, delta: bool = False) -> str:
        """The retained offer topic of the full version (or of the delta)."""
        return f"{self.base}/delta/manifest" if delta else f"{self.base}/manifest"

    def chunk(self, version: int, n: int, delta: bool = False) -> str:
        """Topic of chunk `n` (≥ 0) of the full (or delta) bundle of `version` (≥ 1)."""
        if not is_int(version, 1) or not is_int(n, 0):
            raise TopicError(f"watchlist chunk needs an integer version ≥ 1 and index ≥ 0, got {version!r}/{n!r}")
        return f"{self.base}/{'delta/' if delta else ''}chunk/{version}/{n}"

    @property
    def wipe(self) -> str:
        return f"{self.base}/wipe"


def group_filter(kind: str, prefix: str = "edge") -> str:
    """Subscription filter for `kind` (manifest, delta or wipe) across every group a device may read, e.g.
    `edge/groups/+/watchlist/manifest`; the broker's ACL delivers only the groups the device is a member of."""
    suffix = {"watchlist_manifest": "watchlist/manifest", "watchlist_delta": "watchlist/delta/manifest",
              "watchlist_wipe": "watchlist/wipe"}.get(kind)
    if suffix is None:
        raise TopicError(f"no group filter for topic kind {kind!r}")
    return f"{_check_prefix(prefix)}/{GROUPS}/+/{suffix}"


def watchlist_filters(device_id: str, prefix: str = "edge") -> list[str]:
    """Every filter a device listens to for watchlists: its own offers and wipe, and every group's (the broker's
    ACL delivers only its groups'). Deltas first, so a retained delta is known before the full offer."""
    own = WatchlistTopics.for_device(device_id, prefix)
    groups = [group_filter(k, prefix) for k in ("watchlist_delta", "watchlist_manifest", "watchlist_wipe")]
    return [own.offer(True), own.offer(), own.wipe] + groups
