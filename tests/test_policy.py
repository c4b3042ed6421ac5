"""DecisionPolicy: k-of-n votes per track, threshold and margin, one decision per (track, subject), cooldown."""

import json

import pytest

from edge.device.policy import Decision, DecisionPolicy, PolicyConfig
from edge.types import Candidate, MatchResult

SUBJECTS = {"s1": ("Alice", "missing"), "s2": ("Bob", "wanted"), "s3": ("Carol", "vip")}


def result(subject: str | None, sim: float = 0.7, second: float | None = 0.4, threshold: float = 0.6,
           margin_required: float = 0.1) -> MatchResult:
    """A MatchResult whose top candidate is `subject` at `sim`, with another subject at `second` (None: alone)."""
    if subject is None:
        return MatchResult([], False, threshold, margin_required, 0.0)
    label, category = SUBJECTS[subject]
    cands = [Candidate(subject, label, category, sim, 1)]
    if second is not None:
        other = "s3" if subject != "s3" else "s2"
        cands.append(Candidate(other, *SUBJECTS[other], second, 2))
    gap = sim - second if second is not None else 1.0
    matched = sim >= threshold and gap >= margin_required
    return MatchResult(cands, matched, threshold, margin_required, gap, cands[0])


def test_k_of_n_fires_exactly_once_with_the_evidence():
    policy = DecisionPolicy(PolicyConfig(k=2, n=3))
    assert policy.observe(7, result("s1", 0.70), now=10.0, quality={"sharpness": 80.0}) is None
    d = policy.observe(7, result("s1", 0.75, second=0.5), now=10.5, quality={"sharpness": 120.0})
    assert isinstance(d, Decision)
    assert (d.track_id, d.subject_id, d.label, d.category) == (7, "s1", "Alice", "missing")
    assert d.similarity == pytest.approx(0.75) and d.similarities == pytest.approx([0.70, 0.75])
    assert d.margin == pytest.approx(0.25)  # the smallest of 0.30 and 0.25
    assert (d.threshold, d.margin_required, d.chips_used) == (0.6, 0.1, 2)
    assert (d.first_seen, d.decided_at, d.quality) == (10.0, 10.5, {"sharpness": 120.0})
    assert d.review_required is True
    for t in (11.0, 11.5, 12.0):  # more agreeing chips on the same track never raise it again
        assert policy.observe(7, result("s1", 0.9), now=t) is None
    assert policy.decisions == 1


def test_k_minus_one_agreeing_results_do_not_fire():
    policy = DecisionPolicy(PolicyConfig(k=3, n=5))
    assert policy.observe(1, result("s1"), now=0.0) is None
    assert policy.observe(1, result("s1"), now=0.1) is None
    assert policy.observe(1, result(None), now=0.2) is None
    assert policy.decisions == 0
    assert policy.observe(1, result("s1"), now=0.3).chips_used == 3


def test_votes_outside_the_last_n_do_not_count():
    policy = DecisionPolicy(PolicyConfig(k=2, n=3))
    policy.observe(1, result("s1"), now=0.0)
    policy.observe(1, result("s2"), now=0.1)
    policy.observe(1, result("s2", 0.5), now=0.2)  # below threshold: no vote
    assert policy.observe(1, result("s1"), now=0.3) is None  # the first s1 vote has left the window of 3
    assert policy.observe(1, result("s1"), now=0.4).similarities == pytest.approx([0.7, 0.7])


def test_disagreeing_subjects_do_not_fire():
    policy = DecisionPolicy(PolicyConfig(k=2, n=3))
    for i, subject in enumerate(["s1", "s2", "s3", "s1", "s2", "s3"]):
        assert policy.observe(1, result(subject), now=float(i)) is None
    assert policy.decisions == 0 and policy.observed == 6


def test_margin_rule_blocks_close_calls_and_counts_them():
    policy = DecisionPolicy(PolicyConfig(k=2, n=3))
    # Similar enough, but the runner-up is within the required 0.1 margin.
    assert policy.observe(1, result("s1", 0.70, second=0.65), now=0.0) is None
    assert policy.observe(1, result("s1", 0.72, second=0.66), now=0.1) is None
    assert policy.observe(1, result("s1", 0.50, second=0.49), now=0.2) is None
    assert (policy.decisions, policy.below_margin, policy.below_threshold) == (0, 2, 1)
    # A lone candidate has margin 1.0.
    assert policy.observe(2, result("s1", second=None), now=0.3) is None
    assert policy.observe(2, result("s1", second=None), now=0.4).margin == 1.0


def test_cooldown_suppresses_the_same_subject_across_tracks_then_lets_it_through():
    policy = DecisionPolicy(PolicyConfig(k=2, n=3, cooldown_s=60.0))
    policy.observe(1, result("s1"), now=0.0)
    assert policy.observe(1, result("s1"), now=1.0) is not None
    # The same person re-acquired as a new track 30 s later: suppressed, counted once for that pair.
    policy.observe(2, result("s1"), now=30.0)
    assert policy.observe(2, result("s1"), now=31.0) is None
    assert policy.observe(2, result("s1"), now=90.0) is None  # the pair is settled, even after the cooldown
    assert policy.suppressed_by_cooldown == 1
    # Another subject is not affected by s1's cooldown.
    policy.observe(3, result("s2"), now=32.0)
    assert policy.observe(3, result("s2"), now=33.0).subject_id == "s2"
    # A fresh track after the cooldown (measured from the decision that fired, at t=1) decides again.
    policy.observe(4, result("s1"), now=60.5)
    assert policy.observe(4, result("s1"), now=61.0) is not None
    assert policy.stats() == {"tracks": 4, "observed": 9, "no_candidates": 0, "below_threshold": 0,
                              "below_margin": 0, "decisions": 3, "suppressed_by_cooldown": 1,
                              "template_observed": 0, "template_decisions": 0}


