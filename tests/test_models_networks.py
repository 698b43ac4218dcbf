"""Networks: shapes, batching against per-expert loops, sparse against dense rows,
exclusivity, config and state round trips."""
from __future__ import annotations

import json

import pytest
import torch

from models.activations import ACTIVATIONS
from models.config import ModelConfig
from models.factory import build_model
from models.networks import sparse_input
from models.networks.layers import activate_and_drop
from models.networks.sparse_input import SparseRows
from models.steps import StepConfig, build_step

ARCHITECTURES = ["mmoeex", "mmoe", "shared-bottom", "single-task"]


def small_config(**overrides: object) -> ModelConfig:
    values = {"architecture": "mmoeex", "n_features": 24, "n_tasks": 6, "n_experts": 4, "expert_hidden": (8,),
              "tower_hidden": 5, "alpha": 0.5, "exclusivity": "exclusive", "dropout": 0.0, "seed": 3}
    return ModelConfig(**(values | overrides))


def fingerprints(rows: int, bits: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, bits, generator=generator) < 0.2).float()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("hidden", [(8,), (8, 7)])
def test_shapes(architecture: str, hidden: tuple[int, ...]) -> None:
    model = build_model(small_config(architecture=architecture, expert_hidden=hidden))
    x = fingerprints(9, 24)
    assert model(x).shape == (9, 6)
    experts, gates = model.expert_outputs(x), model.gate_weights(x)
    if architecture in ("mmoeex", "mmoe"):
        assert experts.shape == (4, 9, hidden[-1])
        assert gates.shape == (9, 6, 4)
    else:
        assert experts is None and gates is None


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("counts", [False, True])
def test_sparse_rows_give_the_dense_logits(architecture: str, counts: bool) -> None:
    model = build_model(small_config(architecture=architecture, expert_hidden=(8, 7))).eval()
    x = fingerprints(9, 24)
    if counts:
        x = x * torch.randint(1, 5, x.shape, generator=torch.Generator().manual_seed(1))
    x[0] = 0  # an empty row first, in the middle and last: empty bags
    x[4] = 0
    x[-1] = 0
    sparse = SparseRows.from_dense(x)
    assert (sparse.values is None) == (not counts)
    assert sparse.indices.numel() == int((x != 0).sum())
    torch.testing.assert_close(model(sparse), model(x), rtol=1e-5, atol=1e-6)


