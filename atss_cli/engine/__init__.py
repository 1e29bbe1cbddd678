"""Training, evaluation and prediction loops, distributed set-up and checkpoint files."""
