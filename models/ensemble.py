"""Deep ensembles (Lakshminarayanan et al., NeurIPS 2017): N networks of one
configuration from seeds ``seed .. seed+N-1``, whose averaged probability is
the score and whose spread (standard deviation) is the uncertainty.

Members train one by one as ordinary networks; :class:`Ensemble` holds the
trained members *stacked like experts*: every parameter and buffer of the
member network gets a leading member axis (``stack.experts.layers.0.weight``
is ``[N, E, d, h]``). On dense input (a GPU's) mixtures of experts with
linear towers (MMoEEx, MMoE, shared bottom: the default shapes) score all
members in one forward: N x E experts in one stacked product, N x K gates
in another. On a CPU's sparse rows each member's bag products run in turn
over the same batch: a bag sum costs the same per index and group stacked
or not, and one member's activations stay in cache where N members' do not
(``benchmarks/scoring.py --members 5`` times both forms). Either way the
library is featurized and read once, and every other shape (towers with a
hidden layer, single-task nets) runs member by member.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from models.activations import get_activation
from models.config import ModelConfig
from models.factory import build_model
from models.networks.base import MultiTaskModel
from models.networks.gates import open_mask, open_softmax
from models.networks.layers import stacked_affine
from models.networks.mixture import MixtureOfExpertsModel
from models.networks.sparse_input import Features


def member_config(config: ModelConfig, member: int) -> ModelConfig:
    """Member ``member``'s config: the ensemble's, seeded ``config.seed + member``."""
    return dataclasses.replace(config, seed=config.seed + member)


class Ensemble(nn.Module):
    """N trained members of one architecture, for inference: x -> member
    logits ``[N, B, K]`` (:func:`member_probabilities` turns any model's
    output into ``[N, B, K]`` probabilities).

    ``config`` is the first member's; member i was built from
    :func:`member_config` ``(config, i)``. Training an ensemble means
    training its members (each a plain network); this module only scores,
    so it stays in eval mode.
    """

    def __init__(self, members: Sequence[MultiTaskModel]) -> None:
        super().__init__()
        self._stack_members(members, len(members))

    @classmethod
    def initialised(cls, config: ModelConfig, n_members: int) -> Ensemble:
        """A freshly initialised ensemble (what loading weights fills in),
        its members built one at a time: memory for the stack and one member."""
        ensemble = cls.__new__(cls)
        nn.Module.__init__(ensemble)
        ensemble._stack_members((build_model(member_config(config, index)) for index in range(n_members)),
                                n_members)
        return ensemble

    def _stack_members(self, members: Iterable[MultiTaskModel], n_members: int) -> None:
        """Copy ``n_members`` members into stacked tensors: the first
        member's module tree whose tensors are replaced by all members'
        (state-dict keys are the member's, with "stack.")."""
        if n_members < 1:
            raise ValueError("an ensemble needs at least one member")
        stacked: dict[str, Tensor] = {}
        for index, member in enumerate(members):
            if index == 0:
                self.config: ModelConfig = member.config
                self.n_members = n_members
                self.stack = copy.deepcopy(member).eval()
                stacked = self._allocate(member, n_members)
            elif member.config != member_config(self.config, index):
                raise ValueError(f"member {index} has config {member.config}, expected the first "
                                 f"member's with seed {self.config.seed + index}")
            with torch.no_grad():
                for name, tensor in member.state_dict().items():
                    stacked[name][index].copy_(tensor)
        self.stacked_forward = (isinstance(self.stack, MixtureOfExpertsModel)
                                and self.stack.towers.hidden is None)
        super().train(False)

    def _allocate(self, first: MultiTaskModel, n_members: int) -> dict[str, Tensor]:
        """Replace the stack's tensors by empty ``[N, ...]`` ones, by name."""
        parameters = dict(first.named_parameters())
        stacked = {}
        for name, tensor in first.state_dict().items():
            owner_name, _, leaf = name.rpartition(".")
            owner = self.stack.get_submodule(owner_name)
            empty = torch.empty((n_members, *tensor.shape), dtype=tensor.dtype, device=tensor.device)
            if name in parameters:
                setattr(owner, leaf, nn.Parameter(empty, requires_grad=False))
            else:
                owner.register_buffer(leaf, empty)
            stacked[name] = empty
        return stacked

    def train(self, mode: bool = True) -> Ensemble:
        if mode:
            raise RuntimeError("an Ensemble only scores; train its members (member_config) "
                               "and stack them with Ensemble(members)")
        return super().train(False)

    def member_state(self, member: int) -> dict[str, Tensor]:
        """Member ``member``'s state dict (views of the stacked tensors)."""
        return {name: tensor[member] for name, tensor in self.stack.state_dict().items()}

    def member(self, member: int) -> MultiTaskModel:
        """Member ``member`` as a network of its own (a copy, in eval mode)."""
        model = build_model(member_config(self.config, member))
        model.load_state_dict(self.member_state(member))
        return model.eval()

    def expert_outputs(self, x: Features) -> None:
        """None: each member has its own experts (and diversity score)."""
        return None

    def gate_weights(self, x: Features) -> None:
        """None: each member has its own gates."""
        return None

    def forward(self, x: Features) -> Tensor:
        """Member logits ``[N, B, K]`` (stacked on dense input, module docstring)."""
        if self.stacked_forward and isinstance(x, Tensor):
            return self._stacked_logits(x)
        return torch.stack([functional_call(self.stack, self.member_state(member), (x,))
                            for member in range(self.n_members)])

    def _stacked_logits(self, x: Tensor) -> Tensor:
        """All members at once: the experts as N x E stacked groups, the gates
        as N x K, the linear heads read the expert outputs before mixing
        (Towers.mixture_logits), each member its own experts."""
        stack, n = self.stack, self.n_members
        activation = get_activation(self.config.activation)
        h = x
        for layer in stack.experts.layers:
            h = activation.fn(stacked_affine(h, layer.weight.flatten(0, 1),
                                             layer.bias.flatten(0, 1)))
        expert_out = h.unflatten(0, (n, -1))  # [N, E, B, h]
        heads = stack.towers.output.weight.squeeze(-1)  # [N, K, h]
        head_bias = stack.towers.output.bias.squeeze(-1)  # [N, K]
        per_expert = torch.matmul(expert_out, heads.transpose(1, 2).unsqueeze(1))  # [N, E, B, K]
        if stack.gates is None:
            return per_expert[:, 0] + head_bias.unsqueeze(1)
        gates = stack.gates
        n_tasks = self.config.n_tasks
        logits = torch.einsum("bd,nkde->bnke", x, gates.weight) + gates.bias  # [B, N, K, E]
        task_ids = torch.arange(n_tasks, device=gates.bias.device)
        weights = open_softmax(logits, open_mask(gates.exclusive_expert_task, task_ids,
                                                 gates.exclusivity))
        return torch.einsum("bnke,nebk->nbk", weights, per_expert) + head_bias.unsqueeze(1)


def member_probabilities(model: nn.Module, x: Features) -> Tensor:
    """Probabilities ``[N, B, K]`` of an :class:`Ensemble`'s members, or
    ``[1, B, K]`` of a single network: the ensemble's score is their mean,
    its uncertainty their standard deviation (in the units of the score
    served: pipelines/serving/calibration.py ``members_spread``)."""
    logits = model(x)
    return torch.sigmoid(logits if isinstance(model, Ensemble) else logits.unsqueeze(0))
