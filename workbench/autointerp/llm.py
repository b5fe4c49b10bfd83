"""An LLM explainer and three LLM scorers, on any :mod:`~workbench.autointerp.backends` backend.

* :class:`LLMExplainer`: explains a feature from its activating (training) examples, delphi's
  way (:func:`~workbench.autointerp.prompts.explainer_messages`).
* :class:`DetectionScorer` (delphi): the scorer model reads the explanation and, in batches,
  unmarked held-out examples, and says for each whether the feature is in it (1) or not (0).
* :class:`FuzzingScorer` (delphi): activating examples with their activating tokens marked
  (right), the same examples with as many other tokens marked (wrong), and non-activating ones
  with random tokens marked (wrong); the model says whether each marking is right.
* :class:`SimulationScorer` (Bills et al.): the model predicts the activation 0-10 of every token
  of each example from the explanation; the score is the Pearson correlation of predicted and
  true activations over all tokens pooled. With top-activating and random examples (as part of
  the examples' labels) that is Cunningham et al.'s "top and random" score.

Detection and fuzzing report balanced accuracy (the headline), F1, accuracy and, when the backend
gives log-probabilities, ROC AUC of P("1") normalised over "1" and "0" at each answer token.
Simulation reads the prediction as the probability-weighted mean over "0".."10" at the number's
token when there are log-probabilities, else as the number written.

An answer that does not parse is asked again (a fresh request: the cache key carries the attempt,
and retries sample at ``retry_temperature``), ``attempts`` times in all; then its items count as
failures in :attr:`Score.failures` and are left out of the metrics, never scored 0. A score with
nothing parsed is ``failed`` with value NaN, as is the score of a failed explanation.

Each class also has a ``*_many`` method that runs many features' requests together, so a
backend's concurrency is used across features.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workbench.autointerp.backends import Backend, Completion, Request
from workbench.autointerp.prompts import (ParseError, Parsed, detection_messages, explainer_messages,
                                          fuzzing_messages, highlight, marked_positions, parse_binary_list,
                                          parse_explanation, parse_simulation, simulation_messages)
from workbench.autointerp.types import (Example, Explanation, Score, balanced_accuracy, f1_score, pearson,
                                        roc_auc)

__all__ = ["DetectionScorer", "FuzzingScorer", "LLMExplainer", "SimulationScorer"]


@dataclass
class _Job:
    """One prompt of one feature, with how to read its answer."""

    owner: int
    """Index of the feature (explanation, examples) it belongs to."""
    messages: list[dict]
    parse: Callable[[Completion], Any]
    """Reads an answer; raises :class:`ParseError` on a bad one."""
    items: Any = None
    """What the scorer needs to turn the parsed answer into details."""
    result: Any = None
    """The parsed answer; None when every attempt failed."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)
    """Why each failed attempt did not parse."""


def _run(backend: Backend, jobs: list[_Job], *, max_tokens: int, logprobs: int | None, attempts: int,
         temperature: float, retry_temperature: float, progress: bool, desc: str) -> None:
    """Ask every job's prompt; ask again those whose answers do not parse, up to ``attempts`` in all."""
    pending = list(jobs)
    for attempt in range(attempts):
        if not pending:
            return
        heat = temperature if attempt == 0 else max(temperature, retry_temperature)
        requests = [Request(job.messages, max_tokens, heat, logprobs, attempt) for job in pending]
        label = desc if attempt == 0 else f"{desc} (retry {attempt})"
        answers = backend.complete_many(requests, progress=progress, desc=label)
        failed = []
        for job, answer in zip(pending, answers):
            job.prompt_tokens += answer.prompt_tokens
            job.completion_tokens += answer.completion_tokens
            try:
                job.result = job.parse(answer)
            except ParseError as error:
                job.errors.append(str(error))
                failed.append(job)
        pending = failed


