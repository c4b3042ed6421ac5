"""What the review console shows, computed from stored rows: pure functions on dicts (no I/O, no web framework),
so each figure a reviewer reads can be tested on its own — the event with its evidence slots, the quality in words,
the similarity bar, the fleet, the watchlist versions with their demographic rates and alert budget."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from edge.operator.evidence import EVIDENCE_SLOTS
from edge.vision.demographics import fmr_at, ratio_warning



def utc(ts: Any) -> str:
    """Unix seconds as 'YYYY-MM-DD HH:MM:SSZ' (UTC), '-' for anything else."""
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def num(value: Any, digits: int | None = None) -> float | int | None:
    """A number from device-reported JSON, or None (health figures are the device's word, not ours)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return round(value, digits) if digits is not None else value


def event_view(row: dict, decisions: list[dict], labels: dict[str, str], required: int) -> dict:
    """One stored event as the console shows it: the stored columns, what the event body adds, the review state,
    and `text` (the display strings of the queue's columns)."""
    ev = row["event"]
    label = labels.get(row["subject_id"]) or ev.get("label") or row["subject_id"]
    confirmations = len({d["reviewer"] for d in decisions if d["decision"] == "confirm"})
    quality = _mapping(ev.get("quality"))
    margin = num(ev.get("margin"))
    sim, thr = row["similarity"], row["threshold"]
    view = {k: row[k] for k in ("event_id", "status", "subject_id", "device_id", "seq", "captured_at", "received_at",
                                "watchlist_id", "watchlist_version", "similarity", "threshold")}
    evidence = [slot for slot, key in EVIDENCE_SLOTS.items() if isinstance(ev.get(key), dict)]
    view.update(label=str(label), category=ev.get("category"), margin=margin, chips_used=ev.get("chips_used"),
                quality=quality, embedder_id=ev.get("embedder_id"), track_id=ev.get("track_id"),
                thumbnail=bool(evidence), evidence=evidence, confirmations=confirmations, required=required,
                decisions=decisions, quality_words=quality_words(quality), bar=score_bar(sim, thr, margin))
    view["text"] = {
        "category": str(ev.get("category") or "-"), "device": row["device_id"], "captured": utc(row["captured_at"]),
        "similarity": f"{sim:.3f} vs {thr:.3f} ({sim - thr:+.3f})",
        "margin": "-" if margin is None else f"{margin:.3f}", "chips": str(ev.get("chips_used", "-")),
        "quality": ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in sorted(quality.items())) or "-",
        "watchlist": f"{row['watchlist_id']} v{row['watchlist_version']}", "embedder": str(ev.get("embedder_id", "-")),
        "confirmations": f"{confirmations} / {required}"}
    return view


def _mapping(value: object) -> dict[str, Any]:
    """`value` if it is a JSON object, else {} (device-reported figures are checked before use)."""
    return value if isinstance(value, dict) else {}


def device_view(d: dict) -> dict:
    """A device's last reports with the figures the fleet page shows pulled out of its health JSON."""
    health = _mapping(d.get("health"))
    gauges = _mapping(health.get("gauges"))
    temp = num(health.get("temperature_c"), 1)
    return {**d, "state": {True: "online", False: "offline"}.get(d["online"], "unknown"),
            "fps": num(health.get("fps"), 1),
            "frames_dropped": num(gauges.get("frames_dropped")), "outbox_depth": num(gauges.get("outbox_depth")),
            "temperature_c": temp if temp is not None else num(gauges.get("cpu_temp_c"), 1),
            "uptime_s": num(health.get("uptime_s"), 0)}


def watchlist_view(devices: list[dict]) -> list[dict]:
    """[{version, devices: [...]}], newest version first; devices that reported none last (version None)."""
    by: dict[Any, list[dict]] = {}
    for d in devices:
        by.setdefault(d["watchlist_version"], []).append(
            {"device_id": d["device_id"], "state": d["watchlist_state"], "reason": d["watchlist_reason"],
             "online": d["online"]})
    order = sorted((v for v in by if v is not None), reverse=True) + ([None] if None in by else [])
    return [{"version": v, "devices": by[v]} for v in order]


def with_demographics(versions: list[dict], thresholds: dict[int, dict], summaries: dict[str, dict],
                      bound: float) -> list[dict]:
    """Each version of `watchlist_view` with its threshold and embedder (from its events) and, where the embedder's
    summary ships, the within-group false-match rates at that threshold and the ratio warning."""
    out = []
    for v in versions:
        seen = thresholds.get(v["version"]) if v["version"] is not None else None
        entry = dict(v, threshold=None, embedder_id=None, groups=None, warning=None)
        if seen:
            entry.update(threshold=seen["threshold"], embedder_id=seen["embedder_id"])
            summary = summaries.get(seen["embedder_id"])
            if summary:
                rates = fmr_at(summary, seen["threshold"])
                entry.update(groups=dict(sorted(rates.items())), warning=ratio_warning(rates, bound),
                             demographics_source=summary.get("source", ""))
        out.append(entry)
    return out


# ------------------------------------------------------------------------------------------- for the reviewer

def quality_words(quality: dict) -> str:
    """The deciding chip's quality figures in words, e.g. "eyes 48 px apart, turned slightly left, tilted 9°,
    sharp". Left and right as seen in the picture; "-" when the event reported none."""
    words = []
    eyes = num(quality.get("eye_distance_px"))
    if eyes is not None:
        words.append(f"eyes {eyes:.0f} px apart" + (" (small face)" if eyes < 30 else ""))
    yaw = num(quality.get("yaw"))
    if yaw is not None:  # nose offset from the eyes' midpoint / eye distance: 0 frontal, ~0.5 a strong profile
        side = "right" if yaw > 0 else "left"
        words.append("facing the camera" if abs(yaw) < 0.08 else f"turned slightly {side}" if abs(yaw) < 0.2
                     else f"turned {side}" if abs(yaw) < 0.35 else f"turned far {side} (near profile)")
    roll = num(quality.get("roll_deg"))
    if roll is not None and abs(roll) >= 5:
        words.append(f"tilted {abs(roll):.0f}°")
    sharp = num(quality.get("sharpness"))
    if sharp is not None:  # 1 − blur effect; sharp portraits measure 0.5–0.7
        words.append("sharp" if sharp >= 0.5 else "slightly soft" if sharp >= 0.35 else "blurred")
    return ", ".join(words) or "-"


