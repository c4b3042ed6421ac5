"""Shared fixtures: the bundled real photos and one analyzer per test session (models load once)."""

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
FACES = DATA / "faces"


@pytest.fixture(scope="session")
def analyzer():
    from edge.vision.analyzer import FaceAnalyzer, VisionOptions

    return FaceAnalyzer.create(VisionOptions(threads=2))


@pytest.fixture(scope="session")
def float_analyzer():
    from edge.vision.analyzer import FaceAnalyzer, VisionOptions

    return FaceAnalyzer.create(VisionOptions(detector="blazeface_full_range_float32",
                                             embedder="dlib_resnet_v1_float32", threads=2))

from broker import broker, tls_certs  # noqa: F401
