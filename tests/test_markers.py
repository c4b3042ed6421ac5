"""The `models` marker's check (markers.py), on a pytest session of its own over a models directory of its own: a
test that opens a model file without the marker fails and names it; a marked one, or one opening other files,
passes."""

import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the check watches model files with inotify (Linux)")
def test_a_test_opening_a_model_file_without_the_marker_fails(pytester, monkeypatch, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "detector.tflite").write_bytes(b"not really a model")
    monkeypatch.setenv("EDGE_MODELS_DIR", str(models))
    monkeypatch.setenv("EDGE_CHECK_MODEL_MARKERS", "1")
    pytester.makeini("[pytest]\nmarkers =\n    models: loads the models\n    broker: starts mosquitto\n")
    pytester.makepyfile(test_inner=f"""
        import pytest

        MODEL = {str(models / "detector.tflite")!r}

        def test_unmarked():
            open(MODEL, "rb").close()

        @pytest.mark.models
        def test_marked():
            open(MODEL, "rb").close()

        def test_another_file():
            open(MODEL.replace("detector.tflite", "notes.txt"), "w").close()

        @pytest.fixture
        def models():
            return MODEL

        def test_through_the_fixture(models):
            open(models, "rb").close()
    """)
    result = pytester.runpytest("-p", "markers", "--strict-markers")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_unmarked opened detector.tflite (in *) but is not marked `models`*"])
