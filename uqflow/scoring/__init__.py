"""Scores, correctness judges and their evaluation (AUROC)."""
