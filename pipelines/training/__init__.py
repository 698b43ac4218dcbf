"""Training on Ray Train: the config (config.py), the Ray-free epoch loop
(engine.py), the worker function (worker.py), the trainer and the whole
tracked run (trainer.py: run_training). No re-exports here, so that reading
the config (every job's --help does) imports neither Ray nor MLflow."""
