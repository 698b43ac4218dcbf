"""Ray Tune: the search space over alpha, E and the inner learning rate, the
scheduler and search algorithm, and best-trial selection."""
