"""The ArcFace path: ONet's five points on the bundled photos, the 112-px ArcFace chip, and MobileFaceNet on it."""

import numpy as np
import pytest

from conftest import FACES
from edge.errors import ModelError
from edge.imageio import read_image
from edge.vision.align import ARCFACE_TEMPLATE, arcface_chip, similarity_transform
from edge.vision.analyzer import FaceAnalyzer, VisionOptions
from edge.vision.onet import INPUT_SIZE, ONet, crop48, square_box

pytestmark = pytest.mark.models  # the ONet and the analyzers it is compared with load their models

PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "astronaut.jpg")


@pytest.fixture(scope="module")
def arc():
    """MobileFaceNet with its own alignment (ONet), whatever the manifest's default embedder is."""
    return FaceAnalyzer.create(VisionOptions(embedder="mobilefacenet_float32", alignment="auto", threads=2))


def _largest(analyzer, rgb):
    return max(analyzer.detect(rgb), key=lambda d: d.width * d.height)


def test_square_box_and_crop_are_transposed_like_the_caffe_original():
    assert square_box((10, 20, 30, 60)).tolist() == [0.0, 20.0, 40.0, 60.0]
    img = np.zeros((96, 96, 3), np.uint8)
    img[:, 40:56] = 255  # a vertical bar
    x = crop48(img, np.array([0.0, 0.0, 96.0, 96.0]))
    assert x.shape == (INPUT_SIZE, INPUT_SIZE, 3) and x.dtype == np.float32
    assert x.max() == pytest.approx((255 - 127.5) / 128) and x.min() == pytest.approx(-127.5 / 128)
    # transposed: the bar runs along the first axis's middle rows
    assert x[22, :, 0].min() > 0.9 and x[5, :, 0].max() < -0.9  # row = image column
    # a box far outside the image is black, not an error; a huge face is shrunk without aliasing
    assert np.allclose(crop48(img, np.array([500.0, 500.0, 600.0, 600.0])), -127.5 / 128)
    big = np.full((2000, 2000, 3), 200, np.uint8)
    assert np.allclose(crop48(big, np.array([0.0, 0.0, 2000.0, 2000.0]))[10:38, 10:38], (200 - 127.5) / 128, atol=1e-3)


def test_onet_refuses_a_model_that_is_not_onet():
    class Fake:
        name, input_shape, output_shapes = "fake", (1, 112, 112, 3), [(1, 192)]

    with pytest.raises(ModelError, match="ONet takes"):
        ONet(Fake())


@pytest.mark.parametrize("photo", PHOTOS)
def test_onet_points_sit_on_the_face(arc, photo):
    """Eyes near BlazeFace's eye keypoints, the nose tip between the eyes and the mouth, mouth corners either side
    of BlazeFace's mouth centre — on real photos."""
    rgb = read_image(FACES / photo)
    det = _largest(arc, rgb)
    pts = arc.onet.landmarks(rgb, det)
    eye = det.eye_distance
    assert np.linalg.norm(pts[0] - det.keypoints[0]) < 0.3 * eye
    assert np.linalg.norm(pts[1] - det.keypoints[1]) < 0.3 * eye
    assert pts[0, 1] < pts[2, 1] < pts[3, 1] and pts[1, 1] < pts[2, 1] < pts[4, 1]
    assert pts[3, 0] < det.keypoints[3, 0] < pts[4, 0]


def test_arcface_chip_puts_the_points_on_the_template(arc):
    rgb = read_image(FACES / "obama.jpg")
    pts = arc.onet.landmarks(rgb, _largest(arc, rgb))
    chip = arcface_chip(rgb, pts)
    assert chip.shape == (112, 112, 3) and chip.dtype == np.uint8
    m = similarity_transform(pts, ARCFACE_TEMPLATE)
    mapped = pts @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped - ARCFACE_TEMPLATE).max() < 6.0  # a similarity fits five real points to within a few px


def test_mobilefacenet_tells_the_same_person_from_others(arc):
    faces = {p: arc.best_face(read_image(FACES / p)) for p in PHOTOS}
    assert arc.alignment == "onet" and arc.embedder.dim == 192 and arc.embedder_id == "mobilefacenet"
    for f in faces.values():
        assert f.chip.shape == (112, 112, 3) and abs(float(np.linalg.norm(f.embedding)) - 1) < 1e-5
    same = [float(faces[a].embedding @ faces[b].embedding) for a, b in
            (("obama.jpg", "obama2.jpg"), ("obama.jpg", "obama3.jpg"), ("obama2.jpg", "obama3.jpg"))]
    other = [float(faces[a].embedding @ faces[b].embedding) for a in ("obama.jpg", "obama2.jpg", "obama3.jpg")
             for b in ("biden.jpg", "astronaut.jpg")]
    # ArcFace-class descriptors put impostors near 0 and the same person well above.
    assert min(same) > 0.5 and max(other) < 0.35, (same, other)


def test_alignment_must_suit_the_embedder():
    with pytest.raises(ModelError, match="does not suit embedder"):
        FaceAnalyzer.create(VisionOptions(embedder="mobilefacenet_float32", alignment="dlib5"))
    with pytest.raises(ModelError, match="does not suit embedder"):
        FaceAnalyzer.create(VisionOptions(embedder="dlib_resnet_v1_int8", alignment="onet"))


def test_keypoint_alignment_for_mobilefacenet_is_close_to_onet(arc):
    kp = FaceAnalyzer.create(VisionOptions(embedder="mobilefacenet_float32", alignment="keypoints", threads=1))
    rgb = read_image(FACES / "obama2.jpg")
    a, b = arc.best_face(rgb), kp.best_face(rgb)
    assert kp.alignment == "keypoints" and float(a.embedding @ b.embedding) > 0.7
