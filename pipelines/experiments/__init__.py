"""Runs made of many training runs: Ray Tune sweeps (driver, trial,
report) and the model comparison table."""
