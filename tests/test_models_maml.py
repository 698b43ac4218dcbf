"""Training steps: the fast MAML-MTL path against the per-task reference loop,
the plain step against autograd, and short training runs that learn."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from maml_reference import reference_maml_step

from models import maml
from models.activations import get_activation
from models.config import ModelConfig
from models.factory import build_model
from models.losses import masked_bce_per_task
from models.maml import MAML_VARIANTS, _activate_and_drop
from models.metrics import evaluate_tasks
from models.networks.sparse_input import SparseRows
from models.outer_expert_scores import outer_expert_scores
from models.steps import StepConfig, build_step


def step_config(**changes) -> StepConfig:
    """A MAML-MTL step without class weighting, its loss the mean of the
    per-task losses, unless asked: the cases below compare steps and paths,
    not the product's defaults."""
    return StepConfig(**{"optimizer": "maml-mtl", "pos_weight": None, "loss_normalization": "task",
                         **changes})


def batch(rows: int, features: int, tasks: int, seed: int = 0, dtype: torch.dtype = torch.float64):
    """Fingerprint-like bits, sparse labels, about 35 % of labels missing."""
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(rows, features, generator=generator) < 0.25).to(dtype)
    labels = (torch.rand(rows, tasks, generator=generator) < 0.35).to(dtype)
    mask = torch.rand(rows, tasks, generator=generator) < 0.65
    mask[:, 0] = False  # a task with no label at all
    mask[:8, 1] = False  # a task with labels in the outer rows only
    return x, labels, mask


def tiny_model(architecture: str, hidden: tuple[int, ...], alpha: float, activation: str = "relu",
               tower_hidden: int = 3) -> torch.nn.Module:
    config = ModelConfig(architecture=architecture, n_features=12, n_tasks=5, n_experts=3,
                         expert_hidden=hidden, tower_hidden=tower_hidden, alpha=alpha,
                         exclusivity="exclusive", dropout=0.0, activation=activation, seed=1)
    return build_model(config).double()


def fast_grads(model: torch.nn.Module, config: StepConfig, x, labels, mask):
    output = build_step(config)(model, x, labels, mask)
    return output, {name: p.grad.clone() for name, p in model.named_parameters()}


CASES = [
    ("mmoeex", (6,), 0.67, "relu", 3), ("mmoeex", (6, 4), 0.67, "relu", 3),
    ("mmoeex", (6, 4), 0.34, "tanh", 0), ("mmoe", (6,), 0.0, "relu", 3),
    ("mmoe", (6, 4), 0.0, "gelu", 3), ("shared-bottom", (6, 4), 0.0, "relu", 3),
    ("single-task", (6,), 0.0, "relu", 3), ("single-task", (6, 4), 0.0, "silu", 0),
    # one expert layer into linear heads: the fused first-order path
    ("mmoeex", (6,), 0.67, "relu", 0), ("mmoe", (6,), 0.0, "gelu", 0),
    ("shared-bottom", (6,), 0.0, "tanh", 0),
]