def _prefills(backend: Backend, prefill: bool | None) -> bool:
    """``prefill``, or by default whether the backend continues a final assistant message (a local model)."""
    return getattr(backend, "continues_final_message", False) if prefill is None else prefill


class LLMExplainer:
    """Explains a feature from its activating examples with a chat model (delphi's prompt)."""

    def __init__(self, backend: Backend, *, max_examples: int = 20, threshold: float = 0.3, max_tokens: int | None = None,
                 attempts: int = 3, retry_temperature: float = 0.7, prefill: bool | None = None,
                 progress: bool = False) -> None:
        """``max_examples`` activating examples are shown (in the order given); tokens above
        ``threshold`` times an example's maximum are marked; ``attempts`` requests at most per feature.
        ``prefill``: start the answer with ``[EXPLANATION]:`` for the model to continue (default:
        where the backend continues a final assistant message, i.e. a local model; a chat API
        would answer it anew). ``max_tokens`` per answer: default 150, or 60 when prefilled (one sentence)."""
        self.backend = backend
        self.name = backend.name
        self.max_examples = max_examples
        self.threshold = threshold
        self.attempts = attempts
        self.retry_temperature = retry_temperature
        self.prefill = _prefills(backend, prefill)
        self.max_tokens = max_tokens if max_tokens is not None else 60 if self.prefill else 150
        self.progress = progress

    def explain(self, feature: int, examples: Sequence[Example]) -> Explanation:
        return self.explain_many([(feature, examples)])[0]

    def explain_many(self, features: Sequence[tuple[int, Sequence[Example]]]) -> list[Explanation]:
        """Explanations of many features, their requests run together."""
        jobs = []
        for owner, (_, examples) in enumerate(features):
            shown = [e for e in examples if e.label][: self.max_examples]
            if shown:
                jobs.append(_Job(owner, explainer_messages(shown, threshold=self.threshold, prefill=self.prefill),
                                 lambda answer: parse_explanation(answer.text, prefilled=self.prefill)))
        _run(self.backend, jobs, max_tokens=self.max_tokens, logprobs=None, attempts=self.attempts,
             temperature=0.0, retry_temperature=self.retry_temperature, progress=self.progress, desc="explain")
        explanations = [Explanation(feature, "", self.name, failed=True) for feature, _ in features]
        for job in jobs:
            explanation = explanations[job.owner]
            explanation.prompt_tokens, explanation.completion_tokens = job.prompt_tokens, job.completion_tokens
            if job.result is not None:
                explanation.text, explanation.failed = job.result, False
        return explanations


def _failed_score(explanation: Explanation, scorer: str, n_items: int) -> Score:
    return Score(explanation.feature, scorer, math.nan, failures=n_items, failed=True)


def _token_at(answer: Completion, offset: int) -> tuple[str, dict[str, float]] | None:
    """The generated token covering character ``offset`` of the answer, and its top log-probabilities."""
    if answer.tokens is None or answer.top_logprobs is None:
        return None
    joined = "".join(answer.tokens)
    shift = joined.find(answer.text) if joined != answer.text else 0
    if shift < 0:
        return None  # the tokens do not spell the text: no way to place the offset
    position = 0
    for token, alternatives in zip(answer.tokens, answer.top_logprobs):
        if position <= offset + shift < position + len(token):
            return token, alternatives
        position += len(token)
    return None


def _bare(token: str) -> str:
    return re.sub(r"[^0-9a-z]", "", token.lower())


def _probability_of_one(answer: Completion, parsed: Parsed) -> float | None:
    """P("1") / (P("1") + P("0")) at the answer token of ``parsed``; the answer itself (1.0 or 0.0)
    when neither is among the alternatives; None without log-probabilities."""
    found = _token_at(answer, parsed.offset)
    if found is None or _bare(found[0]) not in ("1", "0", "true", "false"):
        return None
    p1 = sum(math.exp(lp) for token, lp in found[1].items() if _bare(token) in ("1", "true"))
    p0 = sum(math.exp(lp) for token, lp in found[1].items() if _bare(token) in ("0", "false"))
    return p1 / (p1 + p0) if p1 + p0 > 0 else float(parsed.value)


