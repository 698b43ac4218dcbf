"""Ensembles: the stacked members score as the member networks do, one by
one, for every architecture and input form; mean and spread; members come
back out unchanged."""
from __future__ import annotations

import pytest
import torch

from models.config import ModelConfig
from models.ensemble import Ensemble, member_config, member_probabilities
from models.factory import build_model
from models.networks.sparse_input import SparseRows
from tests.test_models_networks import ARCHITECTURES, fingerprints, small_config


def trained_like_members(config: ModelConfig, n_members: int) -> list[torch.nn.Module]:
    """Members with distinct, non-initial weights (biases shifted by seed),
    so a mixed-up member or axis shows in the scores."""
    members = []
    for index in range(n_members):
        model = build_model(member_config(config, index)).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias"):
                    param.add_(0.1 * (index + 1))
        members.append(model)
    return members


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("tower_hidden", [0, 5])
@pytest.mark.parametrize("exclusivity", ["exclusive", "exclusion"])
def test_ensemble_scores_as_its_members(architecture: str, tower_hidden: int, exclusivity: str) -> None:
    config = small_config(architecture=architecture, tower_hidden=tower_hidden, exclusivity=exclusivity,
                          expert_hidden=(8, 7))
    members = trained_like_members(config, 3)
    ensemble = Ensemble(members)
    x = fingerprints(11, 24, seed=5)
    expected = torch.stack([torch.sigmoid(member(x)) for member in members])
    with torch.inference_mode():
        for features in (x, SparseRows.from_dense(x)):
            got = member_probabilities(ensemble, features)
            assert got.shape == (3, 11, 6)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert ensemble.stacked_forward == (architecture != "single-task" and tower_hidden == 0)


def test_stacked_state_round_trips_and_gives_members_back() -> None:
    config = small_config(tower_hidden=0)
    members = trained_like_members(config, 2)
    ensemble = Ensemble(members)
    assert ensemble.state_dict()["stack.experts.layers.0.weight"].shape == (2, 4, 24, 8)
    again = Ensemble.initialised(config, 2)
    again.load_state_dict(ensemble.state_dict())
    x = fingerprints(5, 24)
    for index, member in enumerate(members):
        torch.testing.assert_close(again.member(index)(x), member(x))
        assert again.member(index).config.seed == config.seed + index
    assert not ensemble.training
    with pytest.raises(RuntimeError, match="only scores"):
        ensemble.train()


def test_members_must_share_one_config() -> None:
    config = small_config()
    with pytest.raises(ValueError, match="member 1"):
        Ensemble([build_model(config), build_model(config)])  # same seed twice


def test_single_network_is_a_one_member_ensemble() -> None:
    model = build_model(small_config()).eval()
    x = fingerprints(4, 24)
    probabilities = member_probabilities(model, x)
    assert probabilities.shape == (1, 4, 6)
    torch.testing.assert_close(probabilities[0], torch.sigmoid(model(x)))
