"""What a registered model needs to score: the model bundle on disk, the
scorer, the MLflow pyfunc (and its models-from-code entry file), and the
registry calls that log, register and look models up."""