def assert_matches_reference(model: torch.nn.Module, config: StepConfig, x, labels, mask) -> None:
    """Loss, per-task losses and every gradient of the fast step equal the reference loop's."""
    output, fast = fast_grads(model, config, x, labels, mask)
    task_losses, reference = reference_maml_step(
        model, x, labels, mask, inner_lr=config.inner_lr, variant=config.maml_variant,
        inner_fraction=config.inner_fraction, second_order=config.second_order,
        pos_weight=config.pos_weight)
    torch.testing.assert_close(output.task_losses, task_losses, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(output.loss, task_losses.mean(), rtol=1e-10, atol=1e-12)
    for name, grad in reference.items():
        torch.testing.assert_close(fast[name], grad, rtol=1e-9, atol=1e-12, msg=name)


VARIANTS = tuple(MAML_VARIANTS)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("second_order", [False, True], ids=["first-order", "second-order"])
@pytest.mark.parametrize("architecture, hidden, alpha, activation, tower_hidden", CASES)
def test_fast_maml_matches_the_reference_loop(architecture, hidden, alpha, activation, tower_hidden,
                                              second_order, variant) -> None:
    model = tiny_model(architecture, hidden, alpha, activation, tower_hidden)
    x, labels, mask = batch(10, 12, 5)
    config = step_config(inner_lr=0.7, maml_variant=variant, second_order=second_order, pos_weight=3.0)
    assert_matches_reference(model, config, x, labels, mask)


@pytest.mark.parametrize("rows", [3, 11])
@pytest.mark.parametrize("variant, inner_fraction", [("split", 0.6), ("full", 0.8), ("swap", 0.8)])
def test_fast_maml_matches_the_reference_on_odd_batches(variant: str, inner_fraction: float, rows: int) -> None:
    """Odd batches: swap's halves differ by a row, split rounds p * B."""
    model = tiny_model("mmoeex", (6, 4), 0.67)
    x, labels, mask = batch(rows, 12, 5, seed=2)
    config = step_config(inner_lr=0.7, maml_variant=variant, inner_fraction=inner_fraction, second_order=True)
    assert_matches_reference(model, config, x, labels, mask)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("second_order", [False, True], ids=["first-order", "second-order"])
@pytest.mark.parametrize("expert_hidden, tower_hidden", [((6, 4), 3), ((6,), 0)],
                         ids=["general", "linear-heads"])
@pytest.mark.parametrize("n_tasks, n_experts, alpha, exclusivity", [
    (5, 3, 0.67, "exclusion"),  # each assigned expert closed to its task only
    (2, 4, 0.75, "exclusive"),  # 3 exclusive experts, 2 tasks: a task owns two
    (2, 3, 0.67, "exclusion"),  # an expert open to one task of two
])
def test_fast_maml_matches_the_reference_for_every_expert_grouping(n_tasks, n_experts, alpha, exclusivity,
                                                                    expert_hidden, tower_hidden,
                                                                    second_order, variant) -> None:
    """The outer pass carries experts open to one task only as `[G, 1, ...]`
    (general path) or scores only the tasks an expert is open to (linear
    heads): check the layouts the gates' open mask can give."""
    config = ModelConfig(architecture="mmoeex", n_features=12, n_tasks=n_tasks, n_experts=n_experts,
                         expert_hidden=expert_hidden, tower_hidden=tower_hidden, alpha=alpha,
                         exclusivity=exclusivity, dropout=0.0, seed=1)
    model = build_model(config).double()
    x, labels, mask = batch(10, 12, n_tasks)
    config = step_config(inner_lr=0.7, maml_variant=variant, second_order=second_order)
    assert_matches_reference(model, config, x, labels, mask)


@pytest.mark.parametrize("pairs_per_block", [1, 4, 7])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_outer_pass_in_blocks_matches_the_reference(pairs_per_block: int, variant: str,
                                                          monkeypatch) -> None:
    """The fused pass scores (task, row) pairs in blocks that mix tasks: blocks
    of 1, 4 and 7 pairs (here about 30 pairs per expert) split tasks at
    different places and must give the reference loop's numbers."""
    scored: list[int] = []

    def in_blocks(*args):
        scored.append(1)
        return outer_expert_scores(*args, pairs_per_block=pairs_per_block)
    monkeypatch.setattr(maml, "outer_expert_scores", in_blocks)
    model = tiny_model("mmoeex", (6,), 0.67, tower_hidden=0)
    x, labels, mask = batch(10, 12, 5)
    assert_matches_reference(model, step_config(inner_lr=0.7, maml_variant=variant, pos_weight=3.0),
                             x, labels, mask)
    assert scored


def test_fused_outer_pass_rejects_an_empty_block() -> None:
    with pytest.raises(ValueError, match="pairs_per_block must be >= 1, got 0"):
        outer_expert_scores(*(None,) * 10, pairs_per_block=0)


def test_second_order_differs_from_first_order() -> None:
    """The equality test above could not tell the two apart if they agreed."""
    x, labels, mask = batch(10, 12, 5)
    _, first = fast_grads(tiny_model("mmoeex", (6, 4), 0.67, "tanh"), step_config(inner_lr=0.7), x, labels, mask)
    _, second = fast_grads(tiny_model("mmoeex", (6, 4), 0.67, "tanh"),
                           step_config(inner_lr=0.7, second_order=True), x, labels, mask)
    assert (first["experts.layers.0.weight"] - second["experts.layers.0.weight"]).abs().max() > 1e-6


@pytest.mark.parametrize("variant, outer_parts", [
    ("split", [slice(8, 10)]), ("full", [slice(0, 10)]), ("swap", [slice(0, 5), slice(5, 10)]),
])
def test_inner_lr_zero_is_the_plain_gradient_on_the_outer_rows(variant: str, outer_parts: list[slice]) -> None:
    """With beta = 0 only the outer rows are left: the last fifth (split),
    the whole batch (full), the mean over the two halves (swap)."""
    model = tiny_model("mmoeex", (6, 4), 0.67)
    x, labels, mask = batch(10, 12, 5)
    _, maml = fast_grads(model, step_config(inner_lr=0.0, maml_variant=variant), x, labels, mask)
    plain = [fast_grads(model, step_config(optimizer="plain"), x[rows], labels[rows], mask[rows])[1]
             for rows in outer_parts]
    for name in maml:
        torch.testing.assert_close(maml[name], sum(part[name] for part in plain) / len(plain), msg=name)


def test_plain_step_is_the_gradient_of_the_mean_task_loss() -> None:
    model = tiny_model("mmoeex", (6,), 0.67)
    x, labels, mask = batch(10, 12, 5)
    output, grads = fast_grads(model, step_config(optimizer="plain", pos_weight=2.0), x, labels, mask)
    expected_losses = masked_bce_per_task(model(x), labels, mask, 2.0)
    expected = torch.autograd.grad(expected_losses.mean(), list(model.parameters()))
    torch.testing.assert_close(output.task_losses, expected_losses.detach())
    for (name, grad), want in zip(grads.items(), expected):
        torch.testing.assert_close(grad, want, msg=name)


@pytest.mark.parametrize("optimizer", ["plain", "maml-mtl"])
def test_steps_take_sparse_rows(optimizer: str) -> None:
    """SparseRows give the dense rows' loss and gradients (MAML-MTL densifies them)."""
    x, labels, mask = batch(10, 12, 5)
    config = step_config(optimizer=optimizer, inner_lr=0.1)
    assert build_step(config).gains_from_sparse_rows == (optimizer == "plain")
    dense_output, dense_grads = fast_grads(tiny_model("mmoeex", (6,), 0.67), config, x, labels, mask)
    sparse_output, sparse_grads = fast_grads(tiny_model("mmoeex", (6,), 0.67), config,
                                             SparseRows.from_dense(x), labels, mask)
    torch.testing.assert_close(sparse_output.task_losses, dense_output.task_losses)
    for name, grad in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, msg=name)


