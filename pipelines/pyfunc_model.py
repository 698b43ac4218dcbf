"""The import path of the scoring pyfunc in models logged before serving/
existed: their models-from-code entry file runs
``from pipelines.pyfunc_model import PcbaPyfuncModel``. In a process that has
already imported this checkout's ``pipelines`` (a screening job, a notebook),
that name must resolve here, or those registered versions no longer load.
New models name :mod:`pipelines.serving.pyfunc_model` directly."""
from pipelines.serving.pyfunc_model import PcbaPyfuncModel

__all__ = ["PcbaPyfuncModel"]
