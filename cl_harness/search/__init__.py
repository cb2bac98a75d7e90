"""Per-strategy hyperparameter search with Optuna, on validation data only."""
