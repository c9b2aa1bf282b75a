"""Command-line experiments: python -m experiments.{train, efficiency, grad_similarity, firing_rates}."""