def test_step_zeroes_old_gradients_and_fills_every_grad() -> None:
    model = tiny_model("mmoeex", (6,), 0.67)
    x, labels, mask = batch(10, 12, 5)
    for param in model.parameters():
        param.grad = torch.full_like(param, 123.0)
    _, first = fast_grads(model, step_config(), x, labels, mask)
    _, again = fast_grads(model, step_config(), x, labels, mask)
    for name in first:
        torch.testing.assert_close(first[name], again[name], msg=name)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("hidden, tower_hidden", [((6, 4), 3), ((6,), 0)], ids=["general", "linear-heads"])
@pytest.mark.parametrize("tasks_per_step, seed", [(2, 11), (2, 7), (2, 6), (1, 3)])
def test_task_subsampling_is_the_mean_over_the_sampled_tasks(tasks_per_step: int, seed: int, hidden: tuple,
                                                             tower_hidden: int, variant: str) -> None:
    """The model's exclusive experts belong to tasks 1 and 4. Seeds chosen so
    that the sampled tasks are [1, 4] (both owners), [0, 1] (one: the other
    expert is read by no task in play), [0, 2] (none) and [1] (one task in
    play: every expert it reads is in the shared layout)."""
    model = tiny_model("mmoeex", hidden, 0.67, tower_hidden=tower_hidden)
    assert model.gates.exclusive_expert_task.tolist() == [-1, 4, 1]
    x, labels, mask = batch(10, 12, 5)
    torch.manual_seed(seed)
    output, fast = fast_grads(model, step_config(inner_lr=0.7, maml_variant=variant,
                                                tasks_per_step=tasks_per_step), x, labels, mask)
    sampled = ~torch.isnan(output.task_losses)
    assert sampled.nonzero()[:, 0].tolist() == {11: [1, 4], 7: [0, 1], 6: [0, 2], 3: [1]}[seed]
    # The reference over all K tasks with the others' labels masked out,
    # rescaled from a mean over K to a mean over the sampled tasks.
    task_losses, reference = reference_maml_step(model, x, labels, mask & sampled, inner_lr=0.7,
                                                 variant=variant)
    torch.testing.assert_close(output.task_losses[sampled], task_losses[sampled])
    for name, grad in reference.items():
        torch.testing.assert_close(fast[name], grad * 5 / tasks_per_step, msg=name)


