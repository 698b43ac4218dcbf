"""The MLflow side of a trained model: log it as a pyfunc, register it,
move aliases, look up the champion.

A training run logs its best epoch as a pyfunc named ``model`` (see
:func:`log_scoring_model`) and records the model id in the run tag
``pcba.model_id``; :func:`register_model` registers that model under a name
with tags a reviewer needs (data identity, test mean AP, git commit) and,
optionally, points an alias (``champion``) at the new version.
"""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from models.metrics import METRICS, SELECTION_METRIC, metric_key
from pipelines.errors import UserError
from pipelines.platform.tracking import GIT_COMMIT_TAG, client, resolve_tracking_uri, use_tracking_uri
from pipelines.serving.applicability_domain import IN_TRAINING_SET_COLUMN, NN_MOL_ID_COLUMN, NN_SIMILARITY_COLUMN
from pipelines.serving.bundle import ModelBundle, spread_column
from pipelines.serving.code_bundle import bundle_code
from pipelines.serving.pyfunc_model import (
    BUNDLE_ARTIFACT,
    ERROR_COLUMN,
    RAW_SCORES_PARAM,
    SMILES_COLUMN,
    UNCERTAINTY_PARAM,
    pyfunc_entry_path,
)

logger = logging.getLogger(__name__)

MODEL_NAME_IN_RUN = "model"
MODEL_ID_TAG = "pcba.model_id"
#: Packages the pyfunc needs at load time (exact versions of this environment).
PYFUNC_REQUIREMENTS = ("mlflow", "torch", "rdkit", "numpy", "pandas", "safetensors", "usearch")
INPUT_EXAMPLE = ["CC(=O)Oc1ccccc1C(=O)O", "c1ccc2[nH]ccc2c1", "not a smiles"]
#: Run params/metrics copied onto each registered version.
VERSION_TAGS_FROM_PARAMS = ("data.path", "data.metadata_hash", "data.rows",
                            "data.rows.train", "data.rows.valid", "data.rows.test",
                            "model.architecture", "step.optimizer")
VERSION_TAGS_FROM_METRICS = (*(metric_key("test", metric) for metric in METRICS), SELECTION_METRIC)


def log_scoring_model(tracking_uri: str, run_id: str, bundle: ModelBundle) -> str:
    """Log ``bundle`` as the run's SMILES-in pyfunc (signature, input example,
    pinned requirements, our code bundled) and return its model uri
    (``models:/<model_id>``)."""
    import mlflow
    import mlflow.pyfunc

    signature = scoring_signature(bundle.tasks, with_domain=bundle.domain is not None,
                                  with_spread=bundle.n_members > 1)
    package_root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="pcba-bundle-") as scratch:
        bundle_dir = bundle.save(Path(scratch) / BUNDLE_ARTIFACT)
        code_paths = bundle_code(package_root, Path(scratch) / "code")
        with use_tracking_uri(tracking_uri), \
                mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                python_model=str(pyfunc_entry_path()),
                artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
                # Declared at log time so MLflow honours a load-time override
                # (load_scorer(device=...)); keys unknown at log time are ignored.
                model_config={"device": "auto"},
                code_paths=[str(path) for path in code_paths],
                signature=signature,
                input_example=pd.DataFrame({SMILES_COLUMN: INPUT_EXAMPLE}),
                pip_requirements=[f"{name}=={metadata.version(name)}"
                                  for name in PYFUNC_REQUIREMENTS],
            )
    client(tracking_uri).set_tag(run_id, MODEL_ID_TAG, info.model_id)
    return info.model_uri


def scoring_signature(tasks: list[str], with_domain: bool = False,
                      with_spread: bool = False):  # -> mlflow.models.ModelSignature
    """Input: a ``smiles`` string column. Output: one float column per task
    (null where the SMILES failed), an ensemble's optional spread column per
    task, the applicability-domain columns when the model carries its
    training domain, and an optional string ``error``. Params: ``raw_scores``
    (boolean, default false: calibrated probabilities) and ``uncertainty``
    (boolean, default false: an ensemble's spread columns)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    outputs = [ColSpec("float", task) for task in tasks]
    if with_spread:
        outputs += [ColSpec("float", spread_column(task), required=False) for task in tasks]
    if with_domain:
        outputs += [ColSpec("float", NN_SIMILARITY_COLUMN, required=False),
                    ColSpec("string", NN_MOL_ID_COLUMN, required=False),
                    ColSpec("boolean", IN_TRAINING_SET_COLUMN, required=False)]
    outputs.append(ColSpec("string", ERROR_COLUMN, required=False))
    return ModelSignature(inputs=Schema([ColSpec("string", SMILES_COLUMN)]),
                          outputs=Schema(outputs),
                          params=ParamSchema([ParamSpec(RAW_SCORES_PARAM, "boolean", False),
                                              ParamSpec(UNCERTAINTY_PARAM, "boolean", False)]))


def register_model(run_id: str, name: str, *, alias: str | None = None,
                   tags: Mapping[str, str] | None = None,
                   tracking_uri: str | None = None) -> int:
    """Register the pyfunc logged by training run ``run_id`` as a new version
    of ``name`` (tagged with data identity, test mean AP and git commit),
    point ``alias`` at it if given, and return the version number."""
    from mlflow.exceptions import MlflowException

    tracking_uri = resolve_tracking_uri(tracking_uri)
    mlflow_client = client(tracking_uri)
    try:
        run = mlflow_client.get_run(run_id)
    except MlflowException as error:
        raise UserError(f"no MLflow run {run_id!r} at {tracking_uri}") from error
    model_id = run.data.tags.get(MODEL_ID_TAG)
    if not model_id:
        raise UserError(f"run {run_id} has no logged scoring model (tag {MODEL_ID_TAG}); "
                        "did its training finish?")
    version_tags = version_tags_for_run(run, tags)
    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        mlflow_client.create_registered_model(
            name, description="PCBA multi-task bioactivity model: SMILES in, one "
                              "probability per assay out (pipelines/serving/pyfunc_model.py).")
    # The registry store resolves models:/<id> through the process-wide
    # tracking URI, so point it at this store for the call.
    with use_tracking_uri(tracking_uri):
        version = mlflow_client.create_model_version(name, source=f"models:/{model_id}",
                                                     run_id=run_id, tags=version_tags,
                                                     model_id=model_id)
    if alias:
        mlflow_client.set_registered_model_alias(name, alias, version.version)
    logger.info("registered %s version %s%s from run %s", name, version.version,
                f" as @{alias}" if alias else "", run_id)
    return int(version.version)


def version_tags_for_run(run: Any, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Tags a registered version carries, read from its training run."""
    params, metrics = run.data.params, run.data.metrics
    tags = {key: params[key] for key in VERSION_TAGS_FROM_PARAMS if key in params}
    tags.update({key: f"{metrics[key]:.6g}" for key in VERSION_TAGS_FROM_METRICS if key in metrics})
    tags[GIT_COMMIT_TAG] = run.data.tags.get(GIT_COMMIT_TAG, "unknown")
    tags["run_id"] = run.info.run_id
    tags.update(extra or {})
    return tags


def get_alias_version(name: str, alias: str, *, tracking_uri: str | None = None):
    """The ModelVersion that ``name@alias`` points at, or None when the model
    or the alias does not exist (e.g. before the first champion)."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(resolve_tracking_uri(tracking_uri))
    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
