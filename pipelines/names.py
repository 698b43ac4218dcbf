"""Names several jobs and libraries share, written once."""

#: The registered model the jobs train, screen and promote by default.
DEFAULT_MODEL_NAME = "pcba-mmoeex"
#: The alias a promoted version gets (the one screening pulls).
CHAMPION_ALIAS = "champion"
#: Where screening finds the champion by default.
CHAMPION_URI = f"models:/{DEFAULT_MODEL_NAME}@{CHAMPION_ALIAS}"
#: MLflow experiments of training runs (train, tune, run) and of comparisons.
TRAINING_EXPERIMENT = "pcba-mmoeex"
COMPARISON_EXPERIMENT = "pcba-mmoeex-comparison"
#: Library rows a screen commits at a time (what a killed screen can lose);
#: the screen job's --rows-per-part default.
SCREEN_ROWS_PER_PART = 50_000
#: Without ``screen --domain all``, one library row in this many (a seeded
#: sample) gets the nearest-training-molecule search, for the library's
#: similarity histogram.
SIMILARITY_SAMPLE_EVERY = 16