def test_dropout_in_train_mode_gives_finite_gradients() -> None:
    config = ModelConfig(architecture="mmoeex", n_features=12, n_tasks=5, n_experts=3, expert_hidden=(6, 4),
                         dropout=0.3)
    model = build_model(config).train()
    x, labels, mask = batch(10, 12, 5, dtype=torch.float32)
    output = build_step(step_config())(model, x, labels, mask)
    assert torch.isfinite(output.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("architecture, activation", [("mmoe", "relu"), ("mmoe", "gelu"),
                                                      ("shared-bottom", "relu")])
def test_linear_head_path_matches_the_general_path_with_dropout(architecture: str, activation: str,
                                                                variant: str, monkeypatch) -> None:
    """The reference loop cannot share dropout masks with a batched step, so
    the fused path is checked against the general one in train mode: with
    every expert shared, both draw their inner and outer masks in the same
    order and shapes, so one seed gives both the same masks."""
    config = ModelConfig(architecture=architecture, n_features=12, n_tasks=5, n_experts=3, expert_hidden=(6,),
                         tower_hidden=0, dropout=0.3, activation=activation, seed=1)
    x, labels, mask = batch(10, 12, 5)
    step = build_step(step_config(inner_lr=0.7, maml_variant=variant, pos_weight=3.0))
    results = []
    for fused in (True, False):
        model = build_model(config).double().train()
        scored: list[int] = []

        def counted(*args, calls=scored):
            calls.append(1)
            return outer_expert_scores(*args)
        monkeypatch.setattr(maml, "outer_expert_scores", counted)
        if not fused:
            monkeypatch.setattr(maml, "_linear_head_product_dtype", lambda *args: None)
        torch.manual_seed(5)
        output = step(model, x, labels, mask)
        assert bool(scored) == fused
        results.append((output.task_losses, {name: p.grad for name, p in model.named_parameters()}))
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["relu", "gelu"])
def test_outer_activation_with_dropout_equals_activation_times_mask(name: str) -> None:
    """The outer pass computes ReLU and dropout as relu(z * mask), in place:
    same values and same gradient as relu(z) * mask."""
    activation = get_activation(name)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 5, 6, generator=generator, dtype=torch.float64)
    drop = (torch.rand(3, 1, 5, 6, generator=generator) < 0.7).to(z.dtype) / 0.7
    upstream = torch.randn(3, 4, 5, 6, generator=generator, dtype=torch.float64)
    results = []
    for compute in (lambda t: _activate_and_drop(activation, t, drop), lambda t: activation.fn(t) * drop):
        leaf = z.clone().requires_grad_()
        out = compute(leaf * 1.0)  # a non-leaf, as in the outer pass
        (out * upstream).sum().backward()
        results.append((out.detach(), leaf.grad))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("expert_hidden, tower_hidden, fused, tolerance",
                         [((16, 8), 32, False, 0.1), ((16,), 0, True, 1e-3)], ids=["general", "linear-heads"])
def test_bf16_autocast_step_is_close_to_float32(expert_hidden: tuple, tower_hidden: int, fused: bool,
                                                tolerance: float, monkeypatch) -> None:
    """Under bfloat16 autocast the general path lowers its forward passes and
    the fused one (linear heads) its correction products only (measured
    3e-2 and 3e-5 off float32, relative to the largest gradient); their
    gradients are float32."""
    config = ModelConfig(architecture="mmoeex", n_features=64, n_tasks=6, n_experts=4,
                         expert_hidden=expert_hidden, tower_hidden=tower_hidden, dropout=0.0)
    x, labels, mask = batch(32, 64, 6, dtype=torch.float32)
    _, full = fast_grads(build_model(config), step_config(), x, labels, mask)
    lowered: list[torch.dtype] = []

    def recorded(*args, **kwargs):
        lowered.append(args[4].dtype)  # inner_factor: the dtype of the products
        return outer_expert_scores(*args, **kwargs)
    monkeypatch.setattr(maml, "outer_expert_scores", recorded)
    _, half = fast_grads(build_model(config), step_config(autocast="bfloat16"), x, labels, mask)
    assert lowered == ([torch.bfloat16] * len(lowered) if fused else [])
    assert bool(lowered) == fused
    for name in full:
        assert half[name].dtype == torch.float32
        scale = full[name].abs().max().clamp(min=1e-3)
        assert (half[name] - full[name]).abs().max() / scale < tolerance, name


