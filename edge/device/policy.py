"""Per-track match decisions (DESIGN §4): k of the last n embedded chips agree, threshold, margin, cooldown, dedup.

Pure logic: no I/O, no threads, no clock — `now` is passed in seconds (the same clock for every call).

A result *votes* for its top subject when its similarity ≥ threshold and its margin over the best other subject
≥ margin (`PolicyConfig`'s values, or, when those are None, the ones carried by each Match — i.e. the
watchlist bundle's). A decision fires when at least k of a track's last n results vote for the same subject,
or when the track *template* (the quality-weighted mean of ≥ 2 of its chips' embeddings, `Track.template`) votes:
that one search already pools the chips' evidence (`observe_template`).

Dedup and cooldown: each (track, subject) pair is settled at most once — it either fires, or, when the same
subject was decided (by any track) less than `cooldown_s` ago, it is suppressed and counted; either way that
track never raises that subject again. The cooldown runs from the last decision that fired.

A Decision is a candidate for human review, never a verdict: `review_required` is always True.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from edge.config import PolicyConfig  # the `policy:` section is the policy's settings
from edge.types import Candidate, Decision, Match

#: the settings when none are given (frozen, so one shared instance is safe)
DEFAULT_CONFIG = PolicyConfig()


@dataclass(frozen=True)
class _Vote:
    """One embedded result as the window keeps it; subject_id is None when it votes for nobody."""

    subject_id: str | None
    candidate: Candidate | None
    margin: float


@dataclass
class _TrackState:
    first_seen: float
    window: deque[_Vote]
    settled: set[str] = field(default_factory=set)


class DecisionPolicy:
    """Turns per-chip Matchs into per-track Decisions (see the module docstring).

    Counters (also in `stats()`): observed, no_candidates, below_threshold, below_margin (each result counted
    once, threshold checked first), decisions, suppressed_by_cooldown.
    """

    last_outcome: dict[str, Any] | None = None

    def __init__(self, config: PolicyConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self._tracks: dict[int, _TrackState] = {}
        self._last_decided: dict[str, float] = {}  # subject_id → `now` of its last decision that fired
        self.observed = 0
        self.no_candidates = 0
        self.below_threshold = 0
        self.below_margin = 0
        self.decisions = 0
        self.suppressed_by_cooldown = 0
        self.template_observed = 0
        self.template_decisions = 0

    def observe(self, track_id: int, result: Match, now: float, quality: dict[str, Any] | None = None,
                first_seen: float | None = None) -> Decision | None:
        """Add one embedded chip's result for a track; returns a Decision when this result completes a vote.

        quality: passed through to the Decision (e.g. `Quality.to_json()`). first_seen: the track's first
        sighting in seconds (e.g. `Track.first_seen`); default: when this policy first observed the track.
        """
        cfg = self.config
        self.observed += 1
        state, threshold, margin_required, top = self._prepare(track_id, result, now, first_seen)
        vote, outcome = None, "vote"
        if top is None:
            self.no_candidates += 1
            outcome = "no_candidate"
        elif top.similarity < threshold:
            self.below_threshold += 1
            outcome = "below_threshold"
        elif result.margin < margin_required:
            self.below_margin += 1
            outcome = "below_margin"
        else:
            vote = top.subject_id
        self._outcome(outcome, top, threshold)
        state.window.append(_Vote(vote, top, float(result.margin)))
        # Only this result's subject gained a vote, so only it can newly reach k.
        if vote is None or top is None or vote in state.settled:  # (a vote always has a top candidate)
            if vote is not None:
                self._outcome("already_decided", top, threshold)
            return None
        agreeing = [v for v in state.window if v.subject_id == vote]
        if len(agreeing) < cfg.k:
            return None
        return self._fire(track_id, state, vote, top, agreeing, threshold, margin_required, now, quality)

    def _outcome(self, outcome: str, top: Candidate | None, threshold: float) -> None:
        """What the last observation led to (for tracing: the demo explains each appearance with it)."""
        self.last_outcome = {"outcome": outcome, "subject_id": top.subject_id if top else None,
                             "similarity": float(top.similarity) if top else None, "threshold": float(threshold)}

    def observe_template(self, track_id: int, result: Match, chips: int, now: float,
                         quality: dict[str, Any] | None = None, first_seen: float | None = None) -> Decision | None:
        """Add the result of searching a track's template (pooled from `chips` ≥ 2 embedded chips): a vote of its
        own decides. Counted in `template_observed` / `template_decisions`; not part of the k-of-n window."""
        self.template_observed += 1
        state, threshold, margin_required, top = self._prepare(track_id, result, now, first_seen)
        if (top is None or top.similarity < threshold or result.margin < margin_required
                or top.subject_id in state.settled):
            return None  # the per-chip outcome already traced stands
        vote = _Vote(top.subject_id, top, float(result.margin))
        decision = self._fire(track_id, state, top.subject_id, top, [vote], threshold, margin_required, now, quality,
                              chips_used=chips)
        if decision is not None:
            self.template_decisions += 1
        return decision

    def _prepare(self, track_id: int, result: Match, now: float,
                 first_seen: float | None) -> tuple[_TrackState, float, float, Candidate | None]:
        """The track's state (created on first sight), the threshold and margin in force, and the top candidate."""
        cfg = self.config
        state = self._tracks.get(track_id)
        if state is None:
            state = _TrackState(now if first_seen is None else float(first_seen), deque(maxlen=cfg.n))
            self._tracks[track_id] = state
        threshold = result.threshold if cfg.threshold is None else cfg.threshold
        margin_required = result.margin_required if cfg.margin is None else cfg.margin
        top = result.top if result.top is not None else (result.candidates[0] if result.candidates else None)
        return state, float(threshold), float(margin_required), top

    def _fire(self, track_id: int, state: _TrackState, vote: str, top: Candidate, agreeing: list[_Vote],
              threshold: float, margin_required: float, now: float, quality: dict[str, Any] | None,
              chips_used: int | None = None) -> Decision | None:
        cfg = self.config
        state.settled.add(vote)
        last = self._last_decided.get(vote)
        if last is not None and now - last < cfg.cooldown_s:
            self.suppressed_by_cooldown += 1
            self._outcome("cooldown", top, threshold)
            return None
        self._outcome("event", top, threshold)
        self._last_decided[vote] = now
        self._prune(now)
        self.decisions += 1
        sims = [float(v.candidate.similarity) for v in agreeing]  # type: ignore[union-attr]
        return Decision(track_id=track_id, subject_id=vote, label=top.label, category=top.category,
                        similarity=max(sims), similarities=sims, threshold=float(threshold),
                        margin_required=float(margin_required), margin=min(v.margin for v in agreeing),
                        chips_used=chips_used or len(agreeing), first_seen=state.first_seen, decided_at=now,
                        quality=dict(quality or {}))

    def forget(self, track_id: int) -> None:
        """Drop a track's window and dedup state (call when the tracker expires it). Cooldowns are kept."""
        self._tracks.pop(track_id, None)

    def stats(self) -> dict[str, int]:
        """tracks (held), observed, no_candidates, below_threshold, below_margin, decisions, suppressed_by_cooldown,
        template_observed, template_decisions."""
        return {"tracks": len(self._tracks), "observed": self.observed, "no_candidates": self.no_candidates,
                "below_threshold": self.below_threshold, "below_margin": self.below_margin,
                "decisions": self.decisions, "suppressed_by_cooldown": self.suppressed_by_cooldown,
                "template_observed": self.template_observed, "template_decisions": self.template_decisions}

    def _prune(self, now: float) -> None:
        # Keep the cooldown table bounded by the subjects decided within the last cooldown_s.
        stale = [s for s, t in self._last_decided.items() if now - t >= self.config.cooldown_s]
        for subject in stale:
            del self._last_decided[subject]
