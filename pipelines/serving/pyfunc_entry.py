"""MLflow "models from code" entry point of the PCBA scoring model.

MLflow runs this file when it loads the model (no pickled Python objects in
the model artifact); the class it names lives in pipelines/serving/pyfunc_model.py,
which is bundled with the model as code.
"""
from mlflow.models import set_model

from pipelines.serving.pyfunc_model import PcbaPyfuncModel

set_model(PcbaPyfuncModel())
