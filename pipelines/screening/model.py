"""The model a screening job scores with, pulled once from the registry.

The driver resolves ``models:/NAME@ALIAS`` (any tracking URI), downloads
the pyfunc once and loads it through MLflow; scoring actors get the model's
bundle (weights, spec, assay names) as a zip through Ray's object store and
load it with :meth:`pipelines.serving.scorer.Scorer.from_bundle`, so workers
on other nodes need neither the MLflow server nor a shared filesystem, nor
MLflow's import time.
"""
from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from featurize.spec import FingerprintSpec
from pipelines.errors import UserError

if TYPE_CHECKING:
    from pipelines.serving.applicability_domain import TrainingDomain
    from pipelines.serving.scorer import Scorer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScreeningModel:
    """A downloaded scoring model: its spec, assay names and packed files."""

    uri: str
    spec: FingerprintSpec
    tasks: list[str]
    archive: bytes  # the ModelBundle folder, zipped
    sha256: str  # of the pyfunc folder's files (names and bytes): the model's identity
    #: The training domain the model carries (None: scores get no nn_similarity & co.),
    #: kept here to search the hits after the pass.
    domain: TrainingDomain | None = field(default=None, repr=False, compare=False)
    #: An ensemble's scorer, kept to compute its hits' spread after the pass
    #: (None for one network, which has no spread).
    ensemble: Scorer | None = field(default=None, repr=False, compare=False)

    @property
    def has_domain(self) -> bool:
        return self.domain is not None

    def assay_indices(self, assays: list[str] | None) -> list[int]:
        """Output columns for ``assays`` (all when None), in the order asked."""
        if not assays:
            return list(range(len(self.tasks)))
        position = {task: index for index, task in enumerate(self.tasks)}
        unknown = [assay for assay in assays if assay not in position]
        if unknown:
            raise UserError(f"--assays {', '.join(unknown)} not predicted by {self.uri} "
                            f"(it predicts {len(self.tasks)} assays: {', '.join(self.tasks[:5])}"
                            f"{' ...' if len(self.tasks) > 5 else ''})")
        return [position[assay] for assay in assays]


def fetch_model(model_uri: str, tracking_uri: str) -> ScreeningModel:
    """Download ``model_uri`` from MLflow and read its spec and assay names."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from pipelines.platform.tracking import use_tracking_uri
    from pipelines.serving.pyfunc_model import load_pyfunc_model

    with tempfile.TemporaryDirectory(prefix="screen-model-") as scratch:
        try:
            with use_tracking_uri(tracking_uri):  # MLflow resolves models:/ with the global URI
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=model_uri, dst_path=scratch,
                    tracking_uri=tracking_uri, registry_uri=tracking_uri)
        except MlflowException as error:
            raise UserError(f"model {model_uri} not found in MLflow at {tracking_uri}: "
                            f"{error.message.splitlines()[0]}") from error
        pyfunc = load_pyfunc_model(local, device="cpu")  # validates the download
        scorer = pyfunc.scorer
        logger.info("model %s: %d assays, %s", model_uri, len(scorer.tasks), scorer.spec.describe())
        # Actors need only the bundle, already inside the download as the
        # pyfunc's artifact: zip it as it is.
        return ScreeningModel(model_uri, scorer.spec, list(scorer.tasks),
                              zip_folder(pyfunc.bundle_dir), folder_sha256(Path(local)),
                              domain=scorer.domain, ensemble=scorer if scorer.has_spread else None)


def _files(folder: Path) -> list[tuple[str, Path]]:
    """The folder's files, by relative name, in a fixed order."""
    return [(path.relative_to(folder).as_posix(), path)
            for path in sorted(folder.rglob("*")) if path.is_file()]


def folder_sha256(folder: Path) -> str:
    """SHA-256 of the folder's file names and contents (unlike a zip's, it
    does not change with download times)."""
    digest = hashlib.sha256()
    for name, path in _files(folder):
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def zip_folder(folder: Path) -> bytes:
    """The folder as zip bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, path in _files(folder):
            archive.write(path, name)
    return buffer.getvalue()


def unzip_to(archive: bytes, folder: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        zipped.extractall(folder)
    return folder


def source_run_id(model_uri: str, tracking_uri: str) -> str | None:
    """The MLflow run that logged the model behind ``model_uri``:
    ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` (the registered
    version's run, else its logged model's), ``models:/<model_id>`` (the
    logged model's source run) and ``runs:/<run_id>/...``. None for other
    URIs (a local folder, ``models:/NAME/latest`` or a stage) and for a model
    logged outside any run."""
    from pipelines.platform.tracking import client

    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/"):].split("/", 1)[0] or None
    if not model_uri.startswith("models:/"):
        return None
    path = model_uri[len("models:/"):]
    mlflow_client = client(tracking_uri)
    if "/" in path:
        name, version = path.split("/", 1)
        if not version.isdigit():
            return None
        registered = mlflow_client.get_model_version(name, version)
    elif "@" in path:
        name, alias = path.rsplit("@", 1)
        registered = mlflow_client.get_model_version_by_alias(name, alias)
    else:
        return mlflow_client.get_logged_model(path).source_run_id or None
    if registered.run_id:
        return registered.run_id
    if registered.model_id:
        return mlflow_client.get_logged_model(registered.model_id).source_run_id or None
    return None
