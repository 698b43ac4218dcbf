"""The one constructor of networks: training, tuning and the registry call
`build_model(config)` and never name a network class."""
from __future__ import annotations

from models.config import ModelConfig
from models.networks import MMoEEx, MultiTaskModel, SharedBottom, SingleTaskNets

#: Architecture name (models.config.ARCHITECTURE_PARAMETERS) -> its network.
#: "mmoe" is MMoEEx with no exclusive expert: it has no alpha.
NETWORKS: dict[str, type[MultiTaskModel]] = {
    "mmoeex": MMoEEx,
    "mmoe": MMoEEx,
    "shared-bottom": SharedBottom,
    "single-task": SingleTaskNets,
}


def build_model(config: ModelConfig) -> MultiTaskModel:
    """A freshly initialised network for `config` (seeded by `config.seed`)."""
    return NETWORKS[config.architecture](config)
