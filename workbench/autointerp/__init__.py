"""Automated interpretability: explain features from their examples and score the explanations
on held-out examples (detection, fuzzing, simulation, and a rule scorer for the offline
token-pattern explainer), for any dictionary.

* :mod:`~workbench.autointerp.types`: examples, explanations, scores, metrics (the shared contract);
* :mod:`~workbench.autointerp.backends`: an OpenAI-compatible HTTP backend and a local transformers
  one, behind a persistent cache (:func:`make_backend`);
* :mod:`~workbench.autointerp.llm`: the LLM explainer and delphi's detection and fuzzing scorers, and
  simulation;
* :mod:`~workbench.autointerp.examples`: a feature's activating and non-activating examples, split;
* :mod:`~workbench.autointerp.pattern`: the offline token-pattern explainer and its rule scorer;
* :mod:`~workbench.autointerp.compare`: explain and score a random sample of features of several
  dictionaries, with intervals (resumable).
"""

from workbench.autointerp.backends import make_backend
from workbench.autointerp.compare import AutointerpResult, run_autointerp
from workbench.autointerp.examples import ExampleConfig, ExampleSource, FeatureExamples
from workbench.autointerp.llm import DetectionScorer, FuzzingScorer, LLMExplainer, SimulationScorer
from workbench.autointerp.pattern import RuleScorer, TokenPatternExplainer, apply_rule, rule_sentence
from workbench.autointerp.types import (AutointerpFailure, Example, Explainer, Explanation, Score, Scorer,
                                        balanced_accuracy, f1_score, pearson, roc_auc)

__all__ = ["AutointerpFailure", "AutointerpResult", "DetectionScorer", "Example", "ExampleConfig", "ExampleSource",
           "Explainer", "Explanation", "FeatureExamples", "FuzzingScorer", "LLMExplainer", "RuleScorer", "Score",
           "Scorer", "SimulationScorer", "TokenPatternExplainer", "apply_rule", "balanced_accuracy", "f1_score",
           "make_backend", "pearson", "roc_auc", "rule_sentence", "run_autointerp"]
