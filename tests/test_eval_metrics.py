"""Verification metrics and the pairs CSV reader."""

import numpy as np
import pytest

from edge.errors import DataError
from edge.evaluation.pairs import (best_threshold, default_folds, kfold_accuracy, read_pairs, tar_at_far,
                                   verification_report)


def test_best_threshold_separable():
    sims = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    same = np.array([0, 0, 0, 1, 1], bool)
    t, acc = best_threshold(sims, same)
    assert acc == 1.0 and 0.3 < t < 0.8


def test_best_threshold_with_overlap_counts_errors():
    sims = np.array([0.1, 0.6, 0.5, 0.9])
    same = np.array([0, 0, 1, 1], bool)
    t, acc = best_threshold(sims, same)
    assert acc == pytest.approx(0.75)


def test_tar_at_far_with_few_impostors_is_far_zero():
    sims = np.array([0.2, 0.4, 0.45, 0.5, 0.9])
    same = np.array([0, 0, 1, 1, 1], bool)
    tar, t, far = tar_at_far(sims, same, 1e-3)
    assert t == pytest.approx(0.4) and far == 0.0 and tar == pytest.approx(1.0)


def test_tar_at_far_allows_k_impostors():
    rng = np.random.default_rng(0)
    imp = rng.normal(0, 1, 10000)
    gen = rng.normal(3, 1, 1000)
    sims = np.concatenate([imp, gen])
    same = np.concatenate([np.zeros(10000, bool), np.ones(1000, bool)])
    tar, t, far = tar_at_far(sims, same, 1e-2)
    assert far <= 1e-2 and far > 0.5e-2
    assert tar == pytest.approx((gen > t).mean())


def test_kfold_accuracy_and_report():
    rng = np.random.default_rng(1)
    sims = np.concatenate([rng.normal(0.3, 0.1, 200), rng.normal(0.8, 0.1, 200)])
    same = np.concatenate([np.zeros(200, bool), np.ones(200, bool)])
    folds = default_folds(400)
    assert sorted(np.bincount(folds)) == [40] * 10
    acc = kfold_accuracy(sims, same, folds)
    assert 0.95 < acc <= 1.0
    report = verification_report(sims, same)
    assert {"accuracy", "accuracy_10fold_mean", "tar_at_far_1e-3", "threshold"} <= report.keys()


def test_read_pairs_errors_name_the_problem(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    csv = tmp_path / "p.csv"
    csv.write_text("path_a,path_b\na.jpg,a.jpg\n")
    with pytest.raises(DataError, match=r"missing column\(s\) same"):
        read_pairs(csv, tmp_path)
    csv.write_text("path_a,path_b,same\na.jpg,a.jpg,yes\n")
    with pytest.raises(DataError, match=r"line 2: 'same' must be 0 or 1, got 'yes'"):
        read_pairs(csv, tmp_path)
    csv.write_text("path_a,path_b,same\na.jpg,b.jpg,1\n")
    with pytest.raises(DataError, match=r"1 image\(s\) not found under .*b.jpg"):
        read_pairs(csv, tmp_path)
    with pytest.raises(DataError, match="CSV file not found"):
        read_pairs(tmp_path / "nope.csv", tmp_path)
    csv.write_text("path_a,path_b,same,fold\na.jpg,a.jpg,1,3\n")
    assert read_pairs(csv, tmp_path)[0].fold == 3
