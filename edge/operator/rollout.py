"""Watchlist rollout status (operator side, pure): the devices' retained `watchlist/state` and `status` messages
turned into one report — per device the installed version, last seen and any rejection; per version how many
devices run it. Input is untrusted broker traffic: malformed messages are counted, never raised."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from edge.messaging.payloads import PayloadError, decode_status, decode_watchlist_state
from edge.messaging.topics import TopicError, parse_topic


def rollout(messages: Iterable[tuple[str, bytes]], fleet_ids: Iterable[str] = (), prefix: str = "edge") -> dict:
    """{"devices": [{device_id, in_fleet, online, last_seen, installed_version, state, reason, message}],
    "versions": {"<v>": n_devices}, "not_reporting": [ids in the fleet with no report], "malformed": n}."""
    devices: dict[str, dict[str, Any]] = {}
    malformed = 0
    fleet = set(fleet_ids)

    def entry(device_id: str) -> dict[str, Any]:
        return devices.setdefault(device_id, {"device_id": device_id, "in_fleet": device_id in fleet, "online": None,
                                              "last_seen": None, "installed_version": None, "state": None,
                                              "reason": None, "message": None})

    for topic, payload in messages:
        try:
            parsed = parse_topic(topic, prefix)
            if parsed.kind == "watchlist_state":
                st = decode_watchlist_state(payload)
                entry(parsed.device_id).update(installed_version=st.installed_version, state=st.state,
                                               reason=st.reason, message=st.message)
            elif parsed.kind == "status":
                status = decode_status(payload)
                e = entry(parsed.device_id)
                e["online"] = status.state == "online"
                seen = status.health.get("reported_at")
                e["last_seen"] = seen if isinstance(seen, str) and len(seen) <= 32 else None
        except (TopicError, PayloadError):
            malformed += 1
    versions = Counter(str(d["installed_version"]) for d in devices.values() if d["installed_version"] is not None)
    return {"devices": [devices[d] for d in sorted(devices)],
            "versions": dict(sorted(versions.items(), key=lambda kv: -int(kv[0]))),
            "not_reporting": sorted(fleet - set(devices)), "malformed": malformed}


def render(report: dict) -> str:
    """The report as a table for a terminal."""
    rows = [("DEVICE", "ONLINE", "LAST SEEN", "VERSION", "STATE", "REASON")]
    for d in report["devices"]:
        online = "-" if d["online"] is None else ("yes" if d["online"] else "no")
        rows.append((d["device_id"] + ("" if d["in_fleet"] else " (not in fleet)"), online, d["last_seen"] or "-",
                     str(d["installed_version"] or "-"), d["state"] or "-", d["reason"] or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    versions = ", ".join(f"v{v}: {n} device{'s' if n != 1 else ''}" for v, n in report["versions"].items())
    lines.append(f"versions: {versions or 'none installed'}")
    if report["not_reporting"]:
        lines.append(f"in the fleet but never reported: {', '.join(report['not_reporting'])}")
    if report["malformed"]:
        lines.append(f"{report['malformed']} malformed retained message(s) ignored")
    return "\n".join(lines)
