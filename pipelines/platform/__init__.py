"""The services jobs stand on: MLflow tracking, Ray start-up and job
submission, torch thread and device set-up."""
