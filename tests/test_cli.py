"""The `edge` command on real photos: output contracts (DESIGN §9) and the messages users see for bad input."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import FACES
from edge.cli import main

pytestmark = pytest.mark.models  # the vision commands and the demo load the models


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_detect_json_contract_and_annotation(capsys, tmp_path):
    code, out, _ = run(capsys, "detect", FACES / "astronaut.jpg", FACES / "coffee.jpg", "--json", "--annotate",
                       tmp_path)
    assert code == 0
    images = json.loads(out)["images"]
    assert [len(i["faces"]) for i in images] == [1, 0]
    face = images[0]["faces"][0]
    assert set(face) == {"box", "score", "keypoints"} and len(face["box"]) == 4 and 0.5 <= face["score"] <= 1
    assert set(face["keypoints"]) == {"right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion",
                                      "left_ear_tragion"}
    assert (tmp_path / "astronaut.annotated.jpg").stat().st_size > 1000


def test_detect_reports_an_unreadable_image_and_keeps_going(capsys, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((FACES / "obama.jpg").read_bytes()[:40])
    code, out, _ = run(capsys, "detect", broken, FACES / "biden.jpg", tmp_path / "missing.png")
    assert code == 1
    assert (f"{broken}: error: image {broken} cannot be decoded: not an image, or a corrupt/truncated file"
            " (40 bytes)") in out
    assert f"image not found: {tmp_path / 'missing.png'}" in out
    assert "biden.jpg: 1 face(s)" in out


def test_compare_same_and_different_people(capsys):
    code, out, _ = run(capsys, "compare", FACES / "obama.jpg", FACES / "obama2.jpg", "--json")
    same = json.loads(out)
    assert code == 0 and same["same"] is True and same["similarity"] >= same["threshold"]
    code, out, _ = run(capsys, "compare", FACES / "obama.jpg", FACES / "biden.jpg", "--json")
    diff = json.loads(out)
    assert diff["same"] is False and diff["similarity"] < diff["threshold"]
    assert {"similarity", "same", "threshold"} <= diff.keys()


def test_compare_without_a_face_names_the_photo(capsys):
    code, _, err = run(capsys, "compare", FACES / "obama.jpg", FACES / "coffee.jpg")
    assert code == 1
    assert err.strip() == f"edge: error: no face found in {FACES / 'coffee.jpg'}"


def test_missing_model_is_a_clear_error(capsys, tmp_path):
    code, _, err = run(capsys, "detect", FACES / "obama.jpg", "--models-dir", tmp_path)
    assert code == 1 and "model manifest not found" in err and "Traceback" not in err


def test_eval_pairs_on_bundled_photos(capsys, tmp_path):
    names = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "astronaut.jpg", "coffee.jpg"]
    for n in names:
        shutil.copy(FACES / n, tmp_path / n)
    (tmp_path / "pairs.csv").write_text(
        "path_a,path_b,same\n"
        "obama.jpg,obama2.jpg,1\nobama.jpg,obama3.jpg,1\nobama2.jpg,obama3.jpg,1\n"
        "obama.jpg,biden.jpg,0\nbiden.jpg,astronaut.jpg,0\nobama3.jpg,astronaut.jpg,0\ncoffee.jpg,obama.jpg,0\n")
    plot = tmp_path / "roc.png"
    code, out, _ = run(capsys, "eval", "pairs", "--pairs", tmp_path / "pairs.csv", "--root", tmp_path, "--json",
                       "--plot", plot)
    assert code == 0
    report = json.loads(out)
    for key in ("n_pairs", "n_failed_detect", "accuracy", "accuracy_10fold_mean", "tar_at_far_1e-3", "threshold",
                "seconds"):
        assert key in report
    assert report["n_pairs"] == 7 and report["n_failed_detect"] == 1 and report["accuracy"] == 1.0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_pairs_bad_csv(capsys, tmp_path):
    (tmp_path / "p.csv").write_text("a,b\n")
    code, _, err = run(capsys, "eval", "pairs", "--pairs", tmp_path / "p.csv", "--root", tmp_path)
    assert code == 1 and "missing column(s) path_a, path_b, same" in err


@pytest.mark.slow
def test_demo_runs_the_whole_loop_and_prints_only_the_listed_person(capsys, tmp_path):
    code, out, _ = run(capsys, "demo", "--workdir", tmp_path, "--listen", "127.0.0.1:0", "--console-seconds", "1")
    assert code == 0
    events = [line for line in out.splitlines() if line.startswith("EVENT ")]
    assert events and all("Barack Obama" in e and "candidate for human review" in e for e in events)
    assert "outbox depth 0" in out
    assert (tmp_path / "audit.log").exists() and (tmp_path / "demo.mp4").stat().st_size > 100_000
    # Every appearance is accounted for: an event, or why not.
    lines = out.split("what happened to each appearance:\n", 1)[1].splitlines()[:4]
    assert [ln.strip().split(" ")[0] for ln in lines] == ["obama2.jpg", "astronaut.jpg", "obama_partial_face.jpg",
                                                          "obama3.jpg"]
    assert all(": event #" in ln or ": no event" in ln for ln in lines), lines
    assert "no event, as it should be" in lines[1] and sum(": event #" in ln for ln in lines) == len(events)
    # The console came up on the stored events with two demo reviewers.
    assert re.search(r"review console: http://127\.0\.0\.1:\d+/ — \d+ event\(s\) waiting for review", out)
    assert len(re.findall(r"sign in as reviewer-[12] / \S+", out)) == 2


def test_console_script_exit_code_and_no_traceback(tmp_path):
    env = dict(os.environ, EDGE_MODELS_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "edge", "detect", str(FACES / "obama.jpg")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("edge: error: model manifest not found") and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_demo_over_the_embedded_amqtt_broker_when_mosquitto_is_not_used(capsys, tmp_path):
    """Without mosquitto the demo's events still travel over MQTT: the amqtt broker of the `demo` extra, the real
    device publisher and the real consumer; the outbox drains only when the consumer acknowledged over MQTT."""
    code, out, _ = run(capsys, "demo", "--workdir", tmp_path, "--broker", "amqtt", "--no-console")
    assert code == 0
    assert "broker: amqtt on 127.0.0.1:" in out
    events = [line for line in out.splitlines() if line.startswith("EVENT ")]
    assert events and all("Barack Obama" in e for e in events)
    assert "outbox depth 0" in out
    assert (tmp_path / "events.db").exists()  # stored by the consumer that received them over MQTT
