"""Impostor-tail calibration: the GPD fit recovers known tails, predicts FMR beyond the data it saw, bounds it,
and refuses only targets out of reach."""

import json
import math

import numpy as np
import pytest

from edge.evaluation.calibration import TailModel, fit_tail, gpd_pwm, gpd_quantile, gpd_survival
from edge.errors import DataError


def _beta_cosines(rng, n):
    """A bounded, skewed score distribution like impostor cosines (mean ≈ 0.78, upper end 0.95)."""
    return 0.95 - 0.45 * rng.beta(3.0, 5.0, n)


def test_pwm_recovers_a_known_gpd():
    rng = np.random.default_rng(1)
    sigma, xi = 0.01, -0.25
    u = rng.random(200_000)
    excess = sigma / xi * (u ** -xi - 1.0)  # inverse survival of a GPD
    s, x = gpd_pwm(excess)
    assert s == pytest.approx(sigma, rel=0.03) and x == pytest.approx(xi, abs=0.02)
    assert gpd_quantile(float(gpd_survival(0.02, s, x)), s, x) == pytest.approx(0.02, rel=1e-9)


@pytest.mark.slow
def test_tail_model_predicts_fmr_beyond_the_data_it_was_fitted_on():
    rng = np.random.default_rng(2)
    probes = [_beta_cosines(rng, 1000) for _ in range(1000)]  # 1,000,000 comparisons
    model = fit_tail(probes, min_exceedances=2000, n_boot=50)
    truth = _beta_cosines(np.random.default_rng(3), 20_000_000)
    # A threshold whose true FMR (≈ 2e-6) is 1,000× below the tail threshold's rate, reached by ~2 fitted samples.
    t = float(np.quantile(truth, 1 - 2e-6))
    measured = float((truth >= t).mean())
    assert 0.5 < model.fmr(t) / measured < 2.0
    assert model.fmr_upper(t) >= model.fmr(t)
    # Below u the empirical curve answers.
    t_med = float(np.quantile(truth, 0.99))
    assert model.fmr(t_med) == pytest.approx(0.01, rel=0.15)


def test_threshold_for_size_meets_the_target_and_rises_with_size():
    rng = np.random.default_rng(4)
    model = fit_tail([_beta_cosines(rng, 1000) for _ in range(500)], min_exceedances=1000, n_boot=50)
    small, large = model.threshold_for(100, 0.01), model.threshold_for(10_000, 0.01)
    assert small["match"] < large["match"] <= 1.0
    assert small["match"] >= small["point"]
    assert model.fpir(small["match"], 100) <= 0.01 + 1e-9
    truth = _beta_cosines(np.random.default_rng(5), 5_000_000)
    fmr = -math.expm1(math.log1p(-0.01) / 100)
    assert (truth >= small["point"]).mean() == pytest.approx(fmr, rel=0.5)


def test_out_of_reach_target_is_refused_with_the_bound():
    rng = np.random.default_rng(6)
    # An unbounded (normal) tail close to 1: a huge list cannot be served.
    model = fit_tail([rng.normal(0.9, 0.04, 1000) for _ in range(200)], min_exceedances=1000, n_boot=20)
    with pytest.raises(DataError, match="cannot reach FPIR 0.003 with 300000 templates.*> 1"):
        model.threshold_for(300_000, 0.003)


def test_json_round_trip_gives_the_same_answers():
    rng = np.random.default_rng(7)
    model = fit_tail([_beta_cosines(rng, 500) for _ in range(400)], min_exceedances=1000, n_boot=20, source="test")
    again = TailModel.from_json(json.loads(json.dumps(model.to_json())))
    for t in (0.8, 0.9, 0.95, 0.97):
        assert again.fmr(t) == pytest.approx(model.fmr(t), rel=1e-3)
    want = model.threshold_for(1000, 0.003)["match"]
    assert again.threshold_for(1000, 0.003)["match"] == pytest.approx(want, abs=1e-4)
    with pytest.raises(DataError, match="malformed"):
        TailModel.from_json({"u": 0.9})


def test_too_few_comparisons_are_refused():
    with pytest.raises(DataError, match="too few"):
        fit_tail([np.linspace(0.5, 0.9, 100)], min_exceedances=2000)


def test_projection_reports_the_threshold_for_a_large_list_and_the_fnir_at_it():
    """`edge eval openset --project-size N`: the shipped tail's threshold for N templates and this run's misses."""
    from types import SimpleNamespace

    from edge.evaluation.openset import projection

    rng = np.random.default_rng(3)
    model = fit_tail([_beta_cosines(rng, 20_000) for _ in range(30)], n_boot=50)
    analyzer = SimpleNamespace(embedder_info=SimpleNamespace(info={"impostor_tail": model.to_json()}), fusion=None)
    th = model.threshold_for(300_000, 0.003)
    mated_top = np.array([th["match"] + 0.01, th["match"] - 1e-6, th["point"] + 1e-6, 0.99, -np.inf])
    mated_ok = np.array([True, True, True, False, False])
    p = projection(analyzer, 300_000, 0.003, mated_top, mated_ok)
    assert p["size"] == 300_000 and p["threshold"] == th["point"] and p["threshold_bound"] == th["match"]
    assert p["threshold_bound"] >= p["threshold"] and p["reachable"]
    # found = right mate on top AND at or above the threshold; a wrong top candidate is a miss however high
    assert p["fnir"] == pytest.approx(1 - 1 / 5) and p["fnir_at_point"] == pytest.approx(1 - 3 / 5)
    assert p["n_mated"] == 5 and p["fmr_per_comparison"] == pytest.approx(0.003 / 300_000, rel=0.01)
    # a larger list needs a higher threshold
    assert projection(analyzer, 3_000_000, 0.003, mated_top, mated_ok)["threshold_bound"] > p["threshold_bound"]
    # no tail shipped: said, not raised
    bare = SimpleNamespace(embedder_info=SimpleNamespace(info={"family": "x"}), fusion=None)
    assert "no impostor tail" in projection(bare, 1000, 0.003, mated_top, mated_ok)["error"]
