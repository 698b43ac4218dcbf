"""Training on Ray Train: the config, the Ray-free epoch loop, the worker
function, the trainer and the whole tracked run (see trainer.py)."""
from pipelines.training.config import TrainConfig
from pipelines.training.trainer import TrainingResult, build_trainer, prepare_config, run_training

__all__ = ["TrainConfig", "TrainingResult", "build_trainer", "prepare_config", "run_training"]
