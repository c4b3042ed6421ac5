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
def dlib_analyzer():
    """The former default: dlib's int8 ResNet on dlib's own chips, score-fused with HSE faceres."""
    from edge.vision.analyzer import FaceAnalyzer, VisionOptions

    return FaceAnalyzer.create(VisionOptions(embedder="dlib_resnet_v1_int8", threads=2))


@pytest.fixture(scope="session")
def float_analyzer():
    from edge.vision.analyzer import FaceAnalyzer, VisionOptions

    return FaceAnalyzer.create(VisionOptions(detector="blazeface_full_range_float32",
                                             embedder="dlib_resnet_v1_float32", threads=2))

from broker import broker, tls_certs  # noqa: F401
from postgres import postgres_server, postgres_url  # noqa: F401


#: Test modules whose tests load the models through the CLI or the app rather than through a fixture.
MODEL_MODULES = {"test_app", "test_cli", "test_doctor", "test_pipeline", "test_privacy", "test_vision",
                 "test_watchlist_cli", "test_runtime", "test_landmarks", "test_kill_trials"}


def pytest_collection_modifyitems(config, items):
    """Markers from what a test uses: `broker` for the mosquitto fixtures, `models` for the model-loading ones."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & {"broker", "tls_certs", "pki"}:
            item.add_marker(pytest.mark.broker)
        if names & {"analyzer", "dlib_analyzer", "float_analyzer"} or item.module.__name__ in MODEL_MODULES:
            item.add_marker(pytest.mark.models)
