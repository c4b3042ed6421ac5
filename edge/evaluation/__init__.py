"""Measuring the appliance: verification pairs, open-set identification, score-tail calibration, the pipeline and
watchlist benchmarks. Dev- and operator-time code; the device never imports it."""
