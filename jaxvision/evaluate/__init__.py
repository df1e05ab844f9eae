"""Evaluation helpers that need more than one batch or produce images."""
