"""Tracker: stable ids, no swaps when IoU separates faces, timeouts, and the embed budget / improvement rule."""

import numpy as np
import pytest

from edge.device.track import Track, Tracker, greedy_assign, iou_matrix, quality_score
from edge.types import Detection
from edge.vision.quality import Quality


def det(x: float, y: float, size: float = 100.0, score: float = 0.9) -> Detection:
    """A square face box at (x, y) with plausible keypoints (eyes 40 % of the box apart)."""
    kp = np.array([[x + 0.3 * size, y + 0.4 * size], [x + 0.7 * size, y + 0.4 * size], [x + 0.5 * size, y + 0.6 * size],
                   [x + 0.5 * size, y + 0.8 * size], [x, y + 0.5 * size], [x + size, y + 0.5 * size]], np.float32)
    return Detection((x, y, x + size, y + size), score, kp)


def test_iou_matrix_and_greedy_assignment():
    a = np.array([[0, 0, 10, 10], [20, 0, 30, 10]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [100, 100, 110, 110]])
    iou = iou_matrix(a, b)
    assert iou.shape == (2, 3)
    assert iou[0, 1] == pytest.approx(1.0) and iou[0, 0] == pytest.approx(50 / 150) and iou[1, 2] == 0.0
    assert greedy_assign(iou, 0.3) == [(0, 1)]  # row 0 takes its best column, not the first above threshold
    contested = np.array([[0.9, 0.5], [0.8, 0.0]])
    assert greedy_assign(contested, 0.3) == [(0, 0)]  # greedy: row 1's only option was taken
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)


def test_ids_stay_stable_while_boxes_move():
    tracker = Tracker()
    ids = None
    for i in range(20):
        t = i * 0.1
        tracks = tracker.update([det(100 + 8 * i, 100 + 3 * i), det(500 - 5 * i, 300)], now=t)
        now_ids = [tr.track_id for tr in tracks]
        ids = ids or now_ids
        assert now_ids == ids == [1, 2]
    assert tracker.tracks_created == 2 and tracker.expired() == []
    first = tracker.tracks[0]
    assert (first.hits, first.first_seen, first.last_seen) == (20, 0.0, pytest.approx(1.9))
    assert first.detection.box[0] == 100 + 8 * 19


def test_update_returns_tracks_in_detection_order():
    tracker = Tracker()
    tracker.update([det(0, 0), det(300, 0)], now=0.0)
    tracks = tracker.update([det(305, 0), det(5, 0)], now=0.1)
    assert [t.track_id for t in tracks] == [2, 1]


def test_crossing_faces_keep_their_ids_when_iou_separates_them():
    # A walks right, B walks left, B a little lower (as faces at different heights are): near the crossing both
    # tracks overlap both detections above the threshold, but each detection overlaps its own track's last box more.
    tracker = Tracker(iou_threshold=0.3)
    a_x, b_x = 0.0, 400.0
    t = 0.0
    tracker.update([det(a_x, 100), det(b_x, 130)], now=t)
    saw_ambiguous = False
    while a_x < 400:
        prev_a, prev_b = a_x, b_x
        a_x += 20
        b_x -= 20
        t += 0.05
        # Hand the detections over in swapped order so position in the list cannot explain the result.
        tracks = tracker.update([det(b_x, 130), det(a_x, 100)], now=t)
        assert [tr.track_id for tr in tracks] == [2, 1], f"swap at a_x={a_x}"
        iou = iou_matrix(np.array([det(prev_a, 100).box, det(prev_b, 130).box]),
                         np.array([det(b_x, 130).box, det(a_x, 100).box]))
        saw_ambiguous |= bool(iou[0, 0] >= 0.3 and iou[1, 1] >= 0.3)  # each track also overlaps the other face
    assert saw_ambiguous
    assert tracker.tracks_created == 2


def test_track_expires_after_max_age_and_a_returning_face_gets_a_new_id():
    tracker = Tracker(max_age_s=1.0)
    tracker.update([det(100, 100)], now=0.0)
    tracker.update([], now=0.5)
    tracker.update([], now=1.0)  # exactly max_age_s unseen: still alive
    assert tracker.expired() == [] and len(tracker.tracks) == 1
    tracks = tracker.update([det(100, 100)], now=1.0)
    assert [t.track_id for t in tracks] == [1]
    tracker.update([], now=2.01)
    assert tracker.expired() == [1]
    assert tracker.expired() == []  # drained
    tracks = tracker.update([det(100, 100)], now=2.1)
    assert [t.track_id for t in tracks] == [2]
    assert tracker.stats() == {"live": 1, "tracks_created": 2, "tracks_expired": 1}


