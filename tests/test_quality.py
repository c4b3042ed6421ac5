"""Quality gate reasons on real faces and on controlled degradations of them."""

import cv2
import numpy as np

from conftest import FACES
from edge.imageio import read_image, write_image
from edge.types import Detection
from edge.vision.quality import QualityThresholds, SubjectRule, assess, laplacian_variance, pose, subject_face
from edge.watchlist.operator.build import GalleryEntry, enroll


def _face(analyzer, name="obama.jpg"):
    rgb = read_image(FACES / name)
    return analyzer.embed(rgb, analyzer.detect(rgb)[0])


def test_a_good_photo_passes(analyzer):
    face = _face(analyzer)
    q = assess(face.detection, face.chip)
    assert q.ok and q.eye_distance > 40 and abs(q.yaw) < 0.2 and q.sharpness > 0.45


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
    scale = analyzer.detect(a)[0].eye_distance / analyzer.detect(b)[0].eye_distance  # two faces of one size
    b = cv2.resize(b, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    h = min(a.shape[0], b.shape[0])
    both = np.hstack([a[:h], b[:h]])
    write_image(tmp_path / "two.jpg", both)
    result = enroll([GalleryEntry(tmp_path / "two.jpg", "x", "x", "", None)], analyzer)
    assert len(result.rejected) == 1 and not result.vectors
    assert result.rejected[0]["reason"] == "several faces"
    assert result.rejected[0]["detail"].startswith("2 faces, no clear subject")


def test_enrollment_takes_the_dominant_face_with_a_warning(analyzer, tmp_path):
    """A portrait with a small bystander in a corner enrolls the portrait's subject and says so."""
    main, other = read_image(FACES / "obama.jpg"), read_image(FACES / "biden.jpg")
    small = cv2.resize(other, None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)
    canvas = np.zeros((main.shape[0], main.shape[1] + small.shape[1], 3), np.uint8)
    canvas[:, :main.shape[1]] = main
    canvas[:small.shape[0], main.shape[1]:] = small
    write_image(tmp_path / "bystander.png", canvas)
    result = enroll([GalleryEntry(tmp_path / "bystander.png", "obama", "obama", "", None)], analyzer)
    assert not result.rejected and len(result.vectors) == 1
    assert result.warnings[0]["warning"].startswith("2 faces; enrolled the one nearest the centre")
    alone = _face(analyzer)
    assert float(result.vectors[0] @ alone.embedding) > 0.95
    # The same photo with a rule that wants the subject dead centre is ambiguous.
    strict = enroll([GalleryEntry(tmp_path / "bystander.png", "obama", "obama", "", None)], analyzer,
                    subject=SubjectRule(max_offset=0.02))
    assert strict.rejected[0]["reason"] == "several faces"


def test_subject_face_is_the_sizeable_face_nearest_the_centre():
    def det(cx, cy, eye):
        kps = np.array([[cx - eye / 2, cy], [cx + eye / 2, cy], [cx, cy + eye / 3], [cx, cy + eye / 1.5],
                        [cx - eye, cy], [cx + eye, cy]], np.float32)
        return Detection((cx - eye, cy - eye, cx + eye, cy + eye), 0.9, kps)

    assert subject_face([], (100, 100)).reason == "no face"
    assert subject_face([det(50, 50, 20)], (100, 100)).index == 0
    assert subject_face([det(10, 10, 4), det(50, 50, 20)], (100, 100)).index == 1
    assert subject_face([det(45, 50, 20), det(60, 50, 16)], (100, 100)).reason == "several faces"
    off = subject_face([det(95, 95, 20), det(5, 5, 5)], (100, 100))
    assert off.index is None and "none near the centre" in off.detail
    # A booking-photo bystander: as large as the subject but cut by the edge -> the central face, with a warning.
    pick = subject_face([det(92, 50, 19), det(50, 48, 20)], (100, 100))
    assert pick.index == 1 and pick.warning.startswith("2 faces; enrolled the one nearest the centre")
    # Two about as central and one clearly larger: the larger one.
    assert subject_face([det(45, 50, 30), det(55, 50, 15)], (100, 100)).index == 0


def test_sharpness_does_not_depend_on_the_face_resolution(analyzer):
    """The same sharp photo at 0.6 and 0.3 of its size stays sharp (the former Laplacian figure fell by > 2x;
    smaller faces score, if anything, sharper), while a blur of 2.5 px at full size is rejected by the default."""
    rgb = read_image(FACES / "obama.jpg")
    figures = []
    for f in (1.0, 0.6, 0.3):
        img = cv2.resize(rgb, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else rgb
        face = analyzer.embed(img, analyzer.detect(img)[0])
        figures.append((assess(face.detection, face.chip).sharpness, laplacian_variance(face.chip)))
    assert abs(figures[1][0] - figures[0][0]) < 0.1 and figures[2][0] > figures[0][0] - 0.05
    assert figures[0][1] > 2 * figures[2][1]
    blurred = cv2.GaussianBlur(rgb, (0, 0), 2.5)
    bface = analyzer.embed(blurred, analyzer.detect(blurred)[0])
    q = assess(bface.detection, bface.chip)
    assert q.reason == "too blurry" and q.sharpness < figures[0][0] - 0.2