def reference_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The textbook loop (Ma et al. 2018, Eq. 5-6): every expert, then per task
    its gate (weight 1 on the one trunk without gates), mixture and tower."""
    n_experts = model.experts.layers[0].weight.shape[0]
    experts = []
    for e in range(n_experts):
        h = x
        for layer in model.experts.layers:
            h = torch.relu(h @ layer.weight[e] + layer.bias[e])
        experts.append(h)
    logits = []
    for k in range(model.config.n_tasks):
        if model.gates is None:
            gate = torch.ones(x.shape[0], 1, dtype=x.dtype)
        else:
            scores = x @ model.gates.weight[k] + model.gates.bias[k]
            gate = torch.softmax(scores.masked_fill(~model.gates.open_mask()[k], float("-inf")), dim=1)
        mixed = sum(gate[:, e:e + 1] * experts[e] for e in range(n_experts))
        towers = model.towers
        if towers.hidden is not None:
            mixed = torch.relu(mixed @ towers.hidden.weight[k] + towers.hidden.bias[k])
        logits.append(mixed @ towers.output.weight[k, :, 0] + towers.output.bias[k, 0])
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize("architecture", ["mmoeex", "mmoe", "shared-bottom"])
@pytest.mark.parametrize("tower_hidden", [0, 5], ids=["linear-towers", "hidden-towers"])
def test_mixture_forward_matches_a_loop_over_experts_and_tasks(architecture: str,
                                                               tower_hidden: int) -> None:
    """The stacked forward (no [K, B, h] copies for shared input or linear
    towers) equals the per-expert, per-task loop."""
    model = build_model(small_config(architecture=architecture, expert_hidden=(8, 7),
                                     tower_hidden=tower_hidden)).double()
    x = fingerprints(5, 24).double()
    torch.testing.assert_close(model(x), reference_logits(model, x))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("tower_hidden", [0, 5], ids=["linear-towers", "hidden-towers"])
@pytest.mark.parametrize("counts", [False, True], ids=["bits", "counts"])
@pytest.mark.parametrize("wide_group", [1, 10**9], ids=["bag-per-group", "one-gather"])
def test_sparse_rows_train_like_dense_rows(architecture: str, tower_hidden: int, counts: bool,
                                           wide_group: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain step in train mode (dropout on): the same loss and the same
    gradient of every parameter from SparseRows as from the dense rows."""
    monkeypatch.setattr(sparse_input, "WIDE_GROUP", wide_group)
    config = small_config(architecture=architecture, expert_hidden=(8, 7), tower_hidden=tower_hidden,
                          dropout=0.25)
    generator = torch.Generator().manual_seed(2)
    x = fingerprints(9, 24)
    if counts:
        x = x * torch.randint(1, 5, x.shape, generator=generator)
    x[0] = x[4] = x[-1] = 0  # empty bags first, in the middle and last
    labels = (torch.rand(9, 6, generator=generator) < 0.3).float()
    mask = torch.rand(9, 6, generator=generator) < 0.7
    sparse = SparseRows.from_dense(x)
    assert torch.equal(sparse.to_dense(), x)
    results = {}
    for name, features in (("dense", x), ("sparse", sparse)):
        model = build_model(config).train()
        torch.manual_seed(5)  # the same dropout masks for both
        output = build_step(StepConfig(optimizer="plain", pos_weight=None))(model, features, labels, mask)
        results[name] = output, {n: p.grad for n, p in model.named_parameters()}
    (dense_out, dense_grads), (sparse_out, sparse_grads) = results["dense"], results["sparse"]
    torch.testing.assert_close(sparse_out.task_losses, dense_out.task_losses)
    assert dense_grads.keys() == sparse_grads.keys()
    for name, grad in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_single_task_nets_are_independent() -> None:
    """Changing task 2's weights changes only task 2's logit."""
    model = build_model(small_config(architecture="single-task", expert_hidden=(8, 7)))
    x = fingerprints(5, 24)
    before = model(x)
    with torch.no_grad():
        model.trunks.layers[0].weight[2] += 1.0
    after = model(x)
    changed = (before - after).abs().amax(dim=0) > 0
    assert changed.tolist() == [False, False, True, False, False, False]


@pytest.mark.parametrize("alpha, n_exclusive", [(0.0, 0), (0.5, 2), (0.55, 2), (0.625, 3), (1.0, 3)])
def test_exclusive_expert_count(alpha: float, n_exclusive: int) -> None:
    model = build_model(small_config(alpha=alpha))
    assert int((model.gates.exclusive_expert_task >= 0).sum()) == n_exclusive


def test_exclusive_experts_are_open_to_exactly_their_task() -> None:
    model = build_model(small_config(alpha=0.5))
    assignment = model.gates.exclusive_expert_task
    weights = model.gate_weights(fingerprints(11, 24))
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(11, 6))
    for expert, task in enumerate(assignment.tolist()):
        open_to = (weights[:, :, expert] > 0).all(dim=0)
        closed = (weights[:, :, expert] == 0).all(dim=0)
        if task < 0:
            assert open_to.all()
        else:
            assert open_to.tolist() == [k == task for k in range(6)]
            assert closed.sum() == 5


def test_exclusion_closes_an_expert_to_its_task_only() -> None:
    model = build_model(small_config(alpha=0.5, exclusivity="exclusion"))
    weights = model.gate_weights(fingerprints(11, 24))
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(11, 6))
    for expert, task in enumerate(model.gates.exclusive_expert_task.tolist()):
        closed = (weights[:, :, expert] == 0).all(dim=0)
        assert closed.tolist() == [k == task for k in range(6)]


