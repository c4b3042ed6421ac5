"""Pure detector logic on synthetic arrays: anchors, decoding, weighted NMS, letterbox geometry."""

import numpy as np
import pytest

from edge.vision.detector import SPECS, decode, iou, letterbox, make_anchors, sigmoid, weighted_nms


def test_anchor_counts_and_order_match_mediapipe():
    short = make_anchors(SPECS["short_range"])
    full = make_anchors(SPECS["full_range"])
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    # Short range: 16×16 grid with 2 anchors per cell first, then 8×8 with 6 per cell.
    np.testing.assert_allclose(short[0], short[1])
    np.testing.assert_allclose(short[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(short[2], [1.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(short[512], [0.5 / 8, 0.5 / 8])
    np.testing.assert_allclose(short[512:518], np.repeat([[0.5 / 8, 0.5 / 8]], 6, axis=0))
    np.testing.assert_allclose(full[-1], [47.5 / 48, 47.5 / 48])


def test_sigmoid_is_stable_for_huge_logits():
    with np.errstate(all="raise"):
        s = sigmoid(np.array([-3e4, -100.0, 0.0, 100.0, 3e4], np.float32))
    np.testing.assert_allclose(s, [0, 0, 0.5, 1, 1], atol=1e-6)


def test_decode_places_box_and_keypoints_relative_to_anchor():
    anchors = np.array([[0.25, 0.5], [0.75, 0.5]], np.float32)
    reg = np.zeros((2, 16), np.float32)
    reg[1, :4] = [19.2, -9.6, 38.4, 57.6]  # input pixels at size 192
    reg[1, 4:6] = [9.6, 0.0]
    boxes, kps, scores = decode(reg, np.array([0.1, 0.9], np.float32), anchors, 192, 0.5)
    assert scores.tolist() == pytest.approx([0.9])
    np.testing.assert_allclose(boxes[0], [0.75 + 0.1 - 0.1, 0.5 - 0.05 - 0.15, 0.75 + 0.1 + 0.1, 0.5 - 0.05 + 0.15],
                               atol=1e-6)
    np.testing.assert_allclose(kps[0, 0], [0.8, 0.5], atol=1e-6)
    np.testing.assert_allclose(kps[0, 1], [0.75, 0.5], atol=1e-6)


def test_weighted_nms_merges_overlapping_boxes_by_score():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    kps = np.zeros((3, 6, 2), np.float32)
    kps[1] += 3.0
    scores = np.array([0.9, 0.6, 0.7], np.float32)
    out = weighted_nms(boxes, kps, scores, 0.3)
    assert len(out) == 2
    (box, k, score), (box2, _, score2) = out
    assert score == pytest.approx(0.9) and score2 == pytest.approx(0.7)
    np.testing.assert_allclose(box, [0.4, 0, 10.4, 10], atol=1e-5)  # (0·0.9 + 1·0.6) / 1.5
    np.testing.assert_allclose(k[0], [1.2, 1.2], atol=1e-5)
    np.testing.assert_allclose(box2, boxes[2])


def test_iou():
    assert iou(np.array([0, 0, 2, 2.0]), np.array([[1, 1, 3, 3.0], [5, 5, 6, 6.0]])).tolist() == pytest.approx(
        [1 / 7, 0])


@pytest.mark.parametrize("shape", [(720, 1280), (1280, 720), (100, 100), (37, 500)])
def test_letterbox_maps_image_points_into_the_square(shape):
    h, w = shape
    img = np.zeros((h, w, 3), np.uint8)
    img[h // 2, w // 2] = 255
    out, lb = letterbox(img, 192)
    assert out.shape == (192, 192, 3)
    # The image centre lands at the square's centre (± the rounding of an odd padding).
    cx, cy = (w / 2) * lb.scale + lb.pad_x, (h / 2) * lb.scale + lb.pad_y
    assert abs(cx - 96) <= 1 and abs(cy - 96) <= 1
    # Padding is black.
    if lb.pad_y:
        assert out[0].max() == 0
    if lb.pad_x:
        assert out[:, 0].max() == 0


def test_weighted_nms_terminates_on_a_zero_area_box():
    boxes = np.array([[5, 5, 5, 5], [0, 0, 10, 10]], np.float32)  # the best-scoring box is degenerate
    out = weighted_nms(boxes, np.zeros((2, 6, 2), np.float32), np.array([0.9, 0.8], np.float32), 0.3)
    assert len(out) == 2 and out[0][2] == pytest.approx(0.9)
