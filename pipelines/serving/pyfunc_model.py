"""The registered model: SMILES in, one probability per assay out.

Two ways in, one scoring code path (:class:`pipelines.serving.scorer.Scorer`):

- :class:`PcbaPyfuncModel`, the MLflow pyfunc. Any MLflow client
  (``mlflow.pyfunc.load_model``, ``mlflow models predict``/``serve``) sends a
  table with a ``smiles`` column and gets one float column per task (named by
  assay; calibrated probabilities where the model has a calibration, raw ones
  with ``params={"raw_scores": True}``; an ensemble adds its members' spread
  per assay, ``<assay>::spread``, with ``params={"uncertainty": True}``) plus
  ``error``. SMILES are featurized inside ``predict`` with featurize/'s own
  standardization and fingerprint code, so the features equal the training
  features. A SMILES that cannot be featurized gets missing scores (pandas'
  NA in Python, ``null`` in JSON: :func:`scores_frame`) and its reason in
  ``error``; the batch never fails because of one row. A model saved with
  its training domain also returns
  ``nn_similarity`` (largest Tanimoto similarity to a training molecule),
  ``nn_mol_id`` (that molecule) and ``in_training_set`` (identical bits).
- :func:`load_scorer` (or :func:`load_pyfunc_model`, which also gives the
  bundle folder screening ships to its actors): the same model with
  ``score_packed`` to score fingerprints already featurized (the Parquet
  ``fp`` column) without going back to SMILES, on a chosen device.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch
from mlflow.pyfunc import PythonModel, PythonModelContext

from pipelines.serving.applicability_domain import IN_TRAINING_SET_COLUMN, NN_MOL_ID_COLUMN, NN_SIMILARITY_COLUMN
from pipelines.serving.bundle import spread_column
from pipelines.serving.scorer import Scorer, SmilesScores

SMILES_COLUMN = "smiles"
ERROR_COLUMN = "error"
#: Key of the bundle directory in the pyfunc's MLflow artifacts.
BUNDLE_ARTIFACT = "bundle"
#: Predict parameter asking for the model's uncalibrated probabilities.
RAW_SCORES_PARAM = "raw_scores"
#: Predict parameter asking an ensemble for its members' spread per assay
#: (columns named by pipelines.serving.bundle.spread_column).
UNCERTAINTY_PARAM = "uncertainty"


class PcbaPyfuncModel(PythonModel):
    """MLflow pyfunc around :class:`Scorer` (logged from code, see
    pipelines/serving/pyfunc_entry.py). ``model_config={"device": ...}`` at load time
    picks the device (default "auto")."""

    def load_context(self, context: PythonModelContext) -> None:
        device = (context.model_config or {}).get("device", "auto")
        self.bundle_dir = Path(context.artifacts[BUNDLE_ARTIFACT])
        self.scorer = Scorer.from_bundle(self.bundle_dir, device)

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        if SMILES_COLUMN not in model_input.columns:
            raise ValueError(f"input needs a {SMILES_COLUMN!r} column, got {list(model_input.columns)}")
        params = params or {}
        scores = self.scorer.score_smiles(model_input[SMILES_COLUMN].tolist(),
                                          bool(params.get(RAW_SCORES_PARAM, False)),
                                          uncertainty=bool(params.get(UNCERTAINTY_PARAM, False)))
        return scores_frame(scores, self.scorer.tasks, model_input.index)


def scores_frame(scores: SmilesScores, tasks: list[str], index: pd.Index) -> pd.DataFrame:
    """The pyfunc's answer: a ``Float32`` column per task (and for
    ``nn_similarity``), ``boolean`` ``in_training_set``, ``string``
    ``nn_mol_id`` and ``error``; a bad row's values are missing (pandas' NA).
    With an ensemble's spread, a ``Float32`` ``<assay>::spread`` column
    follows the score columns for each assay.

    Why pandas' nullable dtypes: a Python client gets numbers it can sort
    and select (``nlargest``, ``select_dtypes("number")``), while MLflow's
    scoring server writes a frame through ``DataFrame.to_dict``, which gives
    None for NA, so ``mlflow models serve`` answers ``null`` for a bad row.
    With NaN it would write ``NaN``, which is not JSON (RFC 8259), and a
    strict client (JSON.parse) would reject every row of the answer."""
    out = pd.DataFrame(scores.probabilities, columns=tasks, index=index).astype("Float32")
    if scores.spread is not None:
        spread = pd.DataFrame(scores.spread, columns=[spread_column(task) for task in tasks],
                              index=index).astype("Float32")
        out = pd.concat([out, spread], axis=1)
    if scores.neighbours is not None:
        found = scores.neighbours
        out[NN_SIMILARITY_COLUMN] = pd.Series(found.similarity, index=index).astype("Float32")
        out[NN_MOL_ID_COLUMN] = pd.Series(found.mol_id, index=index, dtype="string")
        out[IN_TRAINING_SET_COLUMN] = pd.Series(found.in_training_set, index=index, dtype="boolean").mask(
            out[NN_MOL_ID_COLUMN].isna())
    out[ERROR_COLUMN] = pd.Series(scores.errors, index=index, dtype="string")
    return out


def load_pyfunc_model(model_uri: str, device: torch.device | str = "auto") -> PcbaPyfuncModel:
    """The loaded :class:`PcbaPyfuncModel` of a logged or registered model
    (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/<model_id>``
    or a local pyfunc directory), through MLflow, scoring on ``device``."""
    import mlflow.pyfunc

    pyfunc = mlflow.pyfunc.load_model(model_uri, model_config={"device": str(device)})
    python_model = pyfunc.unwrap_python_model()
    if not isinstance(python_model, PcbaPyfuncModel):
        raise TypeError(f"{model_uri} is not a PCBA scoring model "
                        f"(its python model is {type(python_model).__name__})")
    return python_model


def load_scorer(model_uri: str, device: torch.device | str = "auto") -> Scorer:
    """The :class:`Scorer` of a logged or registered model (see
    :func:`load_pyfunc_model`)."""
    return load_pyfunc_model(model_uri, device).scorer


def pyfunc_entry_path() -> Path:
    """The models-from-code file MLflow executes to build the pyfunc."""
    return Path(__file__).with_name("pyfunc_entry.py")
