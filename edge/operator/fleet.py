"""The fleet registry (operator side): which devices exist, their X25519 public keys and their groups, and the
broker ACL that follows from it (pure logic on a small JSON file).

File (`fleet.json`, canonical JSON, written atomically):

    {"format": "edge-fleet/1",
     "devices": {"cam-01": {"public_key": "<base64 of the 32 raw X25519 bytes>", "groups": ["patrol"]}, ...}}

A group is the set of devices that name it. `edge watchlist seal --group G` wraps the version's content key to
every member's key; `acl_text` grants each member read access to `<prefix>/groups/<G>/watchlist/#`, so a device
reads its groups' watchlists and nobody else's. Removing a device (or a group membership) takes effect for the
next version sealed, and for the broker once the regenerated ACL is loaded (SIGHUP to mosquitto).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path

from edge.canonical import canonical_json
from edge.durable import atomic_write
from edge.errors import DataError
from edge.messaging.topics import GROUPS, TopicError, check_device_id, check_group

FORMAT = "edge-fleet/1"
#: Largest fleet file read, bytes (≈ 20,000 devices).
MAX_FLEET_BYTES = 8 * 1024 * 1024
MAX_DEVICES = 20_000
MAX_GROUPS_PER_DEVICE = 32
#: Certificate CNs of the operator's tools (their own ACL roles): never device ids.
BROKER_ROLES = ("operator", "operator-publish")


@dataclass
class Fleet:
    """devices: id → {"public_key": raw 32 bytes, "groups": sorted group names}."""

    devices: dict[str, dict] = field(default_factory=dict)

    def add(self, device_id: str, public_key: bytes, groups: list[str], replace: bool = False) -> None:
        """Register a device (DataError if it exists and not `replace`, or on a bad id, key or group)."""
        try:
            check_device_id(device_id)
            for g in groups:
                check_group(g)
        except TopicError as err:
            raise DataError(str(err)) from None
        if device_id in BROKER_ROLES:
            raise DataError(f"device id {device_id!r} is the broker role of an operator tool; choose another id")
        if device_id in self.devices and not replace:
            raise DataError(f"device {device_id!r} is already in the fleet; pass --replace to change it")
        if len(public_key) != 32:
            raise DataError(f"device {device_id!r}: an X25519 public key is 32 bytes, got {len(public_key)}")
        if len(set(groups)) > MAX_GROUPS_PER_DEVICE:
            raise DataError(f"a device may be in at most {MAX_GROUPS_PER_DEVICE} groups")
        if device_id not in self.devices and len(self.devices) >= MAX_DEVICES:
            raise DataError(f"the fleet holds its limit of {MAX_DEVICES} devices")
        self.devices[device_id] = {"public_key": bytes(public_key), "groups": sorted(set(groups))}

    def remove(self, device_id: str) -> None:
        """Unregister a device: it is left out of every version sealed from now on."""
        if self.devices.pop(device_id, None) is None:
            raise DataError(f"device {device_id!r} is not in the fleet")

    def groups(self) -> dict[str, list[str]]:
        """group → its member device ids (sorted)."""
        out: dict[str, list[str]] = {}
        for device_id, d in sorted(self.devices.items()):
            for g in d["groups"]:
                out.setdefault(g, []).append(device_id)
        return out

    def recipients(self, group: str | None = None, device_id: str | None = None) -> dict[str, bytes]:
        """device id → raw public key of a group's members, or of one device; DataError when empty/unknown."""
        if device_id is not None:
            if device_id not in self.devices:
                raise DataError(f"device {device_id!r} is not in the fleet; add it with `edge fleet add`")
            return {device_id: self.devices[device_id]["public_key"]}
        members = {d: v["public_key"] for d, v in sorted(self.devices.items()) if group in v["groups"]}
        if not members:
            raise DataError(f"group {group!r} has no members in the fleet file")
        return members


def load_fleet(path: str | Path, missing_ok: bool = True) -> Fleet:
    """Read a fleet file (an empty fleet when it does not exist and `missing_ok`); DataError naming the problem."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FLEET_BYTES:
            raise DataError(f"{path} is larger than {MAX_FLEET_BYTES} bytes: not a fleet file")
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        if missing_ok:
            return Fleet()
        raise DataError(f"fleet file {path} does not exist; create it with `edge fleet add`") from None
    except (OSError, ValueError, RecursionError) as err:
        raise DataError(f"{path} is not a readable fleet file ({type(err).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("devices"), dict):
        raise DataError(f"{path} is not a {FORMAT} fleet file")
    fleet = Fleet()
    for device_id, d in doc["devices"].items():
        try:
            key = base64.b64decode(d["public_key"], validate=True)
            groups = d["groups"]
            if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
                raise TypeError
        except (KeyError, TypeError, binascii.Error, ValueError):
            raise DataError(f"{path}: device {device_id!r} needs a base64 public_key and a list of groups") from None
        fleet.add(device_id, key, groups)
    return fleet


def save_fleet(path: str | Path, fleet: Fleet) -> None:
    """Write the fleet file atomically (mode 0644: public keys and group names only)."""
    doc = {"format": FORMAT, "devices": {d: {"public_key": base64.b64encode(v["public_key"]).decode("ascii"),
                                             "groups": v["groups"]} for d, v in sorted(fleet.devices.items())}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), canonical_json(doc), 0o644)


_BASE_ACL = """\
# Topic ACL for firmware-config/mosquitto/edge.conf (acl_file), written by `edge fleet acl`. Usernames are
# certificate CNs (use_identity_as_username): a device's CN is its device id, the consumer's CN is "operator".
# Anything not granted here is denied: a denied publish is acknowledged and dropped, a denied message is not
# delivered. The topic prefix "{p}" is the default of the devices' config: if a deployment changes it, regenerate.