def test_closed_gate_entries_get_no_gradient() -> None:
    model = build_model(small_config(alpha=0.5))
    model(fingerprints(7, 24)).sum().backward()
    closed = ~model.gates.open_mask()  # [K, E]
    assert closed.any()
    assert (model.gates.weight.grad.permute(0, 2, 1)[closed] == 0).all()
    assert (model.gates.bias.grad[closed] == 0).all()


def test_alpha_zero_equals_mmoe() -> None:
    x = fingerprints(7, 24)
    mmoeex = build_model(small_config(architecture="mmoeex", alpha=0.0))
    mmoe = build_model(small_config(architecture="mmoe", alpha=0.5))  # alpha ignored for mmoe
    assert (mmoe.gates.exclusive_expert_task == -1).all()
    torch.testing.assert_close(mmoeex(x), mmoe(x), rtol=0, atol=0)


def test_state_dict_round_trip_keeps_the_exclusive_assignment() -> None:
    source = build_model(small_config(seed=3))
    target = build_model(small_config(seed=4))
    assert not torch.equal(source.gates.exclusive_expert_task, target.gates.exclusive_expert_task)
    target.load_state_dict(source.state_dict())
    assert "gates.exclusive_expert_task" in source.state_dict()
    assert torch.equal(source.gates.exclusive_expert_task, target.gates.exclusive_expert_task)
    x = fingerprints(7, 24)
    torch.testing.assert_close(source.gate_weights(x), target.gate_weights(x), rtol=0, atol=0)
    torch.testing.assert_close(source(x), target(x), rtol=0, atol=0)


TOWERS_LAYOUT = {"towers.hidden.weight": (6, 8, 5), "towers.hidden.bias": (6, 5),
                 "towers.output.weight": (6, 5, 1), "towers.output.bias": (6, 1)}
SAVED_LAYOUT = {
    "mmoeex": {"experts.layers.0.weight": (4, 24, 8), "experts.layers.0.bias": (4, 8),
               "gates.weight": (6, 24, 4), "gates.bias": (6, 4), "gates.exclusive_expert_task": (4,),
               **TOWERS_LAYOUT},
    "shared-bottom": {"experts.layers.0.weight": (1, 24, 8), "experts.layers.0.bias": (1, 8),
                      **TOWERS_LAYOUT},
    "single-task": {"trunks.layers.0.weight": (6, 24, 8), "trunks.layers.0.bias": (6, 8),
                    **TOWERS_LAYOUT},
}


@pytest.mark.parametrize("architecture", sorted(SAVED_LAYOUT))
def test_state_dict_layout_is_the_one_saved_checkpoints_have(architecture: str) -> None:
    """Registered models and training checkpoints load with load_state_dict:
    the keys, their order and the shapes must not move."""
    state = build_model(small_config(architecture=architecture)).state_dict()
    assert [(key, tuple(value.shape)) for key, value in state.items()] == list(
        SAVED_LAYOUT[architecture].items())


def test_same_seed_same_model() -> None:
    x = fingerprints(4, 24)
    torch.testing.assert_close(build_model(small_config())(x), build_model(small_config())(x),
                               rtol=0, atol=0)