#: The similarity bar: pixels wide, and the cosine range it spans.
BAR_WIDTH, BAR_LOW, BAR_HIGH = 320, 0.0, 1.0


def score_bar(similarity: float, threshold: float, margin: float | None) -> dict:
    """Pixel positions of the similarity bar (`BAR_WIDTH` px for cosine `BAR_LOW`…`BAR_HIGH`): the similarity's
    fill, the threshold's mark and the margin over the next listed subject (drawn left of the similarity), with
    the words a screen reader gets."""
    def x(value: float) -> int:
        value = value if math.isfinite(value) else BAR_LOW
        return int(round((min(BAR_HIGH, max(BAR_LOW, value)) - BAR_LOW) / (BAR_HIGH - BAR_LOW) * BAR_WIDTH))

    over = similarity - threshold
    runner_up = None if margin is None else similarity - margin
    text = (f"similarity {similarity:.3f}, {abs(over):.3f} {'over' if over >= 0 else 'under'} the threshold"
            f" {threshold:.3f}" + ("" if margin is None else f"; the next listed subject scored {runner_up:.3f}"
                                                              f" ({margin:.3f} lower)"))
    return {"width": BAR_WIDTH, "fill": x(similarity), "threshold": x(threshold),
            "runner_up": None if runner_up is None else x(runner_up), "over": over >= 0, "text": text}


# ------------------------------------------------------------------------------------------- the alert budget

def _sealed_facts(devices: list[dict], version: int) -> dict:
    """Size and sealing figures of `version`, from the status heartbeat of a device running it (device-reported:
    each figure checked to be a number)."""
    for d in devices:
        wl = _mapping(d.get("health")).get("watchlist")
        if isinstance(wl, dict) and wl.get("version") == version:
            sealed = _mapping(wl.get("sealed_for"))
            return {"n_items": num(wl.get("n_items")), "n_subjects": num(wl.get("n_subjects")),
                    "threshold": num(sealed.get("match")), "fpir_target": num(sealed.get("fpir_target")),
                    "predicted_fpir": num(sealed.get("predicted_fpir"))}
    return {"n_items": None, "n_subjects": None, "threshold": None, "fpir_target": None, "predicted_fpir": None}


def _searches_per_day(devices: list[dict], version: int) -> tuple[float | None, int]:
    """(searches a day by the devices running `version`, from each one's searches counter over its uptime; how
    many devices reported one)."""
    total, reporting = 0.0, 0
    for d in devices:
        health = _mapping(d.get("health"))
        wl = _mapping(health.get("watchlist"))
        counters = _mapping(health.get("counters"))
        searches, uptime = num(counters.get("searches")), num(health.get("uptime_s"))
        if wl.get("version") == version and searches is not None and uptime is not None and uptime > 0:
            total += searches / uptime * 86400.0
            reporting += 1
    return (total if reporting else None), reporting


#: Observed false alerts a day past this multiple of the predicted ones raise the "list too big" warning.
ALERT_EXCESS = 2.0
#: Fewest decided events before an observed reject rate is compared with the prediction.
MIN_DECIDED = 5


def alert_budget(version: int, devices: list[dict], reviews: dict | None) -> dict:
    """Prediction beside reality for one watchlist version: its size and the FPIR it was sealed for, the searches a
    day its devices report, the false alerts a day that FPIR predicts (searches × FPIR: an upper bound, since the
    device's k-of-n vote needs several chips to agree), and what the reviewers found — decided events, the reject
    rate and rejected events a day over the time its events span (at least an hour)."""
    facts = _sealed_facts(devices, version)
    per_day, reporting = _searches_per_day(devices, version)
    fpir = facts["predicted_fpir"] if facts["predicted_fpir"] is not None else facts["fpir_target"]
    predicted = per_day * fpir if per_day is not None and fpir is not None else None
    r = reviews or {"pending": 0, "confirmed": 0, "rejected": 0, "first": None, "last": None}
    decided = r["confirmed"] + r["rejected"]
    span = max((r["last"] or 0) - (r["first"] or 0), 3600.0)
    observed = r["rejected"] / span * 86400.0 if decided else None
    warning = None
    if decided >= MIN_DECIDED and predicted is not None and observed is not None \
            and observed > ALERT_EXCESS * max(predicted, 1e-9):
        warning = (f"reviewers rejected {observed:.1f} events a day, over {ALERT_EXCESS:g}× the {predicted:.2f} the "
                   "list's FPIR predicts: the list may be too big for its threshold (re-seal it calibrated for its "
                   "size: `edge watchlist seal --fpir`), or the cameras see harder faces than the calibration data")
    return {**facts, "fpir": fpir, "searches_per_day": per_day, "devices_reporting": reporting,
            "predicted_false_per_day": predicted, "events": decided + r["pending"], "pending": r["pending"],
            "confirmed": r["confirmed"], "rejected": r["rejected"],
            "reject_rate": r["rejected"] / decided if decided else None, "observed_false_per_day": observed,
            "observed_span_s": (r["last"] or 0) - (r["first"] or 0) if decided + r["pending"] else None,
            "warning": warning}
