"""The model a screening job scores with, pulled once from the registry.

The driver resolves ``models:/NAME@ALIAS`` (any tracking URI) and downloads
the pyfunc once; scoring actors get it as a zip through Ray's object store
and load it with :func:`pipelines.pyfunc_model.load_scorer`, so workers on
other nodes need neither the MLflow server nor a shared filesystem.
"""
from __future__ import annotations

import io
import logging
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from featurize.spec import FingerprintSpec
from pipelines.errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScreeningModel:
    """A downloaded scoring model: its spec, assay names and packed files."""

    uri: str
    spec: FingerprintSpec
    tasks: list[str]
    archive: bytes  # the pyfunc folder, zipped

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

    from pipelines.pyfunc_model import load_scorer

    with tempfile.TemporaryDirectory(prefix="screen-model-") as scratch:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=scratch,
                tracking_uri=tracking_uri, registry_uri=tracking_uri)
        except MlflowException as error:
            raise UserError(f"model {model_uri} not found in MLflow at {tracking_uri}: "
                            f"{error.message.splitlines()[0]}") from error
        scorer = load_scorer(local, device="cpu")
        logger.info("model %s: %d assays, %s", model_uri, len(scorer.tasks), scorer.spec.describe())
        return ScreeningModel(model_uri, scorer.spec, list(scorer.tasks), zip_folder(Path(local)))


def zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder))
    return buffer.getvalue()


def unzip_to(archive: bytes, folder: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        zipped.extractall(folder)
    return folder
