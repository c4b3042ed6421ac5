"""What happened to each appearance of the demo clip (pure): the pipeline's trace (one record per gated or matched
chip: frame, track, horizontal position, outcome) and the events, attributed to the clip's actors by time and
position, turned into one sentence per appearance — an event, or why not (cooldown, below threshold or margin,
the quality gate, never detected)."""

from __future__ import annotations

from collections import Counter, defaultdict


def _actor_at(schedule: list[dict], t: float, x: float) -> int | None:
    """Index of the visible actor whose face centre is nearest to x at time t (seconds), or None."""
    best, best_d = None, 0.25  # farther than a quarter of the frame: nobody's
    for i, a in enumerate(schedule):
        t0, t1 = a["visible_s"]
        if not t0 <= t <= t1:
            continue
        u = (t - t0) / max(1e-6, t1 - t0)
        c0, c1 = a["center_x"]
        d = abs(c0 + (c1 - c0) * u - x)
        if d < best_d:
            best, best_d = i, d
    return best


def explain(schedule: list[dict], trace: list[dict], events: list[dict], fps: float,
            names: dict[str, str]) -> list[str]:
    """One line per appearance. trace: `Pipeline.trace` records; events: as received (with track_id)."""
    votes: dict[int, Counter] = defaultdict(Counter)
    for r in trace:
        actor = _actor_at(schedule, r["frame"] / fps, r["x"])
        if actor is not None:
            votes[r["track"]][actor] += 1
    owner = {track: c.most_common(1)[0][0] for track, c in votes.items()}
    by_actor: dict[int, list[dict]] = defaultdict(list)
    for r in trace:
        if r["track"] in owner:
            by_actor[owner[r["track"]]].append(r)
    lines = []
    for i, a in enumerate(schedule):
        who = names.get(a["listed_as"], a["listed_as"]) if a["listed_as"] else None
        head = (f"{a['photo']} ({'listed as ' + who if who else 'not listed'}, {a['visible_s'][0]}–"
                f"{a['visible_s'][1]} s): ")
        tracks = {t for t, o in owner.items() if o == i}
        mine = [e for e in events if e.get("track_id") in tracks]
        records = by_actor.get(i, [])
        lines.append(head + _why(a, mine, records, names))
    return lines


def _why(actor: dict, events: list[dict], records: list[dict], names: dict[str, str]) -> str:
    listed = actor["listed_as"]
    if events:
        parts = [f"#{e['seq']} {names.get(e['subject_id'], e['subject_id'])} at similarity {e['similarity']:.3f}"
                 for e in events]
        if listed is None or any(e["subject_id"] != listed for e in events):
            return "FALSE MATCH — event " + ", ".join(parts) + " (a reviewer would reject it)"
        return "event " + ", ".join(parts)
    if not records:
        return "no event: the face was never detected and tracked well enough to be gated"
    outcomes = Counter(r["outcome"] for r in records)
    if listed is None:
        best = max((r["similarity"] for r in records if r.get("similarity") is not None), default=None)
        return "no event, as it should be" + (f" (best similarity {best:.3f})" if best is not None else "")
    if outcomes["cooldown"]:
        return ("no event: it matched, but the same subject had an event moments before (cooldown: one event per"
                " subject per cooldown period, so reviewers are not flooded)")
    if outcomes["already_decided"]:
        return "no new event: this track had already produced one"
    own = [r for r in records if r.get("subject_id") == listed and r.get("similarity") is not None]
    if outcomes["below_margin"] and not outcomes["below_threshold"]:
        return "no event: above the threshold but too close to another listed subject (margin)"
    if own:
        best = max(own, key=lambda r: r["similarity"])
        return (f"no event: best similarity {best['similarity']:.3f} stayed below the threshold"
                f" {best['threshold']:.3f} ({len(own)} chips compared)")
    reasons = Counter(r["reason"] for r in records if r["outcome"] == "quality")
    if reasons:
        return "no event: no chip passed the quality gate (" + ", ".join(f"{k} ×{v}" for k, v in
                                                                         reasons.most_common()) + ")"
    return "no event: " + ", ".join(f"{k} ×{v}" for k, v in outcomes.most_common())
