"""Running studies (Optuna) and reading their Pareto fronts."""
