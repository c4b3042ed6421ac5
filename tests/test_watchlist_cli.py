"""Operator and device flows end to end on real photos: keys → build → seal → verify → install, open-set eval."""

import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, FACES
from edge import keys
from edge.cli import main
from edge.imageio import read_image
from edge.watchlist.device.matcher import Watchlist
from edge.watchlist.device.store import WatchlistStore

pytestmark = pytest.mark.models  # enrollment and the open-set evaluation load the models

CANARY = "Canary Subject 7f3a"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def operator_flow(tmp_path_factory):
    """Keys, a gallery with a canary label, a build and a sealed bundle, made through the CLI."""
    tmp = tmp_path_factory.mktemp("flow")
    assert main(["keys", "generate", "operator", "--out", str(tmp / "op")]) == 0
    assert main(["keys", "generate", "device", "--out", str(tmp / "dev")]) == 0
    (tmp / "gallery.csv").write_text(
        "path,identity,label,category\n"
        f"faces/obama.jpg,obama,{CANARY},test\nfaces/biden.jpg,biden,Joe Biden,test\n"
        "faces/coffee.jpg,nobody,No One,test\nfaces/missing.jpg,ghost,Ghost,test\n")
    return tmp


def test_keys_are_written_with_safe_modes(operator_flow):
    tmp = operator_flow
    assert stat.S_IMODE(os.stat(tmp / "op" / "operator.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp / "dev" / "device.key").st_mode) == 0o600
    assert keys.load_public_key(tmp / "dev" / "device.pub", "device")


def test_build_seal_verify(operator_flow, capsys):
    tmp = operator_flow
    code, out, _ = run(capsys, "watchlist", "build", "--gallery", tmp / "gallery.csv", "--root", DATA,
                       "--out", tmp / "build", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["n_subjects"] == 2 and report["n_templates"] == 2
    reasons = {Path(r["path"]).name: r["reason"] for r in report["rejected"]}
    assert reasons == {"coffee.jpg": "no face", "missing.jpg": "unreadable file"}

    code, out, _ = run(capsys, "watchlist", "seal", "--in", tmp / "build", "--signing-key", tmp / "op" / "operator.key",
                       "--device-key", tmp / "dev" / "device.pub", "--device-id", "cam-01", "--version", 3,
                       "--out", tmp / "v3.bundle", "--json")
    assert code == 0
    sealed = json.loads(out)
    assert sealed["version"] == 3 and sealed["bytes"] == (tmp / "v3.bundle").stat().st_size
    from edge.evaluation.calibration import scoring_tail
    from edge.vision.analyzer import FaceAnalyzer

    shipped = FaceAnalyzer.create()  # the default embedder's shipped tail, for a list of 2
    want = scoring_tail(shipped.embedder_info.info, shipped.fusion).threshold_for(2, 0.003)
    assert sealed["thresholds"]["match"] == want["match"] and sealed["thresholds"]["calibrated_for_n"] == 2
    assert CANARY.encode() not in (tmp / "v3.bundle").read_bytes()
    # The enrolled chips stay with the operator, private, and only there: none is in the sealed bundle (opened
    # below with the device's key: its payload carries templates, never a face).
    refs = tmp / "build" / "references"
    assert report["n_references"] == 2 and stat.S_IMODE(os.stat(refs).st_mode) == 0o700
    chips = sorted(refs.iterdir())
    assert [p.name for p in chips] == ["0000000.jpg", "0000001.jpg"]
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 and p.read_bytes()[:3] == b"\xff\xd8\xff" for p in chips)
    from edge.watchlist.device.unseal import open_bundle
    from edge.watchlist.operator.references import References

    opened = open_bundle((tmp / "v3.bundle").read_bytes(), keys.load_private_key(tmp / "dev" / "device.key", "device"),
                         {keys.key_id(keys.load_public_key(tmp / "op" / "operator.pub", "operator")):
                          keys.load_public_key(tmp / "op" / "operator.pub", "operator")}, expected_device_id="cam-01")
    for chip in chips:
        assert chip.read_bytes()[200:264] not in opened.payload
        assert b"\xff\xd8\xff" not in opened.payload and b"JFIF" not in opened.payload
    assert References(tmp / "build").images("obama") == [chips[0].read_bytes()]
    assert References(tmp / "build").images("nobody") == []
    assert not [p for p in tmp.iterdir() if ".references-" in p.name]  # the spool was moved in, nothing left

    code, out, _ = run(capsys, "watchlist", "verify", tmp / "v3.bundle", "--device-key", tmp / "dev" / "device.key",
                       "--operator-key", tmp / "op" / "operator.pub", "--json")
    assert code == 0
    verified = json.loads(out)
    assert verified == {**verified, "ok": True, "version": 3, "n_items": 2, "reason": None}


def test_verify_with_the_wrong_keys_is_rejected_with_a_reason(operator_flow, capsys, tmp_path):
    tmp = operator_flow
    assert main(["keys", "generate", "device", "--out", str(tmp_path), "--name", "other"]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "watchlist", "verify", tmp / "v3.bundle", "--device-key", tmp_path / "other.key",
                       "--operator-key", tmp / "op" / "operator.pub")
    assert code == 1 and out.startswith("REJECTED (not_recipient)")
    assert main(["keys", "generate", "operator", "--out", str(tmp_path), "--name", "rogue"]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "watchlist", "verify", tmp / "v3.bundle", "--device-key", tmp / "dev" / "device.key",
                       "--operator-key", tmp_path / "rogue.pub", "--json")
    assert code == 1 and json.loads(out)["reason"] in ("unknown_key", "bad_signature")


def test_keys_refuse_to_overwrite(operator_flow, capsys):
    tmp = operator_flow
    code, _, err = run(capsys, "keys", "generate", "operator", "--out", tmp / "op")
    assert code == 1 and "already exists; use --force to replace it" in err


def test_device_install_serves_matches_and_keeps_plaintext_off_disk(operator_flow, tmp_path, analyzer):
    tmp = operator_flow
    before = set(Path(tempfile.gettempdir()).iterdir())
    device = keys.load_private_key(tmp / "dev" / "device.key", "device")
    operator = keys.load_public_key(tmp / "op" / "operator.pub", "operator")
    store = WatchlistStore(tmp_path / "state", "cam-01", device, {keys.key_id(operator): operator},
                           analyzer.embedder_id, analyzer.embedder_info.sha256,
                           lambda b: Watchlist.from_payload(b.payload, b.manifest["thresholds"], b.manifest))
    store.start()
    result = store.install((tmp / "v3.bundle").read_bytes())
    assert result.ok, result.message
    watchlist, manifest = store.current()
    probe = analyzer.best_face(read_image(FACES / "obama2.jpg"))
    decision = watchlist.match(probe.embedding, embedding2=probe.embedding2)
    assert decision.matched and decision.top.label == CANARY and decision.top.similarity >= decision.threshold
    stranger = analyzer.best_face(read_image(FACES / "astronaut.jpg"))
    assert not watchlist.match(stranger.embedding, embedding2=stranger.embedding2).matched
    # Nothing under the state directory or in new temp files holds the canary label or the index in clear.
    new_tmp = [p for p in set(Path(tempfile.gettempdir()).iterdir()) - before if p.is_file()]
    for path in [p for p in (tmp_path / "state").rglob("*") if p.is_file()] + new_tmp:
        assert CANARY.encode() not in path.read_bytes(), path


def test_eval_openset_on_bundled_photos(capsys, tmp_path):
    (tmp_path / "gallery.csv").write_text("path,identity\nfaces/obama.jpg,obama\nfaces/biden.jpg,biden\n")
    (tmp_path / "probes.csv").write_text(
        "path,identity,in_watchlist\nfaces/obama2.jpg,obama,1\nfaces/obama3.jpg,obama,1\nchips/biden.png,biden,1\n"
        "faces/astronaut.jpg,eileen_collins,0\nfaces/coffee.jpg,nobody,0\n")
    code, out, _ = run(capsys, "eval", "openset", "--gallery", tmp_path / "gallery.csv", "--probes",
                       tmp_path / "probes.csv", "--root", DATA, "--json", "--plot", tmp_path / "det.png")
    assert code == 0
    r = json.loads(out)
    assert {"n_gallery", "n_mated", "n_nonmated", "threshold", "fpir", "fnir", "rank1"} <= r.keys()
    assert (r["n_gallery"], r["n_mated"], r["n_nonmated"], r["n_failed_detect"]) == (2, 3, 1, 1)
    assert r["rank1"] == 1.0 and r["fnir"] == 0.0 and r["fpir"] == 0.0
    assert (tmp_path / "det.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_openset_reports_the_shipped_tails_calibration(capsys, tmp_path):
    """--json carries calibration: the shipped tail's threshold for this gallery's size and the FPIR measured at it."""
    from edge.evaluation.calibration import scoring_tail
    from edge.vision.analyzer import FaceAnalyzer

    (tmp_path / "gallery.csv").write_text("path,identity\nfaces/obama.jpg,obama\nfaces/biden.jpg,biden\n")
    (tmp_path / "probes.csv").write_text("path,identity,in_watchlist\nfaces/obama2.jpg,obama,1\n"
                                         "faces/astronaut.jpg,eileen_collins,0\n")
    code, out, _ = run(capsys, "eval", "openset", "--gallery", tmp_path / "gallery.csv", "--probes",
                       tmp_path / "probes.csv", "--root", DATA, "--json", "--project-size", "300000")
    assert code == 0
    report = json.loads(out)
    cal = report["calibration"]
    proj = report["projection"]  # the shipped tail's threshold for 300,000 templates and this run's FNIR at it
    assert proj["size"] == 300_000 and proj["threshold_bound"] >= proj["threshold"] > cal["predicted_threshold"]
    assert proj["n_mated"] == 1 and proj["fnir"] in (0.0, 1.0) and proj["fnir_at_point"] <= proj["fnir"]
    default = FaceAnalyzer.create()  # the default embedder's tail (with fusion, it would be the fused score's)
    want = scoring_tail(default.embedder_info.info, default.fusion).threshold_for(2, 0.003)
    assert cal["predicted_threshold"] == want["match"] and cal["predicted_fpir"] == want["predicted_fpir"]
    assert cal["measured_fpir_at_predicted"] == 0.0 and cal["n_nonmated"] == 1  # the astronaut is below it


def test_seal_takes_the_threshold_from_the_tail_and_refuses_an_unreachable_target(operator_flow, capsys, tmp_path):
    from edge.evaluation.calibration import fit_tail

    tmp = operator_flow
    if not (tmp / "build").exists():
        assert main(["watchlist", "build", "--gallery", str(tmp / "gallery.csv"), "--root", str(DATA),
                     "--out", str(tmp / "build")]) == 0
    capsys.readouterr()
    rng = np.random.default_rng(0)
    wide = fit_tail([rng.normal(0.97, 0.02, 1000) for _ in range(200)], min_exceedances=1000, n_boot=20)
    (tmp_path / "wide.json").write_text(json.dumps({"impostor_tail": wide.to_json()}))
    code, out, err = run(capsys, "watchlist", "seal", "--in", tmp / "build", "--signing-key",
                         tmp / "op" / "operator.key", "--device-key", tmp / "dev" / "device.pub", "--device-id",
                         "cam-01", "--version", 4,
                         "--out", tmp_path / "v4.bundle", "--impostors", tmp_path / "wide.json")
    assert code == 1 and "cannot reach FPIR 0.003 with 2 templates" in err and "> 1" in err
    assert not (tmp_path / "v4.bundle").exists()
    (tmp_path / "broken.json").write_text("{}")
    code, _, err = run(capsys, "watchlist", "seal", "--in", tmp / "build", "--signing-key", tmp / "op" / "operator.key",
                       "--device-key", tmp / "dev" / "device.pub", "--device-id", "cam-01", "--version", 4,
                       "--out", tmp_path / "v4.bundle", "--impostors", tmp_path / "broken.json")
    assert code == 1 and "is not an impostor file" in err
    (tmp_path / "huge.json").write_bytes(b" " * (5 * 2**20))  # size limit: refused unread
    code, _, err = run(capsys, "watchlist", "seal", "--in", tmp / "build", "--signing-key", tmp / "op" / "operator.key",
                       "--device-key", tmp / "dev" / "device.pub", "--device-id", "cam-01", "--version", 4,
                       "--out", tmp_path / "v4.bundle", "--impostors", tmp_path / "huge.json")
    assert code == 1 and "larger than 4 MiB" in err and "Traceback" not in err
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)  # hostile nesting
    code, _, err = run(capsys, "watchlist", "seal", "--in", tmp / "build", "--signing-key", tmp / "op" / "operator.key",
                       "--device-key", tmp / "dev" / "device.pub", "--device-id", "cam-01", "--version", 4,
                       "--out", tmp_path / "v4.bundle", "--impostors", tmp_path / "deep.json")
    assert code == 1 and "is not an impostor file" in err and not (tmp_path / "v4.bundle").exists()


def test_build_gate_options_are_checked_and_no_gate_enrolls_more(operator_flow, capsys, tmp_path):
    tmp = operator_flow
    code, _, err = run(capsys, "watchlist", "build", "--gallery", tmp / "gallery.csv", "--root", DATA,
                       "--out", tmp_path / "b", "--min-sharpness", 2)
    assert code == 1 and "--min-sharpness must be between 0 and 1, got 2.0" in err
    code, _, err = run(capsys, "watchlist", "build", "--gallery", tmp / "gallery.csv", "--root", DATA,
                       "--out", tmp_path / "strict", "--min-eye-distance", 500, "--json")
    assert code == 1 and "could be enrolled (4 rejected)" in err
    code, out, _ = run(capsys, "watchlist", "build", "--gallery", tmp / "gallery.csv", "--root", DATA,
                       "--out", tmp_path / "loose", "--min-eye-distance", 500, "--no-gate", "--json")
    assert code == 0 and json.loads(out)["n_templates"] == 2


@pytest.mark.parametrize("device_space", ["dlib_resnet_v1+hse_faceres", "dlib_resnet_v1"])
def test_a_bundle_of_another_embedding_space_is_refused_with_the_fix(operator_flow, tmp_path, analyzer,
                                                                     dlib_analyzer, device_space):
    """A list enrolled with MobileFaceNet (the default) on a device still running dlib (fused or alone) is refused,
    and the message names the command that re-enrolls."""
    tmp = operator_flow
    assert analyzer.embedder_id == "mobilefacenet"
    device = keys.load_private_key(tmp / "dev" / "device.key", "device")
    operator = keys.load_public_key(tmp / "op" / "operator.pub", "operator")
    store = WatchlistStore(tmp_path / "state", "cam-01", device, {keys.key_id(operator): operator},
                           device_space, dlib_analyzer.embedder_info.sha256,
                           lambda b: Watchlist.from_payload(b.payload, b.manifest["thresholds"], b.manifest))
    store.start()
    result = store.install((tmp / "v3.bundle").read_bytes())
    assert not result.ok and result.reason == "wrong_embedder"
    assert "built for embedder mobilefacenet" in result.message and "edge watchlist build --gallery" in result.message


def test_watchlist_bench_on_bundled_photos_reports_every_run(capsys, tmp_path):
    """`edge watchlist bench` end to end at a small size: real enrollments padded with distractors, sealed, loaded in
    a fresh process (its RSS), queried; recall against exact search and the keys of DESIGN §9's report."""
    (tmp_path / "gallery.csv").write_text("path,identity\nfaces/obama.jpg,obama\nfaces/biden.jpg,biden\n")
    (tmp_path / "probes.csv").write_text(
        "path,identity,in_watchlist\nfaces/obama2.jpg,obama,1\nfaces/obama3.jpg,obama,1\n"
        "faces/astronaut.jpg,eileen_collins,0\nfaces/coffee.jpg,nobody,0\n")
    code, out, err = run(capsys, "watchlist", "bench", "--gallery", tmp_path / "gallery.csv", "--probes",
                         tmp_path / "probes.csv", "--root", DATA, "--size", "300", "--queries", "40", "--trees", "2,4",
                         "--stage1-dim", "16", "--save-bundle", tmp_path / "saved", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert (r["n_subjects"], r["n_real_subjects"]) == (300, 2) and r["fused"] is False  # MobileFaceNet alone
    assert [run_["n_trees"] for run_ in r["runs"]] == [2, 4]
    for run_ in r["runs"]:
        assert run_["n_queries"] == 40 and 0.9 <= run_["recall_at_1_vs_exact"] <= 1.0
        assert run_["rss_mb_fresh_process_after_load"] > 0 and run_["rss_mb_after_queries"] > 0
        assert run_["query_ms"]["p50"] > 0
    assert "trees 2 search_k -1" in err  # one progress line per run on stderr
    assert (tmp_path / "saved" / "bench-4.bundle").stat().st_size > 0
    assert oct((tmp_path / "saved" / "device.key").stat().st_mode & 0o777) == "0o600"


def test_seal_prints_group_false_match_rates_and_warns_past_the_bound(operator_flow, capsys, tmp_path):
    """A summary from `edge eval demographics --save-summary` (here synthetic, crossing the 3× bound at the sealed
    threshold): seal prints each group's rate at that threshold and warns; a wider bound stays silent."""
    tmp = operator_flow
    if not (tmp / "build").exists():
        assert main(["watchlist", "build", "--gallery", str(tmp / "gallery.csv"), "--root", str(DATA),
                     "--out", str(tmp / "build")]) == 0
    capsys.readouterr()
    grid = [round(0.2 + 0.005 * i, 4) for i in range(161)]
    summary = {"thresholds": grid, "source": "synthetic test summary", "groups": {
        "group a": {"faces": 500, "pairs": 100_000, "false": [80] * len(grid)},
        "group b": {"faces": 500, "pairs": 100_000, "false": [10] * len(grid)},
        "tiny": {"faces": 3, "pairs": 3, "false": [0] * len(grid)}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    args = ["watchlist", "seal", "--in", tmp / "build", "--signing-key", tmp / "op" / "operator.key", "--device-key",
            tmp / "dev" / "device.pub", "--device-id", "cam-01", "--demographics", tmp_path / "summary.json"]
    code, out, err = run(capsys, *args, "--version", 7, "--out", tmp_path / "v7.bundle")
    assert code == 0, err
    assert "warning: false-match rates differ 8.0× between groups" in err and "group a" in err
    assert "group a" in out and "8.00e-04" in out and "1.00e-04" in out and "not estimable" in out
    code, out, err = run(capsys, *args, "--version", 8, "--out", tmp_path / "v8.bundle", "--demographic-bound", "10",
                         "--json")
    demo = json.loads(out)["demographics"]
    assert code == 0 and demo["warning"] is None and demo["within_group_fmr"]["group b"]["rate"] == 1e-4
    assert demo["within_group_fmr"]["tiny"]["estimable"] is False and "warning" not in err
    (tmp_path / "bad.json").write_text('{"thresholds": "x"}')
    code, _, err = run(capsys, *args[:-1], tmp_path / "bad.json", "--version", 9, "--out", tmp_path / "v9.bundle")
    assert code == 1 and "is not a summary from `edge eval demographics" in err
    assert not (tmp_path / "v9.bundle").exists()


def test_eval_demographics_reads_the_threshold_a_sealed_bundle_carries(operator_flow, capsys, tmp_path):
    """`edge eval demographics --bundle FILE`: the match threshold of the bundle's (unverified) manifest."""
    tmp = operator_flow
    if not (tmp / "build").exists():
        assert main(["watchlist", "build", "--gallery", str(tmp / "gallery.csv"), "--root", str(DATA),
                     "--out", str(tmp / "build")]) == 0
    code, out, err = run(capsys, "watchlist", "seal", "--in", tmp / "build", "--signing-key",
                         tmp / "op" / "operator.key", "--device-key", tmp / "dev" / "device.pub", "--device-id",
                         "cam-01", "--version", 11,
                         "--out", tmp_path / "v11.bundle", "--json")
    assert code == 0, err
    sealed = json.loads(out)["thresholds"]["match"]
    (tmp_path / "m.csv").write_text("path,identity,group\nfaces/obama.jpg,obama,g\nfaces/biden.jpg,,g\n")
    code, out, err = run(capsys, "eval", "demographics", "--manifest", tmp_path / "m.csv", "--root", DATA, "--bundle",
                         tmp_path / "v11.bundle", "--json")
    assert code == 0, err
    at = json.loads(out)["at"][0]
    assert at["threshold"] == sealed and "v11" in at["why"] and at["within"]["g"]["fmr"]["pairs"] == 1
