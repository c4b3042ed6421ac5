"""Error rates by demographic group: the counting on embeddings with known scores, the interval and estimability
rules, the stored summary's lookup, the ratio warning, and `edge eval demographics` on the bundled photos."""

import json

import numpy as np
import pytest

from conftest import DATA, FACES
from edge.cli.main import main
from edge.evaluation.demographics import pair_counts, report_at, summarise
from edge.vision.demographics import fmr_at, rate, ratio_warning, wilson


def _unit(rows):
    v = np.asarray(rows, np.float64)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _known_embeddings():
    """Group A: three faces pairwise at cosine 0.9 (two of them one person), group B: three mutually orthogonal faces
    orthogonal to A, group C: one face (no within-group pair at all)."""
    a = np.array([1.0, 0, 0, 0, 0, 0, 0, 0])
    emb = []
    for k in range(3):  # cos(a + e_k·s, a + e_j·s) = 1 / (1 + s²) = 0.9
        v = a.copy()
        v[1 + k] = np.sqrt(1 / 0.9 - 1)
        emb.append(v)
    emb += [np.eye(8)[4], np.eye(8)[5], np.eye(8)[6]]
    emb.append(np.eye(8)[7])
    groups = ["A", "A", "A", "B", "B", "B", "C"]
    ids = ["p1", "p1", "", "", "", "", ""]
    return _unit(emb), groups, ids


def test_counts_within_and_across_groups_at_known_scores():
    emb, groups, ids = _known_embeddings()
    within, across = pair_counts(emb, groups, ids, [0.5, 0.95], block=3)
    a, b, c = within["A"], within["B"], within["C"]
    # A: 3 pairs, one genuine (p1, p1) -> 2 impostor pairs, both at 0.9: false at 0.5, not at 0.95
    assert (a.faces, a.pairs, a.false, a.genuine, a.missed) == (3, 2, (2, 0), 1, (0, 1))
    assert (b.pairs, b.false) == (3, (0, 0)) and (c.faces, c.pairs) == (1, 0)
    assert across.pairs == 3 * 3 + 3 * 1 + 3 * 1 and across.false == (0, 0)  # A×B, A×C, B×C: all orthogonal
    rep = report_at(within, across, 0, 0.5)
    assert rep["within"]["A"]["fmr"]["rate"] == 1.0 and rep["within"]["A"]["fnmr"]["count"] == 0
    # B has pairs but no false match, C has no pair at all: neither prints a zero
    assert rep["within"]["B"]["fmr"]["rate"] is None and not rep["within"]["B"]["fmr"]["estimable"]
    assert "too few to estimate" in rep["within"]["B"]["fmr"]["note"]
    assert rep["within"]["C"]["fmr"]["note"] == "no pairs in this group"
    assert rep["not_estimable"] == ["B", "C"] and rep["max_min_ratio"] is None  # one estimable group: no ratio
    assert rep["across"]["rate"] is None and rep["across"]["pairs"] == 15


def test_wilson_interval_and_rate():
    low, high = wilson(0, 1000)
    # about the rule of three
    assert low == pytest.approx(0, abs=1e-12) and high == pytest.approx(3.84 / 1003.84, rel=0.01)
    low, high = wilson(50, 1000)
    assert low < 0.05 < high and high - low < 0.03
    r = rate(5, 100_000)
    assert r["estimable"] and r["rate"] == 5e-5 and r["low"] < 5e-5 < r["high"]


def test_summary_lookup_is_conservative_and_the_ratio_warns_past_the_bound():
    emb, groups, ids = _known_embeddings()
    grid = [0.5, 0.8, 0.95]
    within, _ = pair_counts(emb, groups, ids, grid)
    summary = summarise(within, grid, "test")
    assert json.loads(json.dumps(summary)) == summary
    # 0.9 lies between 0.8 and 0.95: the lower grid point (more false matches) answers
    at = fmr_at(summary, 0.9)
    assert at["A"]["rate"] == 1.0 and at["A"]["grid_threshold"] == 0.8 and not at["B"]["estimable"]
    synthetic = {"thresholds": [0.5, 0.6], "source": "synthetic",
                 "groups": {"g1": {"faces": 100, "pairs": 10_000, "false": [40, 10]},
                            "g2": {"faces": 100, "pairs": 10_000, "false": [10, 2]},
                            "g3": {"faces": 5, "pairs": 10, "false": [0, 0]}}}
    rates = fmr_at(synthetic, 0.55)
    warning = ratio_warning(rates, 3.0)
    assert warning and "4.0×" in warning and "g1" in warning and "g2" in warning
    assert ratio_warning(rates, 5.0) is None  # within the bound
    assert ratio_warning(fmr_at(synthetic, 0.6), 3.0) and not rates["g3"]["estimable"]


def test_eval_demographics_on_the_bundled_photos(tmp_path, capsys, analyzer):
    """Three groups of real faces; the reported counts are the ones the embeddings give; a one-face group says it
    cannot be estimated; the summary and the plot are written."""
    from edge.imageio import read_image

    rows = [("faces/obama.jpg", "obama", "g1"), ("faces/obama2.jpg", "obama", "g1"), ("faces/biden.jpg", "", "g1"),
            ("faces/obama3.jpg", "", "g2"), ("faces/astronaut.jpg", "", "g2"), ("faces/coffee.jpg", "", "g2"),
            ("faces/obama_partial_face.jpg", "", "g3")]
    (tmp_path / "m.csv").write_text("path,identity,group\n" + "".join(f"{p},{i},{g}\n" for p, i, g in rows))
    emb = {p: analyzer.best_face(read_image(DATA / p)) for p, _, _ in rows}
    t = 0.3
    code = main(["eval", "demographics", "--manifest", str(tmp_path / "m.csv"), "--root", str(DATA), "--threshold",
                 str(t), "--json", "--save-summary", str(tmp_path / "s.json"), "--plot", str(tmp_path / "p.png")])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["n_failed_detect"] == sum(f is None for f in emb.values())
    rep = out["at"][0]
    g1 = [emb[p].embedding for p, _, g in rows if g == "g1"]
    expected_false = sum(float(g1[i] @ g1[2]) >= t for i in (0, 1))  # obama-obama is genuine, not impostor
    assert rep["within"]["g1"]["fmr"]["pairs"] == 2 and rep["within"]["g1"]["fmr"]["count"] == expected_false
    assert rep["within"]["g1"]["fnmr"]["genuine_pairs"] == 1
    if "g3" in rep["within"]:  # the partial face may not be found; if it is, it is alone in its group
        assert rep["within"]["g3"]["fmr"]["note"] == "no pairs in this group"
    assert (tmp_path / "p.png").stat().st_size > 0 and json.loads((tmp_path / "s.json").read_text())["groups"]
    assert main(["eval", "demographics", "--manifest", str(tmp_path / "m.csv"), "--root", str(FACES.parent)]) == 1
    assert "give the threshold" in capsys.readouterr().err
    (tmp_path / "junk.bundle").write_bytes(b"\x00" * 100 + b"{" * 10_000)  # not a bundle: one line, no traceback
    assert main(["eval", "demographics", "--manifest", str(tmp_path / "m.csv"), "--root", str(DATA), "--bundle",
                 str(tmp_path / "junk.bundle")]) == 1
    err = capsys.readouterr().err
    assert "cannot read the threshold of" in err and "Traceback" not in err
