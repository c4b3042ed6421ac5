"""Shared fixtures: the bundled real photos and one analyzer per test session (models load once). The mosquitto and
PostgreSQL fixtures are plugins (`broker.py`, `postgres.py`); `markers.py` computes the `broker` and `models` markers
and checks the latter; `fakes.py` holds the fakes several modules share."""

from pathlib import Path

import pytest

pytest_plugins = ["broker", "postgres", "markers", "pytester"]

DATA = Path(__file__).parent / "data"
FACES = DATA / "faces"


@pytest.fixture(scope="session")
def models() -> Path:
    """The models directory. A fixture or test that loads the model files takes their directory from here, and
    that marks it (and every test using it) `models` (markers.py)."""
    from edge.paths import models_dir

    return models_dir()


@pytest.fixture(scope="session")
def analyzer(models):
    from edge.vision.analyzer import FaceAnalyzer, VisionOptions

    return FaceAnalyzer.create(VisionOptions(threads=2, models_dir=models))


@pytest.fixture(scope="session")
def dlib_analyzer(models):
    """The former default: dlib's int8 ResNet on dlib's own chips, score-fused with HSE faceres."""
    from edge.vision.analyzer import FaceAnalyzer, VisionOptions

    return FaceAnalyzer.create(VisionOptions(embedder="dlib_resnet_v1_int8", threads=2, models_dir=models))


@pytest.fixture(scope="session")
def float_analyzer(models):
    from edge.vision.analyzer import FaceAnalyzer, VisionOptions

    return FaceAnalyzer.create(VisionOptions(detector="blazeface_full_range_float32",
                                             embedder="dlib_resnet_v1_float32", threads=2, models_dir=models))
