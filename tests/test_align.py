"""Alignment: the similarity fit and the chip cut, on synthetic geometry."""

import cv2
import numpy as np
import pytest

from edge.vision.align import TEMPLATE, TEMPLATE_WEIGHTS, align_face, similarity_transform


def _similarity(scale, angle, tx, ty):
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


def test_similarity_transform_recovers_a_known_transform():
    m = _similarity(2.5, 0.3, 40.0, -7.0)
    src = np.random.default_rng(1).uniform(0, 100, (6, 2))
    dst = src @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(similarity_transform(src, dst), m, atol=1e-9)


def test_similarity_transform_ignores_zero_weight_points():
    m = _similarity(0.7, -0.2, 5.0, 9.0)
    src = np.random.default_rng(2).uniform(0, 100, (6, 2))
    dst = src @ m[:, :2].T + m[:, 2]
    dst[4:] += 50.0  # the ears are wildly off, but weigh nothing
    np.testing.assert_allclose(similarity_transform(src, dst, TEMPLATE_WEIGHTS), m, atol=1e-9)


def test_similarity_transform_never_reflects():
    src = np.array([[0, 0], [1, 0], [0, 1.0]])
    dst = src * np.array([-1, 1.0])  # a mirror image
    m = similarity_transform(src, dst)
    assert np.linalg.det(m[:, :2]) > 0


def _face_image(scale, angle, size=2000):
    """An image with dots where a face's keypoints are, placed by a known similarity."""
    m = _similarity(scale, angle, size / 2 - 75 * scale, size / 3)
    kps = TEMPLATE @ m[:, :2].T + m[:, 2]
    img = np.zeros((size, size, 3), np.uint8)
    for i, (x, y) in enumerate(kps[:4]):
        cv2.circle(img, (int(round(x)), int(round(y))), max(2, int(4 * scale)), (60 * (i + 1), 255, 0), -1, cv2.LINE_AA)
    return img, kps.astype(np.float32)


@pytest.mark.parametrize("scale", [0.8, 1.7, 6.0])  # 6× exercises the area-averaged shrink path
def test_align_face_puts_keypoints_on_the_template(scale):
    img, kps = _face_image(scale, 0.25)
    chip = align_face(img, kps)
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    for i, (x, y) in enumerate(TEMPLATE[:4]):
        # The dot of keypoint i is at its template position (bright in G, its own level in R).
        window = chip[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3]
        assert window[..., 1].max() > 120, f"keypoint {i} is not at its template position"
        assert abs(int(window[..., 0].max()) - 60 * (i + 1)) < 40


def test_align_face_outside_the_image_is_black_not_an_error():
    img = np.full((50, 50, 3), 255, np.uint8)
    chip = align_face(img, TEMPLATE * 10 + 5000)
    assert chip.shape == (150, 150, 3) and chip.max() == 0
