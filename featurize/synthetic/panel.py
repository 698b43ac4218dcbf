"""The offline default data: a PCBA-shaped assay panel generated from a seed.

So that the main job runs without network, the project makes its own
PCBA-128-like panel. The generative model, in order:

1. Molecules. ``n_molecules`` distinct products drawn uniformly, without
   replacement, from the built-in reaction space (featurize/synthetic/enumeration.py:
   real reagents joined by amide coupling, sulfonamide and urea formation,
   reductive amination and Suzuki coupling, 2 to 4 components, MW <= 500).
   The draw is a seeded permutation of the space, so a panel of n molecules
   is the first n rows of any larger panel with the same seed.
2. Features. x_i = counts of :data:`MOTIFS` (SMARTS: ring systems,
   halogens, basic amines, sulfones, nitriles...) summed over the molecule's
   reagents, plus the number of bonds each reaction made. Each column is
   standardized with the mean and deviation of a fixed reference sample of
   the space (so a molecule's labels do not depend on which panel it is in).
3. Rules. Tasks form families of :data:`TASKS_PER_FAMILY` consecutive assays
   (PANEL-000..007 is family 0...). Family f has a sparse weight vector
   v_f and task k its own sparse u_k (each :data:`RULE_TERMS` motifs, weights
   of either sign); the task's rule is
   ``w_k = sqrt(r) v_f / |v_f| + sqrt(1 - r) u_k / |u_k|``
   with r = ``relatedness``: two tasks of a family have rules with cosine
   similarity about r (exactly r when their own motifs do not overlap;
   r = 1: one rule per family; r = 0: independent tasks).
4. Labels. Score s_ik = x_i . w_k scaled to unit deviation, plus Gaussian
   noise of deviation ``noise``; molecule i is active in task k when s_ik is
   above the task's (1 - rate_k) quantile on the reference sample, where the
   active rate rate_k is log-uniform in ``active_rate`` (0.5 to 5 % by
   default, PCBA's range).
5. Missing labels. Each task tests a share of the molecules: label (i, k) is
   missing with probability m_k, m_k uniform in ``missing`` +- 0.2 (40 % on
   average, PCBA-like; the real PCBA subset has about 60 % of labels present;
   the spread shrinks near 0 and 1, so ``missing=0`` drops no label).

:func:`write_panel_csv` writes the raw CSV (smiles, mol_id, one column per
task: 1, 0 or empty) with a few bad rows injected (unparsable SMILES, a valence
error, an empty SMILES, a repeated mol_id) so the quarantine path of the
featurize job runs in every demo. Same arguments, same seed: the same bytes.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from rdkit import Chem

from featurize.synthetic.enumeration import ProductSpace, default_space

logger = logging.getLogger(__name__)

TASKS_PER_FAMILY = 8
RULE_TERMS = 4
MISSING_SPREAD = 0.2  # per-task missing shares spread +- this around the mean
REFERENCE_SIZE = 20_000

# Independent random streams of one seed: changing how one part draws never
# changes the others. The screening library (featurize/synthetic/library.py) has its own.
MOLECULE_STREAM, RULE_STREAM, NOISE_STREAM, MISSING_STREAM, BAD_ROW_STREAM = range(5)
REFERENCE_SEED = 20_240_611  # the reference sample is the same for every panel

#: Substructure motifs the hidden rules are made of (SMARTS). Dummy atoms of
#: the synthons match none of them, so a motif counts inside one reagent.
MOTIFS: dict[str, str] = {
    "benzene ring": "c1ccccc1",
    "pyridine-type N": "[nX2;r6]",
    "azole N": "[n;r5]",
    "aromatic NH": "[nH]",
    "thiophene/thiazole S": "[s]",
    "furan/oxazole O": "[o]",
    "fused aromatic atom": "[a;R2]",
    "fluorine": "[F]",
    "chlorine": "[Cl]",
    "trifluoromethyl": "C(F)(F)F",
    "aryl methyl": "[CH3]c",
    "aryl methoxy": "[CH3]Oc",
    "phenol": "[OH]c",
    "aliphatic hydroxyl": "[OH][CX4]",
    "nitrile": "C#N",
    "ketone": "[CX3](=O)([#6])[#6]",
    "ester or carbamate": "[CX3](=O)[OX2][#6]",
    "sulfone": "[SX4](=O)(=O)([#6])[#6]",
    "basic tertiary amine": "[NX3;H0;!$(N[C,S]=[O,N,S]);!$(Na)]([CX4])([CX4])[CX4]",
    "morpholine": "C1COCCN1",
    "piperazine": "N1CCNCC1",
    "piperidine": "[NX3]1CCCCC1",
    "pyrrolidine": "[NX3]1CCCC1",
    "small carbocycle": "[CX4;r3,r4]",
    "cyclohexyl": "[CX4]1[CX4][CX4][CX4][CX4][CX4]1",
    "benzylic CH2": "[CH2;!R]c",
    "dimethylamino": "[CH3]N[CH3]",
    "anilide": "c[NH]C(=O)",
    "primary amide": "C(=O)[NH2]",
    "aryl amine N": "[NX3;!$(NC=O);!$(NS=O)]c",
    "pyrimidine": "c1ncncc1",
    "ethylene linker": "[CH2][CH2]",
    "N-aryl ring amine": "[NX3;R](c)",
    "gem-dimethyl": "[CH3][CX4][CH3]",
    "methylenedioxy": "c1OCOc1",
    "chiral centre": "[C@,C@@]",
}


@dataclass(frozen=True)
class PanelSummary:
    """What :func:`write_panel_csv` wrote."""

    path: Path
    n_molecules: int
    n_tasks: int
    n_bad_rows: int
    active_rate_min: float
    active_rate_max: float
    missing_share: float


def task_names(n_tasks: int) -> list[str]:
    """PANEL-000, PANEL-001, ..."""
    return [f"PANEL-{k:03d}" for k in range(n_tasks)]


def task_families(n_tasks: int) -> np.ndarray:
    """int[n_tasks]: the family of each task (consecutive blocks of :data:`TASKS_PER_FAMILY`)."""
    return np.arange(n_tasks) // TASKS_PER_FAMILY


def generate_panel(n_molecules: int, n_tasks: int = 128, seed: int = 0, relatedness: float = 0.7,
                   *, active_rate: tuple[float, float] = (0.005, 0.05), missing: float = 0.4,
                   noise: float = 0.5, space: ProductSpace | None = None) -> pd.DataFrame:
    """The panel as a table: ``smiles``, ``mol_id``, then one nullable Int8
    column per task (1 active, 0 inactive, <NA> missing). See the module
    docstring for the generative model; no bad rows here (see
    :func:`write_panel_csv`)."""
    smiles, labels = _generate(n_molecules, n_tasks, seed, relatedness, active_rate, missing, noise,
                               space or default_space())
    frame = pd.DataFrame({"smiles": smiles, "mol_id": _mol_ids(n_molecules)})
    tasks = pd.DataFrame({name: pd.arrays.IntegerArray(labels[:, k].copy(), labels[:, k] < 0)
                          for k, name in enumerate(task_names(n_tasks))})
    return pd.concat([frame, tasks], axis=1)


def write_panel_csv(path: str | os.PathLike[str], n_molecules: int, n_tasks: int = 128, seed: int = 0,
                    relatedness: float = 0.7, *, bad_rows: bool = True,
                    active_rate: tuple[float, float] = (0.005, 0.05), missing: float = 0.4,
                    noise: float = 0.5, space: ProductSpace | None = None) -> PanelSummary:
    """Write the raw panel CSV (atomically: a temp file, then rename).

    With ``bad_rows`` (the default) five rows that are not valid molecules or
    not valid records are inserted at seeded positions; their labels are a
    real row's. ``n_molecules`` counts the good rows only.
    """
    # One molecule more than asked: the good molecule that carries a repeated id.
    n_generated = n_molecules + 1 if bad_rows else n_molecules
    smiles, labels = _generate(n_generated, n_tasks, seed, relatedness, active_rate, missing, noise,
                               space or default_space())
    present = labels[:n_molecules] >= 0
    per_task_rate = (labels[:n_molecules] == 1).sum(axis=0) / np.maximum(present.sum(axis=0), 1)
    summary = PanelSummary(path=Path(path), n_molecules=n_molecules, n_tasks=n_tasks,
                           n_bad_rows=len(_BAD_SMILES) + 1 if bad_rows else 0,
                           active_rate_min=float(per_task_rate.min()),
                           active_rate_max=float(per_task_rate.max()),
                           missing_share=float(1.0 - present.mean()))
    mol_ids = _mol_ids(n_molecules)
    if bad_rows:
        smiles, mol_ids, labels = _inject_bad_rows(smiles, mol_ids, labels, seed)
    columns = {"smiles": pa.array(smiles, pa.string()), "mol_id": pa.array(mol_ids, pa.string())}
    for k, name in enumerate(task_names(n_tasks)):
        columns[name] = pa.array(labels[:, k], type=pa.int8(), mask=labels[:, k] < 0)
    summary.path.parent.mkdir(parents=True, exist_ok=True)
    temporary = summary.path.with_name(f".{summary.path.name}.tmp-{os.getpid()}")
    options = pa_csv.WriteOptions(quoting_style="none")  # SMILES and ids never need quotes
    try:
        pa_csv.write_csv(pa.table(columns), temporary, write_options=options)
        temporary.replace(summary.path)
    finally:
        temporary.unlink(missing_ok=True)
    return summary


def _mol_ids(n: int) -> list[str]:
    return [f"panel-{i:07d}" for i in range(1, n + 1)]


def _generate(n_molecules: int, n_tasks: int, seed: int, relatedness: float,
              active_rate: tuple[float, float], missing: float, noise: float,
              space: ProductSpace) -> tuple[list[str], np.ndarray]:
    """(product SMILES, int8 labels [n, K] with -1 missing)."""
    _check_arguments(n_molecules, n_tasks, relatedness, active_rate, missing, noise, len(space))
    indices = np.random.default_rng([seed, MOLECULE_STREAM]).permutation(len(space))[:n_molecules]
    smiles = list(space.smiles(indices))
    rules = _rules(n_tasks, seed, relatedness, active_rate, noise, space)
    scores = rules.scores(_standardized_features(space, indices, rules))
    scores += noise * np.random.default_rng([seed, NOISE_STREAM]).standard_normal(scores.shape)
    labels = (scores > rules.thresholds).astype(np.int8)
    missing_rng = np.random.default_rng([seed, MISSING_STREAM])
    spread = min(MISSING_SPREAD, missing, 1.0 - missing)
    missing_share = missing_rng.uniform(missing - spread, missing + spread, n_tasks)
    labels[missing_rng.random(labels.shape) < missing_share] = -1
    logger.debug("panel: %d molecules x %d tasks (seed %d, relatedness %.2f)",
                n_molecules, n_tasks, seed, relatedness)
    return smiles, labels


def _check_arguments(n_molecules: int, n_tasks: int, relatedness: float, active_rate: tuple[float, float],
                     missing: float, noise: float, space_size: int) -> None:
    if not 1 <= n_molecules <= space_size:
        raise ValueError(f"n_molecules must be in [1, {space_size:,}] (the product space), got {n_molecules}")
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    if not 0.0 <= relatedness <= 1.0:
        raise ValueError(f"relatedness must be in [0, 1], got {relatedness}")
    low, high = active_rate
    if not 0.0 < low <= high < 0.5:
        raise ValueError(f"active_rate must satisfy 0 < low <= high < 0.5, got {active_rate}")
    if not 0.0 <= missing < 1.0:
        raise ValueError(f"missing must be in [0, 1), got {missing}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")


@dataclass(frozen=True)
class _Rules:
    weights: np.ndarray     # float64[F, K], each column scaled to unit score deviation
    thresholds: np.ndarray  # float64[K]
    mean: np.ndarray        # float64[F] feature standardization
    scale: np.ndarray       # float64[F]

    def scores(self, standardized: np.ndarray) -> np.ndarray:
        return standardized @ self.weights


def _rules(n_tasks: int, seed: int, relatedness: float, active_rate: tuple[float, float],
           noise: float, space: ProductSpace) -> _Rules:
    """Draw the hidden rules and calibrate them on the reference sample."""
    reference = _reference_features(space)
    mean = reference.mean(axis=0)
    scale = reference.std(axis=0)
    scale[scale == 0] = np.inf  # a motif absent from the space never matters
    standardized = (reference - mean) / scale
    n_features = reference.shape[1]
    rng = np.random.default_rng([seed, RULE_STREAM])
    n_families = math.ceil(n_tasks / TASKS_PER_FAMILY)
    family_rules = np.stack([_sparse_rule(rng, n_features) for _ in range(n_families)], axis=1)
    own_rules = np.stack([_sparse_rule(rng, n_features) for _ in range(n_tasks)], axis=1)
    weights = (math.sqrt(relatedness) * family_rules[:, task_families(n_tasks)]
               + math.sqrt(1.0 - relatedness) * own_rules)
    reference_scores = standardized @ weights
    weights /= np.maximum(reference_scores.std(axis=0), 1e-12)
    rates = np.exp(rng.uniform(np.log(active_rate[0]), np.log(active_rate[1]), n_tasks))
    reference_noise = np.random.default_rng([REFERENCE_SEED, NOISE_STREAM]).standard_normal(
        reference_scores.shape)
    observed = standardized @ weights + noise * reference_noise
    thresholds = np.array([np.quantile(observed[:, k], 1.0 - rates[k]) for k in range(n_tasks)])
    return _Rules(weights, thresholds, mean, scale)


def _sparse_rule(rng: np.random.Generator, n_features: int) -> np.ndarray:
    """A unit vector with :data:`RULE_TERMS` non-zero weights of random sign and size."""
    rule = np.zeros(n_features)
    terms = rng.choice(n_features, size=RULE_TERMS, replace=False)
    rule[terms] = rng.choice([-1.0, 1.0], size=RULE_TERMS) * rng.uniform(0.5, 1.5, size=RULE_TERMS)
    return rule / np.linalg.norm(rule)


def _features(space: ProductSpace, indices: np.ndarray) -> np.ndarray:
    """float64[n, F]: motif counts and bonds made by each reaction."""
    located = space.locate(indices)
    motifs = space.substructure_counts(_motif_patterns(), located)
    return np.concatenate([motifs, space.reaction_counts[located.route]], axis=1)


def _standardized_features(space: ProductSpace, indices: np.ndarray, rules: _Rules) -> np.ndarray:
    return (_features(space, indices) - rules.mean) / rules.scale


@lru_cache(maxsize=4)
def _reference_features(space: ProductSpace) -> np.ndarray:
    rng = np.random.default_rng([REFERENCE_SEED, MOLECULE_STREAM])
    sample = rng.choice(len(space), size=min(REFERENCE_SIZE, len(space)), replace=False)
    return _features(space, sample)


@lru_cache(maxsize=1)
def _motif_patterns() -> tuple[Chem.Mol, ...]:
    patterns = []
    for name, smarts in MOTIFS.items():
        pattern = Chem.MolFromSmarts(smarts)
        if pattern is None:
            raise ValueError(f"motif {name!r}: SMARTS {smarts!r} does not parse")
        patterns.append(pattern)
    return tuple(patterns)


# Rows that cannot become molecules or records: what a real raw file holds.
_BAD_SMILES = (
    "c1ccccc1C(=O",        # unparsable: unclosed branch
    "C1CC[Xx]C1",          # unparsable: no such element
    "CN(C)(C)(C)C",        # parses, fails sanitization: pentavalent nitrogen
    "",                    # empty
)


def _inject_bad_rows(smiles: Sequence[str], mol_ids: Sequence[str], labels: np.ndarray,
                     seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """Insert the bad SMILES and one repeated mol_id at seeded positions.

    ``smiles`` and ``labels`` hold one molecule more than ``mol_ids``: that
    last, otherwise good, molecule is written under the first row's id.
    """
    rng = np.random.default_rng([seed, BAD_ROW_STREAM])
    n = len(mol_ids)
    donors = rng.integers(0, n, size=len(_BAD_SMILES))  # rows whose labels the bad SMILES carry
    bad = [(text, f"panel-bad-{i + 1}", int(donor)) for i, (text, donor) in enumerate(zip(_BAD_SMILES, donors))]
    bad.append((smiles[n], mol_ids[0], n))
    positions = np.sort(rng.choice(np.arange(1, n + 1), size=len(bad), replace=True))
    out_smiles, out_ids, out_rows = list(smiles[:n]), list(mol_ids), list(range(n))
    for offset, (position, (text, mol_id, row)) in enumerate(zip(positions, bad)):
        at = int(position) + offset
        out_smiles.insert(at, text)
        out_ids.insert(at, mol_id)
        out_rows.insert(at, row)
    return out_smiles, out_ids, labels[out_rows]