@pytest.mark.parametrize("variant", ["split", "swap"])
def test_maml_with_disjoint_inner_and_outer_rows_needs_two_rows(variant: str) -> None:
    model = tiny_model("mmoeex", (6,), 0.67)
    x, labels, mask = batch(1, 12, 5)
    with pytest.raises(ValueError, match="at least 2 rows"):
        build_step(step_config(maml_variant=variant))(model, x, labels, mask)


def test_full_maml_takes_a_single_row() -> None:
    """Inner and outer rows are the same rows: one is enough."""
    x, labels, mask = batch(1, 12, 5)
    mask[0] = True
    assert_matches_reference(tiny_model("mmoeex", (6,), 0.67), step_config(inner_lr=0.7, maml_variant="full"),
                             x, labels, mask)


@pytest.mark.parametrize("changes, message", [
    ({"maml_variant": "half"}, "maml_variant 'half' is not one of"),
    ({"maml_variant": "full", "inner_fraction": 0.5}, "inner_fraction applies to the split"),
    ({"maml_variant": "swap", "inner_fraction": 0.5}, "inner_fraction applies to the split"),
])
def test_step_config_rejects_a_variant_it_cannot_run(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        step_config(**changes)


def test_the_variants_are_different_steps() -> None:
    """The reference comparisons above would pass for a fast path that ran
    one variant for all three names only if the variants agreed."""
    model = tiny_model("mmoeex", (6, 4), 0.67)
    x, labels, mask = batch(10, 12, 5)
    grads = [fast_grads(model, step_config(inner_lr=0.7, maml_variant=variant), x, labels, mask)[1]
             for variant in VARIANTS]
    for first, second in itertools.combinations(grads, 2):
        assert (first["experts.layers.0.weight"] - second["experts.layers.0.weight"]).abs().max() > 1e-6


def test_step_rejects_a_batch_of_the_wrong_width() -> None:
    model = tiny_model("mmoeex", (6,), 0.67)
    x, labels, mask = batch(4, 11, 5)
    with pytest.raises(ValueError, match=r"\[B, 12\]"):
        build_step(step_config(optimizer="plain"))(model, x, labels, mask)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("second_order", [False, True])
def test_fast_maml_on_cuda_matches_the_reference(second_order: bool, variant: str) -> None:
    model = tiny_model("mmoeex", (6, 4), 0.67, "tanh").cuda()
    x, labels, mask = (t.cuda() for t in batch(10, 12, 5))
    config = step_config(inner_lr=0.7, maml_variant=variant, second_order=second_order)
    _, fast = fast_grads(model, config, x, labels, mask)
    _, reference = reference_maml_step(model, x, labels, mask, inner_lr=0.7, variant=variant,
                                       second_order=second_order)
    for name, grad in reference.items():
        torch.testing.assert_close(fast[name], grad, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_step_runs_on_cuda() -> None:
    config = ModelConfig(architecture="mmoeex", n_features=256, n_tasks=16, n_experts=4, expert_hidden=(32, 16))
    model = build_model(config).cuda()
    x, labels, mask = (t.cuda() for t in batch(64, 256, 16, dtype=torch.float32))
    output = build_step(step_config(autocast="bfloat16"))(model, x, labels, mask)
    assert torch.isfinite(output.loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def synthetic_panel(rows: int, features: int, tasks: int, seed: int):
    """Fingerprint-like bits (20 % set) with related tasks: task k is active
    when at least 2 of its 3 key bits, drawn from a pool of 8 shared bits,
    are set (about 10 % actives); 40 % of labels missing."""
    rng = np.random.default_rng(seed)
    x = (rng.random((rows, features)) < 0.2).astype(np.float32)
    pool = rng.choice(features, size=8, replace=False)
    keys = np.stack([rng.choice(pool, size=3, replace=False) for _ in range(tasks)])  # [K, 3]
    labels = (x[:, keys].sum(axis=2) >= 2).astype(np.float32)
    mask = rng.random((rows, tasks)) > 0.4
    return torch.from_numpy(x), torch.from_numpy(labels), torch.from_numpy(mask)


@pytest.mark.parametrize("optimizer", ["maml-mtl", "plain"])
def test_short_training_run_learns(optimizer: str) -> None:
    torch.manual_seed(0)
    x, labels, mask = synthetic_panel(1000, 64, 6, seed=0)
    n_train = 800
    model = build_model(ModelConfig(architecture="mmoeex", n_features=64, n_tasks=6, n_experts=4, expert_hidden=(32,),
                                    tower_hidden=8, alpha=0.5, dropout=0.0))
    step = build_step(step_config(optimizer=optimizer, inner_lr=0.05))
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _, start in itertools.product(range(5), range(0, n_train, 100)):
        rows = slice(start, start + 100)
        losses.append(float(step(model, x[rows], labels[rows], mask[rows]).loss))
        adam.step()
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:8])
    model.eval()
    with torch.no_grad():
        scores = model(x[n_train:]).numpy()
    test_labels, test_mask = labels[n_train:].numpy(), mask[n_train:].numpy()
    metrics = evaluate_tasks(test_labels, scores, test_mask)
    active_rate = float(test_labels[test_mask].mean())
    assert metrics.n_skipped == 0
    assert metrics.mean_ap > 2.5 * active_rate


def test_the_variant_registry_names_what_maml_implements() -> None:
    from models.config import MAML_VARIANT_NAMES

    assert tuple(MAML_VARIANTS) == MAML_VARIANT_NAMES


@pytest.mark.parametrize("optimizer, variant", [("plain", "split"), ("maml-mtl", "split"),
                                                ("maml-mtl", "full"), ("maml-mtl", "swap")])
def test_label_normalization_weighs_tasks_by_their_labels(optimizer: str, variant: str) -> None:
    """"label" = sum over every present (outer) label of its loss / their count:
    for one evaluation exactly the per-label mean, for swap each half's
    outer labels count."""
    x, labels, mask = batch(20, 12, 5, seed=4)
    model = tiny_model("mmoeex", (6,), 0.67)
    by_task = build_step(step_config(optimizer=optimizer, maml_variant=variant,
                                     loss_normalization="task"))(model, x, labels, mask)
    by_label = build_step(step_config(optimizer=optimizer, maml_variant=variant,
                                     loss_normalization="label"))(model, x, labels, mask)
    torch.testing.assert_close(by_label.task_losses, by_task.task_losses)
    if optimizer == "plain":
        outer_counts = mask.sum(0)
        with torch.no_grad():
            per_label = torch.nn.functional.binary_cross_entropy_with_logits(
                model(x), labels, reduction="none")
        torch.testing.assert_close(by_label.loss, per_label[mask].mean())
    else:
        outer = {"split": [slice(16, 20)], "full": [slice(0, 20)], "swap": [slice(10, 20), slice(0, 10)]}
        outer_counts = sum(mask[rows].sum(0) for rows in outer[variant])
    expected = (by_task.task_losses * outer_counts).sum() / outer_counts.sum()
    torch.testing.assert_close(by_label.loss, expected)
    assert not torch.allclose(by_label.loss, by_task.loss)


def test_task_sampling_with_per_task_positive_weights() -> None:
    """A task's outer loss depends on its own inner step only, so the tasks a
    subsampled step draws score as in the all-task step, each with its own
    positive weight (the weights follow the sampled tasks)."""
    x, labels, mask = batch(20, 12, 5, seed=5)
    weights = (1.0, 5.0, 20.0, 2.0, 50.0)
    model = tiny_model("mmoeex", (6,), 0.67)
    every = build_step(step_config(task_pos_weight=weights, pos_weight="auto:50"))(model, x, labels, mask)
    torch.manual_seed(0)
    some = build_step(step_config(task_pos_weight=weights, pos_weight="auto:50", tasks_per_step=2))(
        model, x, labels, mask)
    drawn = ~torch.isnan(some.task_losses)
    assert int(drawn.sum()) == 2
    torch.testing.assert_close(some.task_losses[drawn], every.task_losses[drawn])
