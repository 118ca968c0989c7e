"""Evaluation: CTR metrics (AUC, logloss), and later the paper's analyses and plots."""
