"""Quality gate reasons on real faces and on controlled degradations of them."""

import cv2
import numpy as np

from conftest import FACES
from edge.imageio import read_image, write_image
from edge.types import Detection
from edge.vision.quality import QualityThresholds, assess, pose
from edge.watchlist.build import GalleryEntry, enroll


def _face(analyzer, name="obama.jpg"):
    rgb = read_image(FACES / name)
    return analyzer.embed(rgb, analyzer.detect(rgb)[0])


def test_a_good_photo_passes(analyzer):
    face = _face(analyzer)
    q = assess(face.detection, face.chip)
    assert q.ok and q.eye_distance > 40 and abs(q.yaw) < 0.2 and q.sharpness > 100


def test_blur_small_and_pose_are_rejected_with_their_reason(analyzer):
    face = _face(analyzer)
    blurred = cv2.GaussianBlur(face.chip, (0, 0), 4)
    assert assess(face.detection, blurred).reason == "too blurry"
    assert assess(face.detection, face.chip, QualityThresholds(min_eye_distance=500)).reason == "face too small"
    kps = face.detection.keypoints.copy()
    kps[2, 0] = kps[1, 0] + 5  # nose beyond the left eye: a profile
    turned = Detection(face.detection.box, face.detection.score, kps)
    assert assess(turned, face.chip).reason == "extreme pose"


def test_pose_figures():
    kps = np.array([[0, 0], [10, 0], [5, 5], [5, 8], [-3, 2], [13, 2]], np.float32)
    yaw, roll = pose(kps)
    assert abs(yaw) < 1e-6 and abs(roll) < 1e-6
    rotated = kps @ np.array([[0, -1], [1, 0]], np.float32).T  # 90° roll
    assert abs(pose(rotated)[1]) == 90


def test_enrollment_rejects_a_photo_with_several_faces(analyzer, tmp_path):
    a, b = read_image(FACES / "obama.jpg"), read_image(FACES / "biden.jpg")
    h = min(a.shape[0], b.shape[0])
    both = np.hstack([a[:h], b[:h]])
    write_image(tmp_path / "two.jpg", both)
    result = enroll([GalleryEntry(tmp_path / "two.jpg", "x", "x", "", None)], analyzer)
    assert result.rejected == [{"path": str(tmp_path / "two.jpg"), "reason": "several faces", "detail": "2 faces"}]
