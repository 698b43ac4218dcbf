"""A Ray Tune sweep over the training job: its settings and resources
(config.py), the Tuner wiring and the MLflow parent run (run.py), each trial
(trial.py), the trials table and plot (report.py), and the registration of
the best trial (registration.py).

Layout on disk (``storage/name``): Tune's experiment state (what
``--resume`` restores), ``sweep.json`` (the sweep's settings and its MLflow
parent run, read back on resume) and ``train_runs/`` (each trial's Ray Train
run and checkpoints, named ``<sweep>-<trial id>``).

MLflow: one parent run named after the sweep; every trial is a child run
(the training job's own run, nested by ``TrainConfig.mlflow_parent_run_id``),
so the MLflow UI compares trials side by side. The parent holds the sweep's
settings and search space, the trials table (CSV), the best trial's values
and scores, and a scatter plot of the step / alpha / E / inner lr against valid AP.
Trials stopped by ASHA end as KILLED runs tagged ``pcba.tune.status``.
"""