def _expected_activation(answer: Completion, parsed: Parsed) -> float:
    """The probability-weighted mean over "0".."10" at the number's token, or the number written
    when there are no log-probabilities or the token is only part of the number ("1" of "10")."""
    found = _token_at(answer, parsed.offset)
    if found is None or _bare(found[0]) != str(int(parsed.value)):
        return parsed.value
    weights = {}
    for token, lp in found[1].items():
        bare = _bare(token)
        if bare.isdigit() and int(bare) <= 10:
            weights[int(bare)] = weights.get(int(bare), 0.0) + math.exp(lp)
    total = sum(weights.values())
    return sum(v * p for v, p in weights.items()) / total if total > 0 else parsed.value


class _Classifier:
    """Detection and fuzzing: batches of texts, a 0/1 answer for each, classification metrics."""

    name = ""

    def __init__(self, backend: Backend, *, batch_size: int | None = None, logprobs: int | None = 5,
                 attempts: int = 3, retry_temperature: float = 0.7, max_tokens: int | None = None, seed: int = 0,
                 prefill: bool | None = None, progress: bool = False) -> None:
        """``batch_size`` texts per prompt (default 5, or 1 when prefilled); ``logprobs`` top
        log-probabilities asked per token (None: none, so no AUC); the texts are shuffled with
        ``seed`` (and the feature) before batching. ``prefill``: start each answer with ``[`` for
        the model to continue, without the worked example (default: where the backend continues a
        final assistant message, i.e. a local model; SmolLM2-135M copies the worked example's
        answer, and answers one text per prompt, not a list of five). ``max_tokens`` per answer
        (default 50, or 4 per text plus 2 when prefilled)."""
        self.backend = backend
        self.prefill = _prefills(backend, prefill)
        self.batch_size = batch_size if batch_size is not None else 1 if self.prefill else 5
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.logprobs = logprobs
        self.attempts = attempts
        self.retry_temperature = retry_temperature
        self.max_tokens = max_tokens if max_tokens is not None else 4 * self.batch_size + 2 if self.prefill else 50
        self.seed = seed
        self.progress = progress

    def score(self, explanation: Explanation, examples: Sequence[Example]) -> Score:
        return self.score_many([(explanation, examples)])[0]

    def score_many(self, pairs: Sequence[tuple[Explanation, Sequence[Example]]]) -> list[Score]:
        """Scores of many explanations, their requests run together."""
        jobs: list[_Job] = []
        n_items = []
        for owner, (explanation, examples) in enumerate(pairs):
            items = self._items(explanation.feature, examples)
            random.Random(f"{self.seed}:{explanation.feature}").shuffle(items)
            n_items.append(len(items))
            if explanation.failed:
                continue
            for start in range(0, len(items), self.batch_size):
                batch = items[start:start + self.batch_size]
                jobs.append(_Job(owner, self._messages(explanation.text, [text for text, *_ in batch]),
                                 lambda answer, n=len(batch): (
                                     parse_binary_list(answer.text, n, prefilled=self.prefill), answer),
                                 items=batch))
        _run(self.backend, jobs, max_tokens=self.max_tokens, logprobs=self.logprobs, attempts=self.attempts,
             temperature=0.0, retry_temperature=self.retry_temperature, progress=self.progress, desc=self.name)
        scores = []
        for owner, (explanation, _) in enumerate(pairs):
            if explanation.failed:
                scores.append(_failed_score(explanation, self.name, n_items[owner]))
                continue
            scores.append(self._summarise(explanation, [job for job in jobs if job.owner == owner]))
        return scores

    def _summarise(self, explanation: Explanation, jobs: list[_Job]) -> Score:
        details, failures = [], 0
        for job in jobs:
            if job.result is None:
                failures += len(job.items)
                continue
            parsed, answer = job.result
            for (_, label, kind, index), value in zip(job.items, parsed):
                details.append({"index": index, "kind": kind, "label": label, "prediction": bool(value.value),
                                "probability": _probability_of_one(answer, value)})
        score = Score(explanation.feature, self.name, math.nan, n=len(details), failures=failures,
                      failed=not details, details=details,
                      prompt_tokens=sum(j.prompt_tokens for j in jobs),
                      completion_tokens=sum(j.completion_tokens for j in jobs))
        if details:
            labels = [d["label"] for d in details]
            predictions = [d["prediction"] for d in details]
            score.metrics = {"balanced_accuracy": balanced_accuracy(labels, predictions),
                             "f1": f1_score(labels, predictions),
                             "accuracy": sum(y == p for y, p in zip(labels, predictions)) / len(details)}
            if all(d["probability"] is not None for d in details):
                score.metrics["auc"] = roc_auc(labels, [d["probability"] for d in details])
            score.value = score.metrics["balanced_accuracy"]
        return score

    def _items(self, feature: int, examples: Sequence[Example]) -> list[tuple[str, bool, str, int]]:
        """(text shown, truth, kind, index of the example) per item."""
        raise NotImplementedError

    def _messages(self, explanation: str, texts: list[str]) -> list[dict]:
        raise NotImplementedError


