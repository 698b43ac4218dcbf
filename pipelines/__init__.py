"""The jobs people run (featurize, train, tune, register, screen, submit and
the end-to-end run), their CLI, Ray wiring and MLflow tracking/registry."""
