"""The settings of one featurization that its passes share, and what of
them a finished dataset must match for a re-run to be a no-op."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from featurize.sources.readers import LibrarySource
from featurize.spec import FingerprintSpec
from featurize.standardize import SizeLimits


@dataclass(frozen=True)
class FeaturizeOptions:
    """What every batch and the finishing pass are told."""

    spec: FingerprintSpec
    tasks: list[str]
    kind: Literal["smiles", "molblock"]
    split: str
    fractions: tuple[float, float, float]
    seed: int
    rows_per_shard: int
    limits: SizeLimits

    def batch_kwargs(self) -> dict[str, object]:
        return {"spec": self.spec, "tasks": self.tasks, "kind": self.kind,
                "with_scaffold": self.split == "scaffold", "limits": self.limits}

    def manifest(self, source: LibrarySource) -> dict[str, object]:
        """What must match for a re-run to be a no-op (backend and CPUs do
        not change the output, so they are not here)."""
        options = asdict(self)
        options.update(smiles_col=source.smiles_col, id_col=source.id_col)
        if self.split == "scaffold":
            options.pop("seed")  # the scaffold split is deterministic
        return options
