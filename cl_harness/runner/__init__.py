"""One run: trains a strategy task by task, with checkpoints, given its tasks, model factory, strategy and logger."""