class DetectionScorer(_Classifier):
    """delphi's detection: does each (unmarked) held-out example have the feature explained?"""

    name = "detection"

    def _items(self, feature: int, examples: Sequence[Example]) -> list[tuple[str, bool, str, int]]:
        return [(highlight(e.tokens, []), e.label, e.kind, i) for i, e in enumerate(examples)]

    def _messages(self, explanation: str, texts: list[str]) -> list[dict]:
        return detection_messages(explanation, texts, prefill=self.prefill)


class FuzzingScorer(_Classifier):
    """delphi's fuzzing: is the marking of each held-out example right?

    Items: each activating example with its activating tokens marked (right, kind as the
    example's); with ``mismarked``, the same example with as many non-activating tokens marked
    (wrong, kind ``"mismarked"``); each non-activating example with as many random tokens marked
    as a random activating example has (wrong, kind as the example's)."""

    name = "fuzzing"

    def __init__(self, backend: Backend, *, threshold: float = 0.3, mismarked: bool = True, **options: Any) -> None:
        """``threshold``: tokens above it times the example's maximum are the activating ones;
        ``options`` as :class:`DetectionScorer`'s."""
        super().__init__(backend, **options)
        self.threshold = threshold
        self.mismarked = mismarked

    def _items(self, feature: int, examples: Sequence[Example]) -> list[tuple[str, bool, str, int]]:
        rng = random.Random(f"fuzz:{self.seed}:{feature}")
        items, counts = [], []
        for i, example in enumerate(examples):
            positions = marked_positions(example.activations, self.threshold) if example.label else []
            if not positions:
                continue
            counts.append(len(positions))
            items.append((highlight(example.tokens, positions), True, example.kind, i))
            others = [p for p in range(len(example.tokens)) if p not in set(positions)]
            if self.mismarked and others:
                wrong = rng.sample(others, min(len(positions), len(others)))
                items.append((highlight(example.tokens, wrong), False, "mismarked", i))
        for i, example in enumerate(examples):
            if example.label or not example.tokens:
                continue
            k = min(rng.choice(counts) if counts else 1, len(example.tokens))
            items.append((highlight(example.tokens, rng.sample(range(len(example.tokens)), k)), False, example.kind, i))
        return items

    def _messages(self, explanation: str, texts: list[str]) -> list[dict]:
        return fuzzing_messages(explanation, texts, prefill=self.prefill)