def test_one_track_may_raise_two_different_subjects_once_each():
    policy = DecisionPolicy(PolicyConfig(k=1, n=1))
    assert policy.observe(1, result("s1"), now=0.0).subject_id == "s1"
    assert policy.observe(1, result("s2"), now=0.1).subject_id == "s2"
    assert policy.observe(1, result("s1"), now=0.2) is None


def test_forget_drops_the_window_and_the_dedup_but_keeps_the_cooldown():
    policy = DecisionPolicy(PolicyConfig(k=2, n=3, cooldown_s=10.0))
    policy.observe(1, result("s2"), now=0.0)
    policy.forget(1)
    assert policy.observe(1, result("s2"), now=0.1) is None  # the earlier vote was forgotten
    assert policy.observe(1, result("s2"), now=0.2) is not None
    policy.forget(1)
    policy.forget(99)  # unknown ids are fine
    policy.observe(1, result("s2"), now=5.0)
    assert policy.observe(1, result("s2"), now=5.1) is None  # a reused id is still under s2's cooldown
    assert policy.suppressed_by_cooldown == 1
    policy.forget(1)
    policy.observe(1, result("s2"), now=11.0)
    d = policy.observe(1, result("s2"), now=11.1)
    assert d is not None and d.first_seen == 11.0
    assert policy.stats()["tracks"] == 1


def test_each_results_own_threshold_applies_unless_the_config_overrides_it():
    # The bundle's threshold (carried by each MatchResult) is 0.6 and its margin 0.1.
    own = DecisionPolicy(PolicyConfig(k=2, n=2))
    own.observe(1, result("s1", 0.55, second=0.2), now=0.0)
    assert own.observe(1, result("s1", 0.58, second=0.2), now=0.1) is None
    assert own.below_threshold == 2
    stricter_result = result("s1", 0.65, second=0.2, threshold=0.7)
    own.observe(2, stricter_result, now=0.2)
    assert own.observe(2, result("s1", 0.65, second=0.2, threshold=0.7), now=0.3) is None

    override = DecisionPolicy(PolicyConfig(k=2, n=2, threshold=0.5, margin=0.05))
    override.observe(1, result("s1", 0.55, second=0.48), now=0.0)
    d = override.observe(1, result("s1", 0.58, second=0.52), now=0.1)
    assert d is not None and (d.threshold, d.margin_required) == (0.5, 0.05)
    strict = DecisionPolicy(PolicyConfig(k=1, n=1, threshold=0.8))
    assert strict.observe(1, result("s1", 0.75), now=0.0) is None and strict.below_threshold == 1


def test_empty_results_count_as_no_vote():
    policy = DecisionPolicy(PolicyConfig(k=1, n=2))
    assert policy.observe(1, result(None), now=0.0) is None
    assert policy.no_candidates == 1


def test_first_seen_can_come_from_the_tracker():
    policy = DecisionPolicy(PolicyConfig(k=1, n=1))
    assert policy.observe(3, result("s1"), now=5.0, first_seen=2.5).first_seen == 2.5


def test_decision_to_json_is_review_only_and_serialisable():
    policy = DecisionPolicy(PolicyConfig(k=2, n=3))
    policy.observe(4, result("s1", 0.712345), now=1.0)
    d = policy.observe(4, result("s1", 0.8), now=2.0, quality={"eye_distance_px": 41.2})
    doc = json.loads(json.dumps(d.to_json()))
    assert doc == {"track_id": 4, "subject_id": "s1", "label": "Alice", "category": "missing", "similarity": 0.8,
                   "similarities": [0.7123, 0.8], "threshold": 0.6, "margin_required": 0.1, "margin": 0.3123,
                   "chips_used": 2, "first_seen": 1.0, "decided_at": 2.0, "quality": {"eye_distance_px": 41.2},
                   "review_required": True}


@pytest.mark.parametrize("kwargs, key, message", [
    ({"k": 0}, "k", "greater than or equal to 1"),
    ({"k": 3, "n": 2}, "k", "must be ≤ policy.n (2)"),
    ({"cooldown_s": -1.0}, "cooldown_s", "greater than or equal to 0"),
])
def test_bad_config_is_refused_with_a_clear_message(kwargs, key, message):
    """One class for the config file and the code: a bad value in code is pydantic's error naming the key."""
    with pytest.raises(ValueError) as err:
        PolicyConfig(**kwargs)
    errors = err.value.errors()
    assert len(errors) == 1 and errors[0]["loc"] in ((key,), ()) and message in errors[0]["msg"]


def test_a_track_template_vote_decides_alone_and_respects_dedup_and_cooldown():
    policy = DecisionPolicy(PolicyConfig(k=2, n=3, threshold=0.75, cooldown_s=60))
    assert policy.observe(1, result("s1", 0.70), now=1.0) is None  # chip below threshold: no vote
    assert policy.observe_template(1, result("s2", 0.70), chips=2, now=1.1) is None  # template below threshold
    d = policy.observe_template(1, result("s1", 0.80, second=0.5), chips=3, now=1.2)
    assert d is not None and d.subject_id == "s1" and d.chips_used == 3 and d.similarities == [0.80]
    assert policy.observe_template(1, result("s1", 0.85), chips=4, now=1.3) is None  # settled for this track
    assert (policy.observe(1, result("s1", 0.9), now=1.4) is None
            and policy.observe(1, result("s1", 0.9), now=1.5) is None)
    assert policy.observe_template(2, result("s1", 0.9), chips=2, now=2.0) is None  # cooldown across tracks
    st = policy.stats()
    assert (st["template_observed"], st["template_decisions"], st["suppressed_by_cooldown"]) == (4, 1, 1)
