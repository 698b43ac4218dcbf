"""The model comparison users choose a model from (``python -m pipelines compare``).

Every configuration (an architecture and an optimizer step, optionally with
overrides) is trained for each seed on the same split with the same budget:
the same epochs, batch size, learning rate and early stopping on validation
mean AP, through the project's one training loop
(:class:`pipelines.training.engine.EpochLoop`, run in-process: the
comparison measures the models, not Ray's start-up). The best-validation
weights are then scored on the test split, once per run
(:func:`pipelines.training.evaluation.evaluate_bundle`).

Rows report mean +- std over seeds of the test mean PR-AUC (AP) and ROC-AUC,
Delta versus the single-task reference (Aoki et al. 2021, Tables 2-4: the
per-task relative change, averaged over tasks; per seed against the
reference's per-task mean over its seeds), the expert diversity score
(Sec. 4.4), training throughput and wall time.

MLflow layout: one parent run for the comparison (the table as CSV and
markdown artifacts), one child run per configuration (the row's numbers as
metrics, so the MLflow UI's run table shows the same table), and one
grandchild run per seed (its params, per-epoch curves, test metrics, per-task
table and diversity heatmap).
"""