# Devices: each reads and writes only its own subtree. Reads are limited to what the operator writes, so a device
# subscribed to {p}/<id>/watchlist/# does not get its own watchlist/state back.
# mosquitto applies `pattern` lines to EVERY user, the operator included: for CN "operator" they grant
# {p}/operator/..., which no device uses. Never issue a device certificate with CN "operator" or "{g}" (the
# group subtree), and only issue device CNs of [a-z0-9-] (no "/", "+" or "#", which would change what %u expands to).
pattern write {p}/%u/events
pattern write {p}/%u/status
pattern write {p}/%u/watchlist/state
pattern read {p}/%u/events/ack
pattern read {p}/%u/watchlist/manifest
pattern read {p}/%u/watchlist/chunk/#
pattern read {p}/%u/watchlist/delta/#
pattern read {p}/%u/watchlist/wipe

# The operator (the event consumer) sees every device's events, status and watchlist state, acknowledges events
# and may offer watchlists to single devices. It does not get write access to watchlist/state, so it cannot forge
# a device's report of what it installed. Group watchlists are the publishing tool's alone (below).
user operator
topic read {p}/+/events
topic read {p}/+/status
topic read {p}/+/watchlist/state
topic write {p}/+/events/ack
topic write {p}/+/watchlist/manifest
topic write {p}/+/watchlist/chunk/#
topic write {p}/+/watchlist/delta/#
topic write {p}/+/watchlist/wipe

# The operator's watchlist tool (`edge watchlist publish`, `edge fleet status`, `edge fleet wipe`) has a
# certificate of its own, CN operator-publish: the broker forces client id = certificate CN
# (use_username_as_clientid), so a second tool under the consumer's CN would knock the consumer off the broker.
# It offers watchlists to devices and groups (reading the current offers to clear what they replace), sends wipes,
# and reads what devices report.
user operator-publish
topic readwrite {p}/+/watchlist/manifest
topic write {p}/+/watchlist/chunk/#
topic readwrite {p}/+/watchlist/delta/manifest
topic write {p}/+/watchlist/delta/chunk/#
topic write {p}/+/watchlist/wipe
topic readwrite {p}/{g}/+/watchlist/manifest
topic readwrite {p}/{g}/+/watchlist/delta/manifest
topic write {p}/{g}/+/watchlist/chunk/#
topic write {p}/{g}/+/watchlist/delta/chunk/#
topic write {p}/{g}/+/watchlist/wipe
topic read {p}/+/watchlist/state
topic read {p}/+/status
"""


def acl_text(fleet: Fleet, prefix: str = "edge", consumers: tuple[str, ...] = ()) -> str:
    """The whole mosquitto ACL file: the fixed roles above, a consumer block for each extra event-consumer CN in
    `consumers` (each `edge events consume` process has its own certificate: the broker makes the CN the client
    id), then one block per device that is in a group, granting read access to its groups' watchlist subtrees (and
    nothing else: members never write there)."""
    lines = [_BASE_ACL.format(p=prefix, g=GROUPS)]
    extra = [c for c in consumers if c not in BROKER_ROLES]
    for name in extra:
        try:
            check_device_id(name)
        except TopicError as err:
            raise DataError(f"consumer name: {err}") from None
        if name in fleet.devices:
            raise DataError(f"consumer name {name!r} is a device of the fleet")
    if extra:
        lines.append("\n# More event consumers (`edge events consume`, one certificate each): the consumer's rights.")
    for name in extra:
        lines += [f"user {name}", f"topic read {prefix}/+/events", f"topic read {prefix}/+/status",
                  f"topic read {prefix}/+/watchlist/state", f"topic write {prefix}/+/events/ack"]
    members = [(d, v["groups"]) for d, v in sorted(fleet.devices.items()) if v["groups"]]
    if members:
        lines.append("\n# Group members (from the fleet file): each reads its groups' watchlists.")
    for device_id, groups in members:
        lines.append(f"user {device_id}")
        lines.extend(f"topic read {prefix}/{GROUPS}/{g}/watchlist/#" for g in groups)
    return "\n".join(lines).rstrip("\n") + "\n"