class SimulationScorer:
    """Bills et al.'s simulation: predict every token's activation (0-10) from the explanation;
    the value is Pearson's r over all scored tokens pooled (``metrics["top_and_random"]``, the same
    number, names it as Cunningham et al. do when the examples are top-activating and random ones;
    ``"top_only"`` and ``"random_only"`` pool only the activating or non-activating examples).

    ``n`` counts the tokens scored; ``failures`` counts the examples whose answer never parsed."""

    name = "simulation"

    def __init__(self, backend: Backend, *, method: str = "all_at_once", logprobs: int | None = 15,
                 attempts: int = 3, retry_temperature: float = 0.7, max_tokens: int | None = None,
                 progress: bool = False) -> None:
        """``method``: only ``"all_at_once"`` (one request per example, every token at once);
        ``logprobs``: top log-probabilities asked per token (None: read the numbers written);
        ``max_tokens``: per answer (default: 8 per token shown, plus 20)."""
        if method != "all_at_once":
            raise ValueError(f"SimulationScorer: method {method!r} is not supported; use 'all_at_once'")
        self.backend = backend
        self.method = method
        self.logprobs = logprobs
        self.attempts = attempts
        self.retry_temperature = retry_temperature
        self.max_tokens = max_tokens
        self.progress = progress

    def score(self, explanation: Explanation, examples: Sequence[Example]) -> Score:
        return self.score_many([(explanation, examples)])[0]

    def score_many(self, pairs: Sequence[tuple[Explanation, Sequence[Example]]]) -> list[Score]:
        """Scores of many explanations, their requests run together."""
        jobs: list[_Job] = []
        for owner, (explanation, examples) in enumerate(pairs):
            if explanation.failed:
                continue
            for i, example in enumerate(examples):
                jobs.append(_Job(owner, simulation_messages(explanation.text, example.tokens),
                                 lambda answer, tokens=example.tokens: [
                                     _expected_activation(answer, p) for p in parse_simulation(answer.text, tokens)],
                                 items=(i, example)))
        longest = max((len(job.items[1].tokens) for job in jobs), default=0)
        _run(self.backend, jobs, max_tokens=self.max_tokens or 8 * longest + 20, logprobs=self.logprobs,
             attempts=self.attempts, temperature=0.0, retry_temperature=self.retry_temperature,
             progress=self.progress, desc=self.name)
        scores = []
        for owner, (explanation, examples) in enumerate(pairs):
            if explanation.failed:
                scores.append(_failed_score(explanation, self.name, len(examples)))
                continue
            scores.append(self._summarise(explanation, [job for job in jobs if job.owner == owner]))
        return scores

    def _summarise(self, explanation: Explanation, jobs: list[_Job]) -> Score:
        details, failures = [], 0
        pooled: dict[str, tuple[list[float], list[float]]] = {"all": ([], []), "top": ([], []), "random": ([], [])}
        for job in jobs:
            index, example = job.items
            if job.result is None:
                failures += 1
                details.append({"index": index, "kind": example.kind, "label": example.label, "failed": True,
                                "errors": job.errors})
                continue
            details.append({"index": index, "kind": example.kind, "label": example.label,
                            "true": list(example.activations), "predicted": job.result})
            for group in ("all", "top" if example.label else "random"):
                pooled[group][0].extend(example.activations)
                pooled[group][1].extend(job.result)
        n = len(pooled["all"][0])
        score = Score(explanation.feature, self.name, math.nan, n=n, failures=failures, failed=n == 0,
                      details=details, prompt_tokens=sum(j.prompt_tokens for j in jobs),
                      completion_tokens=sum(j.completion_tokens for j in jobs))
        if n:
            r = pearson(*pooled["all"])
            score.metrics = {"pearson": r, "top_and_random": r}
            for group, key in (("top", "top_only"), ("random", "random_only")):
                if pooled[group][0]:
                    score.metrics[key] = pearson(*pooled[group])
            score.value = r
        return score
