"""The one constructor of networks: training, tuning and the registry call
`build_model(config)` and never name a network class."""
from __future__ import annotations

from models.config import ModelConfig
from models.networks import MMoEEx, MultiTaskModel, SharedBottom, SingleTaskNets


def build_model(config: ModelConfig) -> MultiTaskModel:
    """A freshly initialised network for `config` (seeded by `config.seed`).

    "mmoe" is MMoEEx with no exclusive expert (config.n_exclusive_experts is
    0 for it, whatever alpha says).
    """
    if config.architecture in ("mmoeex", "mmoe"):
        return MMoEEx(config)
    if config.architecture == "shared-bottom":
        return SharedBottom(config)
    if config.architecture == "single-task":
        return SingleTaskNets(config)
    raise ValueError(f"no network for architecture {config.architecture!r}")
