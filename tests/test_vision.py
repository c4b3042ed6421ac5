"""The shipped int8 models on real photos, against references made by dlib and the float models
(tests/data/*.json, written by tools/make_test_references.py), so CI needs neither TensorFlow nor dlib."""

import json
from itertools import combinations

import numpy as np
import pytest

from conftest import DATA, FACES
from edge.imageio import read_image
from edge.vision.detector import iou

GOLDEN = json.loads((DATA / "golden_detections.json").read_text())["images"]
REFERENCE = json.loads((DATA / "reference_embeddings.json").read_text())["faces"]
IDENTITY = {"obama": "obama", "obama2": "obama", "obama3": "obama", "obama_partial_face": "obama",
            "biden": "biden", "astronaut": "eileen_collins"}


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_int8_detector_finds_the_float_reference_faces(analyzer, name):
    dets = analyzer.detect(read_image(FACES / name))
    golden = GOLDEN[name]
    assert len(dets) == len(golden)
    for ref in golden:
        box = np.array(ref["box"])
        best = max(dets, key=lambda d: iou(box, np.array([d.box]))[0])
        assert iou(box, np.array([best.box]))[0] >= 0.8
        width = box[2] - box[0]
        kps = np.array(list(ref["keypoints"].values()))
        err = np.linalg.norm(best.keypoints - kps, axis=1) / width
        assert err[:4].max() < 0.05, f"eye/nose/mouth keypoint error {err[:4].max():.3f} of the box width"
        assert abs(best.score - ref["score"]) < 0.1


def test_photo_without_a_face_has_no_detection(analyzer):
    assert GOLDEN["coffee.jpg"] == []
    assert analyzer.detect(read_image(FACES / "coffee.jpg")) == []


def test_faces_are_where_a_person_would_say(analyzer):
    # astronaut.jpg (scikit-image, Eileen Collins): one face, about 100 px wide, upper middle of the picture.
    (det,) = analyzer.detect(read_image(FACES / "astronaut.jpg"))
    x0, y0, x1, y1 = det.box
    assert 150 < x0 < 200 and 50 < y0 < 100 and 80 < x1 - x0 < 130
    right_eye, left_eye = det.keypoints[0], det.keypoints[1]
    assert right_eye[0] < left_eye[0]  # the subject's right eye is on the image's left
    # nose below eyes, mouth below nose
    assert det.keypoints[2][1] > right_eye[1] and det.keypoints[3][1] > det.keypoints[2][1]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_float32_embedder_matches_dlib_on_real_chips(float_analyzer, name):
    ref = np.array(REFERENCE[name]["dlib_descriptor"])
    raw = float_analyzer.embedder.raw(read_image(DATA / REFERENCE[name]["chip"]))
    assert np.abs(raw - ref).max() < 1e-4


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_int8_embedder_matches_dlib_on_real_chips(dlib_analyzer, name):
    ref = np.array(REFERENCE[name]["dlib_descriptor"])
    raw = dlib_analyzer.embedder.raw(read_image(DATA / REFERENCE[name]["chip"]))
    assert _cos(raw, ref) >= 0.995
    # dlib's own decision rule (Euclidean distance 0.6 on raw descriptors) moves by less than 0.05.
    assert abs(np.linalg.norm(raw) - np.linalg.norm(ref)) < 0.05


@pytest.mark.models  # its analyzer comes from getfixturevalue, which the markers cannot see at collection
@pytest.mark.parametrize("which", ["analyzer", "dlib_analyzer"])
def test_same_person_scores_above_different_people(which, request):
    """The default (MobileFaceNet) and the former default (dlib) each separate the bundled people at their own
    verification threshold."""
    analyzer = request.getfixturevalue(which)
    emb = {name: analyzer.best_face(read_image(FACES / f"{name}.jpg")).embedding for name in IDENTITY}
    same = [float(emb[a] @ emb[b]) for a, b in combinations(emb, 2) if IDENTITY[a] == IDENTITY[b]]
    diff = [float(emb[a] @ emb[b]) for a, b in combinations(emb, 2) if IDENTITY[a] != IDENTITY[b]]
    assert min(same) > max(diff)
    threshold = analyzer.embedder_info.info["thresholds"]["verify_cosine"]
    assert min(same) >= threshold > max(diff)


def test_embeddings_are_unit_vectors_and_flip_changes_little(dlib_analyzer):
    from edge.vision.embedder import FaceEmbedder

    analyzer = dlib_analyzer
    chip = read_image(DATA / REFERENCE["obama"]["chip"])
    v = FaceEmbedder(analyzer.embedder.model, flip=False).embed(chip)
    assert v.shape == (128,) and v.dtype == np.float32
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)

    flipped = FaceEmbedder(analyzer.embedder.model, flip=True).embed(chip)
    assert np.linalg.norm(flipped) == pytest.approx(1.0, abs=1e-5)
    assert 0.95 < float(v @ flipped) < 1.0


def test_the_dlib_analyzer_fuses_a_second_embedding_of_the_same_landmarks(dlib_analyzer, analyzer):
    """dlib's embedder (the former default) with fusion on: dlib chips and the manifest's second embedder, projected
    to a unit vector; same person scores above different people in the second space as well. The default
    (MobileFaceNet) fuses nothing: on the dev set dlib added little for its milliseconds."""
    assert analyzer.fusion is None and analyzer.embedder_id == "mobilefacenet"
    analyzer = dlib_analyzer
    assert analyzer.fusion is not None  # the shipped manifest fuses dlib with HSE faceres
    faces = {n: analyzer.best_face(read_image(FACES / f"{n}.jpg")) for n in ("obama", "obama2", "biden")}
    e2 = {n: f.embedding2 for n, f in faces.items()}
    assert all(v.shape == (analyzer.fusion.dim2,) and abs(float(np.linalg.norm(v)) - 1) < 1e-5 for v in e2.values())
    assert float(e2["obama"] @ e2["obama2"]) > float(e2["obama"] @ e2["biden"])
    assert analyzer.embedder_id == "dlib_resnet_v1+hse_faceres"
