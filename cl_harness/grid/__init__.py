"""A grid of runs: planning (strategies x seeds x orders), preparation, the parent run and the executors."""
