"""Automated interpretability: explain features from their examples and score the explanations
on held-out examples (detection, fuzzing, simulation, and a rule scorer for the offline
token-pattern explainer), for any dictionary."""

from workbench.autointerp.types import (AutointerpFailure, Example, Explainer, Explanation, Score, Scorer,
                                        balanced_accuracy, f1_score, pearson, roc_auc)

__all__ = ["AutointerpFailure", "Example", "Explainer", "Explanation", "Score", "Scorer",
           "balanced_accuracy", "f1_score", "pearson", "roc_auc"]
