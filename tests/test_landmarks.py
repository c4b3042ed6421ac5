"""dlib's 5-point landmarks and face chips in numpy, on the committed photos, against what real dlib said about them
(tests/data/reference_landmarks5.json, written by tools/make_landmark_references.py), so CI needs no dlib."""

import hashlib
import json

import numpy as np
import pytest

from conftest import DATA
from edge.imageio import read_image
from edge.types import Detection
from edge.vision.landmarks import (
    detection_landmarks,
    detection_rect,
    dlib_chip,
    load_shape_predictor,
    points_rect,
    pyramid_down,
)

REFERENCE = json.loads((DATA / "reference_landmarks5.json").read_text())["faces"]
SEEDED = [f for f in REFERENCE if "blazeface" in f]


@pytest.fixture(scope="module")
def predictor(models):
    return load_shape_predictor(models / "dlib_shape_predictor_5.npz")


def _image(face):
    return read_image(DATA / face["image"])


def _detection(face):
    bf = face["blazeface"]
    return Detection(tuple(bf["box"]), 1.0, np.array(bf["keypoints"], np.float32))


def _embed(analyzer, chip):
    """The int8 embedder's unit vector for one chip (no mirror averaging, like dlib's descriptor)."""
    v = analyzer.embedder.raw(chip)
    return v / np.linalg.norm(v)


def _cases():
    for i, face in enumerate(REFERENCE):
        yield pytest.param(face, face["rect"], face["points"], id=f"{face['image']}#{i}-hog")
        for j, jit in enumerate(face["jittered"]):
            yield pytest.param(face, jit["rect"], jit["points"], id=f"{face['image']}#{i}-jitter{j}")


def test_model_file_is_plain_arrays(models):
    with np.load(models / "dlib_shape_predictor_5.npz", allow_pickle=False) as z:
        assert z["leaves"].shape == (15, 500, 16, 5, 2) and z["leaves"].dtype == np.float32
        assert z["split_idx"].max() < z["deltas"].shape[1]


@pytest.mark.parametrize("face, rect, points", list(_cases()))
def test_predictor_reproduces_dlib_on_the_same_rectangle(predictor, face, rect, points):
    """Same rectangle, same image: the landmarks dlib returns (it rounds to whole pixels), rgb and grey alike."""
    rgb = _image(face)
    got = predictor.predict(rgb, rect)
    assert got.shape == (5, 2)
    np.testing.assert_array_equal(np.floor(got + 0.5), np.array(points))
    grey = (rgb.astype(np.int32).sum(axis=2) // 3).astype(np.uint8)  # dlib's intensity of an rgb pixel
    np.testing.assert_array_equal(predictor.predict(grey, rect), got)


@pytest.mark.parametrize("face", REFERENCE, ids=lambda f: f["image"])
def test_chip_is_pixel_identical_to_dlibs(face):
    chip = dlib_chip(_image(face), np.array(face["points"], np.float64), exact=True)
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    assert hashlib.sha256(chip.tobytes()).hexdigest() == face["chip_sha256"]


@pytest.mark.parametrize("face", REFERENCE, ids=lambda f: f["image"])
def test_fast_chip_samples_the_same_points_as_dlibs(dlib_analyzer, face):
    """The default (OpenCV) sampler differs from dlib's arithmetic by rounding only: pixels within a few grey
    levels, the descriptor practically unchanged."""
    rgb, points = _image(face), np.array(face["points"], np.float64)
    exact, fast = dlib_chip(rgb, points, exact=True), dlib_chip(rgb, points)
    diff = np.abs(exact.astype(int) - fast)
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 3
    # measured ≥ 0.9992 (border-cut face)
    assert float(_embed(dlib_analyzer, exact) @ _embed(dlib_analyzer, fast)) > 0.999


@pytest.mark.parametrize("face", SEEDED, ids=lambda f: f["image"])
def test_landmarks_seeded_from_blazeface_are_near_dlibs(predictor, face):
    rgb = _image(face)
    want = np.array(face["points"], np.float64)
    eye_distance = np.linalg.norm(want[0:2].mean(axis=0) - want[2:4].mean(axis=0))
    got = detection_landmarks(predictor, rgb, _detection(face))
    err = np.linalg.norm(got - want, axis=1)
    # Measured on 789 held-out dev faces: median 1.0 %, p95 3.0 %, p99 6.4 % of the eye distance (--evaluate).
    assert err.mean() < 0.04 * eye_distance, f"mean landmark error {err.mean():.2f} px"
    # The rectangle the seed builds is close to dlib's HOG rectangle.
    rect = np.array(detection_rect(_detection(face)))
    # HOG's rectangles come in ~20 % scale steps, so only roughly.
    assert np.abs(rect - np.array(face["rect"])).max() < 0.25 * (face["rect"][2] - face["rect"][0])


@pytest.mark.parametrize("face", SEEDED, ids=lambda f: f["image"])
def test_seeded_chip_embeds_like_dlibs_chip(dlib_analyzer, predictor, face):
    rgb = _image(face)
    ours = dlib_chip(rgb, detection_landmarks(predictor, rgb, _detection(face)))
    theirs = dlib_chip(rgb, np.array(face["points"], np.float64))
    e_ours, e_theirs = _embed(dlib_analyzer, ours), _embed(dlib_analyzer, theirs)
    assert float(e_ours @ e_theirs) > 0.997  # measured 0.9990 .. 0.9994 on these photos
    ref = np.array(face["dlib_descriptor"])
    assert float(e_theirs @ ref / np.linalg.norm(ref)) > 0.99  # the int8 embedder agrees with dlib on dlib's chip


def test_live_detector_seed_on_a_photo(dlib_analyzer, predictor):
    face = next(f for f in SEEDED if f["image"] == "faces/obama.jpg")
    rgb = _image(face)
    det = max(dlib_analyzer.detect(rgb), key=lambda d: d.width * d.height)
    err = np.linalg.norm(detection_landmarks(predictor, rgb, det) - np.array(face["points"]), axis=1)
    assert err.max() < 4.0


def test_points_rect_recovers_the_hog_rectangle():
    for face in REFERENCE:
        rect, width = np.array(face["rect"], np.float64), face["rect"][2] - face["rect"][0]
        assert np.abs(np.array(points_rect(np.array(face["points"]))) - rect).max() < 0.2 * width


def test_pyramid_down_is_dlibs_5x5_filter():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (23, 18, 3), dtype=np.uint8)
    down = pyramid_down(img)
    assert down.shape == ((23 - 3) // 2, (18 - 3) // 2, 3)
    k = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1])
    for r, c in [(0, 0), (4, 3), (9, 6)]:
        window = img[2 * r:2 * r + 5, 2 * c:2 * c + 5].astype(np.int64)
        np.testing.assert_array_equal(down[r, c], (window * k[..., None]).sum(axis=(0, 1)) // 256)
    assert pyramid_down(img[:8]).size == 0


def test_chip_of_a_face_outside_the_image_is_black():
    points = np.array(REFERENCE[0]["points"], np.float64) + 5000
    assert not dlib_chip(np.full((300, 300, 3), 200, np.uint8), points).any()


def test_large_face_goes_through_the_pyramid():
    """A face 8× larger than the chip: the chip is cut from a pyramid level, not aliased from full resolution."""
    face = REFERENCE[0]
    small = _image(face)
    big = np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)
    chip_small = dlib_chip(small, np.array(face["points"], np.float64))
    chip_big = dlib_chip(big, np.array(face["points"], np.float64) * 8 + 3.5)
    assert np.abs(chip_big.astype(int) - chip_small).mean() < 12