def test_config_round_trip_through_json() -> None:
    config = small_config(expert_hidden=(16, 8), architecture="shared-bottom", exclusivity="exclusion")
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("counts", [False, True], ids=["bits", "counts"])
def test_sparse_dropout_is_inverted_dropout_of_the_dense_rows(counts: bool) -> None:
    """Each non-zero is kept with probability 1 - p and scaled by 1 / (1 - p);
    zeros stay zero, empty rows stay empty, p = 0 keeps everything."""
    p = 0.4
    x = fingerprints(300, 64)
    if counts:
        x = x * torch.randint(1, 5, x.shape, generator=torch.Generator().manual_seed(1))
    x[0] = x[150] = x[-1] = 0
    sparse = SparseRows.from_dense(x)
    torch.manual_seed(0)
    dropped = sparse.dropout(p).to_dense()
    kept = dropped != 0
    assert not kept[x == 0].any()
    torch.testing.assert_close(dropped[kept], x[kept] / (1 - p))
    share = kept[x != 0].float().mean().item()
    assert abs(share - (1 - p)) < 4 * (p * (1 - p) / int((x != 0).sum())) ** 0.5
    torch.testing.assert_close(sparse.dropout(0.0).to_dense(), x)
    with pytest.raises(ValueError, match="dropout probability"):
        sparse.dropout(1.0)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_gate_dropout_drops_the_gates_input_in_training_only(sparse: bool) -> None:
    """In training the gates read a dropped-out copy of x (the same draw as
    dropout of x itself), the experts x whole; in eval mode the gates read x."""
    model = build_model(small_config(gate_dropout=0.5))
    plain = build_model(small_config())
    x = fingerprints(9, 24)
    features = SparseRows.from_dense(x) if sparse else x
    torch.manual_seed(7)
    dropped = (features.dropout(0.5).to_dense() if sparse
               else torch.nn.functional.dropout(x, 0.5))
    torch.manual_seed(7)
    in_training = model.gates(features)
    model.eval()
    torch.testing.assert_close(in_training, model.gates(dropped))
    assert not torch.allclose(in_training, model.gates(features))
    torch.testing.assert_close(model.gate_weights(features), plain.eval().gate_weights(features))
    torch.testing.assert_close(model.train().expert_outputs(features), plain.train().expert_outputs(features))


@pytest.mark.parametrize("bad, message", [
    ({"architecture": "transformer"}, "architecture"),
    ({"alpha": 1.5}, "alpha"),
    ({"expert_hidden": ()}, "expert_hidden"),
    ({"activation": "swish2"}, "activation"),
    ({"exclusivity": "both"}, "exclusivity"),
    ({"gate_dropout": 1.0}, "gate_dropout"),
])
def test_config_rejects_bad_values(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_config(**bad)


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="n_expert"):
        ModelConfig.from_dict({"n_expert": 3})


@pytest.mark.parametrize("name", ["relu", "tanh"])  # fused with the mask, and not
def test_activate_and_drop_is_inverted_dropout(name: str) -> None:
    """Each unit is kept with probability 1 - p and scaled by 1 / (1 - p),
    in the forward pass and in the gradient; eval mode leaves it alone."""
    activation, p = ACTIVATIONS[name], 0.25
    z = torch.randn(400, 500, generator=torch.Generator().manual_seed(0)).requires_grad_()
    out = activate_and_drop(activation, z, p, training=True)
    value = activation.fn(z.detach())
    kept = out.detach() != 0
    torch.testing.assert_close(out.detach()[kept], value[kept] / (1 - p))
    share = kept[value != 0].float().mean().item()
    assert abs(share - (1 - p)) < 4 * ((p * (1 - p)) / int((value != 0).sum())) ** 0.5
    (grad,) = torch.autograd.grad(out.sum(), z)
    torch.testing.assert_close(grad, activation.derivative(z.detach()) * kept / (1 - p))
    torch.testing.assert_close(activate_and_drop(activation, z, p, training=False), activation.fn(z))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivatives_match_autograd(name: str) -> None:
    activation = ACTIVATIONS[name]
    z = torch.linspace(-3, 3, 61, dtype=torch.float64).add(0.013).requires_grad_()
    (expected,) = torch.autograd.grad(activation.fn(z).sum(), z)
    torch.testing.assert_close(activation.derivative(z.detach()), expected)


def test_the_architecture_and_step_registries_name_what_models_builds() -> None:
    from models.config import ARCHITECTURES, OPTIMIZERS
    from models.factory import NETWORKS
    from models.steps import STEPS

    assert tuple(NETWORKS) == ARCHITECTURES and tuple(STEPS) == OPTIMIZERS
