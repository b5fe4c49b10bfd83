"""Automated interpretability: explain features from their examples and score the explanations
on held-out examples (detection, fuzzing, simulation, and a rule scorer for the offline
token-pattern explainer), for any dictionary.

* :mod:`~workbench.autointerp.types`: examples, explanations, scores, metrics (the shared contract);
* :mod:`~workbench.autointerp.examples`: a feature's activating and non-activating examples, split;
* :mod:`~workbench.autointerp.pattern`: the offline token-pattern explainer and its rule scorer;
* :mod:`~workbench.autointerp.compare`: explain and score a random sample of features of several
  dictionaries, with intervals (resumable).
"""

from workbench.autointerp.compare import AutointerpResult, run_autointerp
from workbench.autointerp.examples import ExampleConfig, ExampleSource, FeatureExamples
from workbench.autointerp.pattern import RuleScorer, TokenPatternExplainer, apply_rule, rule_sentence
from workbench.autointerp.types import (AutointerpFailure, Example, Explainer, Explanation, Score, Scorer,
                                        balanced_accuracy, f1_score, pearson, roc_auc)

__all__ = ["AutointerpFailure", "AutointerpResult", "Example", "ExampleConfig", "ExampleSource", "Explainer",
           "Explanation", "FeatureExamples", "RuleScorer", "Score", "Scorer", "TokenPatternExplainer", "apply_rule",
           "balanced_accuracy", "f1_score", "pearson", "roc_auc", "rule_sentence", "run_autointerp"]