def test_stale_track_is_aged_out_before_association():
    tracker = Tracker(max_age_s=1.0)
    tracker.update([det(100, 100)], now=0.0)
    tracks = tracker.update([det(100, 100)], now=5.0)  # same place, but far too late to be the same track
    assert [t.track_id for t in tracks] == [2]
    assert tracker.expired() == [1]


def test_unmatched_detection_starts_a_new_track_and_others_age_independently():
    tracker = Tracker(max_age_s=1.0)
    tracker.update([det(0, 0)], now=0.0)
    tracks = tracker.update([det(0, 0), det(600, 0)], now=0.6)
    assert [t.track_id for t in tracks] == [1, 2]
    tracker.update([det(600, 0)], now=1.5)  # track 1 unseen for 0.9 s: alive
    assert tracker.expired() == []
    tracker.update([det(600, 0)], now=1.7)
    assert tracker.expired() == [1]
    assert [t.track_id for t in tracker.tracks] == [2]


def test_low_iou_does_not_continue_a_track():
    tracker = Tracker(iou_threshold=0.3)
    tracker.update([det(0, 0)], now=0.0)
    tracks = tracker.update([det(60, 0)], now=0.1)  # IoU 40/160 = 0.25
    assert [t.track_id for t in tracks] == [2]


def test_embed_first_chip_then_only_clear_improvements_within_budget():
    track = Tracker(embed_budget=3, embed_improvement=1.15).update([det(0, 0)], now=0.0)[0]
    assert track.should_embed(10.0)
    track.record_embedding(10.0)
    assert not track.should_embed(11.0)  # 10 % better is not enough
    assert track.should_embed(11.5)
    track.record_embedding(11.5)
    assert not track.should_embed(5.0)
    assert track.should_embed(13.3)
    track.record_embedding(13.3)
    assert track.embeds == 3 and track.best_embedded_quality == pytest.approx(13.3)
    assert not track.should_embed(1000.0)  # budget spent


def test_first_chip_is_embedded_whatever_its_score_and_zero_budget_embeds_nothing():
    track = Track(1, det(0, 0), 0.0, 0.0, embed_budget=5)
    assert track.should_embed(0.0)
    assert not Track(1, det(0, 0), 0.0, 0.0, embed_budget=0).should_embed(100.0)


def test_quality_score_rewards_size_sharpness_and_frontal_pose():
    base = Quality(eye_distance=40.0, sharpness=0.6, yaw=0.0, roll=0.0, score=0.9, reason=None)
    assert quality_score(base) == pytest.approx(40.0)
    assert quality_score(Quality(40.0, 0.25, 0.0, 0.0, 0.9, None)) == pytest.approx(20.0)
    assert quality_score(Quality(40.0, 0.6, -0.5, 0.0, 0.9, None)) == pytest.approx(20.0)
    assert quality_score(Quality(80.0, 0.6, 0.0, 30.0, 0.9, None)) == pytest.approx(80.0)  # roll is ignored
    assert quality_score(Quality(40.0, 0.6, 1.5, 0.0, 0.9, None)) == 0.0


def test_track_template_is_the_quality_weighted_mean_of_its_chips():
    det = Detection((0, 0, 10, 10), 0.9, np.zeros((6, 2), np.float32))
    track = Track(1, det, 0.0, 0.0)
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    track.record_embedding(30.0, a)
    assert track.template() is None  # one chip is searched on its own
    track.record_embedding(10.0, b)
    t = track.template()
    assert t is not None and np.linalg.norm(t) == pytest.approx(1.0)
    assert t[0] / t[1] == pytest.approx(3.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"iou_threshold": 0.0}, "iou_threshold must be in (0, 1], got 0.0"),
    ({"max_age_s": -1}, "max_age_s must be ≥ 0 seconds, got -1"),
    ({"embed_budget": -1}, "embed_budget must be ≥ 0, got -1"),
])
def test_bad_settings_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError) as err:
        Tracker(**kwargs)
    assert str(err.value) == message


def test_a_still_face_is_re_embedded_after_the_interval_within_its_budget():
    track = Track(1, Detection((0, 0, 10, 10), 0.9, np.zeros((6, 2), np.float32)), 0.0, 0.0, embed_budget=3,
                  reembed_after_s=0.5)
    assert track.should_embed(40.0, now=0.0)
    track.record_embedding(40.0, now=0.0)
    assert not track.should_embed(40.0, now=0.2)  # same quality, too soon
    assert track.should_embed(47.0, now=0.2)  # 15 % better: at once
    assert not track.should_embed(30.0, now=0.6)  # old enough but much worse (< 0.8 x best)
    assert track.should_embed(33.0, now=0.6) and track.should_embed(40.0, now=0.6)
    track.record_embedding(40.0, now=0.6)
    track.record_embedding(40.0, now=1.2)
    assert not track.should_embed(100.0, now=5.0)  # budget of 3 used
