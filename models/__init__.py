"""What is learned: MMoEEx and its baselines, masked losses, the MAML-MTL
step, metrics and expert diversity (Aoki et al. 2021, arXiv 2106.10595).

Pure PyTorch: nothing here imports Ray or MLflow, so the same modules run in
a notebook, a unit test, a Ray Train worker or an MLflow pyfunc.
"""
