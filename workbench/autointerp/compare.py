"""The comparison: one explainer and the same scorers over a random sample of features of each of
several dictionaries (an SAE, neurons, PCA, ICA, random directions), with bootstrap intervals.

Per dictionary, the features with enough activating examples in both splits are *candidates*; they
are visited in a seeded random order (not cherry-picked) and each is *eligible* when it also has
enough quiet windows for non-activating examples; the first ``n_features`` eligible ones are
explained from their training examples and scored on the held-out ones. How many features were
candidates, checked and eligible is reported, since the sample describes only eligible features.

Every feature's result is written as it is done (``out_dir/DICTIONARY/KEY/feature_N.json``,
atomically; KEY is a hash of everything the result depends on), so an interrupted run resumes and a
finished one is read back at once. Failures (an explainer or scorer that raised
:class:`~workbench.autointerp.types.AutointerpFailure`, an explanation that came back failed) are
counted and left out of the means, never scored 0.

The summary gives, per dictionary and scorer, the mean score over features with a percentile
bootstrap 95% interval and n, and the Pearson and Spearman correlations of the scores with the
skew and kurtosis of the features' activations (Cunningham et al. report 0.19 and 0.24), with
intervals; and the backends' token counts and cost, where the explainer or scorers have a backend.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.autointerp.examples import ExampleConfig, ExampleSource
from workbench.autointerp.types import AutointerpFailure, Explainer, Explanation, Score, Scorer
from workbench.features import FeatureStats
from workbench.files import write_json
from workbench.progress import progress_bar
from workbench.stats import correlation, mean_interval
from workbench.store import ActivationStore

__all__ = ["AutointerpResult", "correlation", "mean_interval", "run_autointerp"]


@dataclass
class AutointerpResult:
    """What :func:`run_autointerp` found."""

    records: dict[str, list[dict]]
    """Per dictionary, one record per explained feature, in sampling order: feature, explanation,
    scores (by scorer), skew, kurtosis, density, example counts."""
    summary: dict
    """Per dictionary: counts (features, candidates, checked, eligible, explained), per scorer the mean
    with its 95% interval and n, failures; correlations with skew and kurtosis; usage."""

    def table(self, scorer: str) -> list[list[str]]:
        """Rows for :func:`workbench.charts.table`: dictionary, mean (95% interval), n, failures, eligible share."""
        rows = []
        for name, s in self.summary["dictionaries"].items():
            m = s["scores"].get(scorer)
            if m is None:
                continue
            rows.append([name, f"{m['mean']:.3f} ({m['ci'][0]:.3f}-{m['ci'][1]:.3f})", str(m["n"]), str(m["failures"]),
                         f"{s['eligible']}/{s['checked']} checked, {s['candidates']:,} candidates of {s['n_features']:,}"])
        return rows


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "dictionary"


def _usage(parts: Sequence[Any]) -> dict[str, float]:
    """Summed ``backend.usage`` of the explainer and scorers that have a backend (each backend once)."""
    total: dict[str, float] = {}
    seen: set[int] = set()
    for part in parts:
        backend = getattr(part, "backend", None)
        if backend is None or id(backend) in seen:
            continue
        seen.add(id(backend))
        for key, value in backend.usage.items():
            total[key] = total.get(key, 0) + value
    return total


def _examples_record(feature: int, source: ExampleSource, stats: FeatureStats) -> tuple[dict, Any]:
    """A feature's examples and the start of its record; ``eligible`` False (with the reason) when
    either split lacks activating or non-activating examples."""
    cfg = source.config
    examples = source.build(feature)
    record: dict[str, Any] = {"feature": feature, "counts": examples.counts(),
                              "skew": float(stats.skew[feature]), "kurtosis": float(stats.kurtosis[feature]),
                              "density": float(stats.density[feature]), "max": float(stats.tensors["max"][feature])}
    short = [f"{n} {split} {'activating' if label else 'non-activating'}"
             for split in ("train", "test") for label, need in ((True, cfg.min_activating), (False, cfg.min_negatives))
             if (n := examples.n(split, label)) < max(need, 1)]
    record["eligible"] = not short
    if short:
        record["reason"] = "only " + ", ".join(short)
    return record, examples


def _explain(explainer: Explainer, jobs: list[tuple[int, Any]]) -> list[Explanation]:
    """Explanations from the training examples: all at once where the explainer can (an LLM's
    requests run concurrently), else one by one; an AutointerpFailure is recorded as a failed explanation."""
    if hasattr(explainer, "explain_many"):
        try:
            return list(explainer.explain_many([(f, ex.train) for f, ex in jobs]))
        except AutointerpFailure:
            pass  # fall back to one at a time, so one bad feature fails alone
    out = []
    for feature, examples in jobs:
        try:
            out.append(explainer.explain(feature, examples.train))
        except AutointerpFailure as error:
            out.append(Explanation(feature, "", explainer.name, failed=True, rule={"error": str(error)}))
    return out


def _score(scorer: Scorer, pairs: list[tuple[Explanation, Any]]) -> list[Score]:
    """Scores on the held-out examples (failed explanations get a failed score, never 0)."""
    live = [(e, ex.test) for e, ex in pairs if not e.failed]
    scored: list[Score] = []
    if live and hasattr(scorer, "score_many"):
        try:
            scored = list(scorer.score_many(live))
        except AutointerpFailure:
            scored = []
    if len(scored) != len(live):
        scored = []
        for explanation, test in live:
            try:
                scored.append(scorer.score(explanation, test))
            except AutointerpFailure as error:
                scored.append(Score(explanation.feature, scorer.name, math.nan, failed=True, metrics={"error": str(error)}))
    it = iter(scored)
    return [Score(e.feature, scorer.name, math.nan, failed=True) if e.failed else next(it) for e, _ in pairs]


def _sample(order: list[int], source: ExampleSource, stats: FeatureStats, folder: Path | None, explainer: Explainer,
            scorers: Sequence[Scorer], n_features: int, chunk: int, bar: Any) -> tuple[list[dict], int]:
    """Visit the features in ``order`` a chunk at a time until ``n_features`` eligible ones are
    explained and scored (read back from ``folder`` where done before); returns their records and
    how many features were visited."""
    done: list[dict] = []
    checked = 0
    queue = list(order)
    while queue and len(done) < n_features:
        batch, queue = queue[:chunk], queue[chunk:]
        found: dict[int, dict] = {}
        for feature in batch:
            path = folder / f"feature_{feature}.json" if folder is not None else None
            if path is not None and path.is_file():
                found[feature] = json.loads(path.read_text())
        # only the new features that can still be needed (counting each as eligible), in order
        fresh, expected = [], len(done)
        for feature in batch:
            if expected >= n_features:
                break
            if feature in found:
                expected += bool(found[feature]["eligible"])
            else:
                fresh.append(feature)
                expected += 1
        source.prepare(fresh)
        t0 = time.perf_counter()
        jobs = []
        for feature in fresh:
            record, examples = _examples_record(feature, source, stats)
            found[feature] = record
            if record["eligible"]:
                jobs.append((feature, examples))
        explanations = _explain(explainer, jobs)
        scores = {scorer.name: _score(scorer, list(zip(explanations, [ex for _, ex in jobs])))
                  for scorer in scorers}
        for i, ((feature, _), explanation) in enumerate(zip(jobs, explanations)):
            found[feature].update(explanation=asdict(explanation),
                                  scores={name: asdict(per[i]) for name, per in scores.items()})
        seconds = (time.perf_counter() - t0) / max(len(fresh), 1)
        for feature in fresh:
            found[feature]["seconds"] = seconds
            if folder is not None:
                write_json(folder / f"feature_{feature}.json", found[feature], indent=1, default=float)
        for i, feature in enumerate(batch):
            if len(done) >= n_features:
                break
            if feature not in found:  # not needed so far: visit it next, in the same order
                queue = batch[i:] + queue
                break
            checked += 1
            if found[feature]["eligible"]:
                done.append(found[feature])
                bar.update(1)
    return done, checked


def run_autointerp(
    stats_by_dictionary: Mapping[str, FeatureStats],
    *,
    dictionaries: Mapping[str, Any],
    store: ActivationStore | Mapping[str, ActivationStore],
    explainer: Explainer,
    scorers: Sequence[Scorer],
    n_features: int = 100,
    seed: int = 0,
    out_dir: str | Path | None = None,
    example_config: ExampleConfig | None = None,
    tokenizer: Any = None,
    write_explanations: bool = True,
    chunk: int = 32,
    progress: bool = True,
) -> AutointerpResult:
    """Explain and score a random sample of ``n_features`` eligible features per dictionary.

    ``stats_by_dictionary`` and ``dictionaries`` share their keys (the names shown, e.g. "SAE",
    "neurons"); each statistics object was computed over ``store`` (one for all, or one per name)
    with that dictionary, whose encoder draws the non-activating examples. ``tokenizer`` decodes
    their tokens. With ``out_dir``, every feature's result is checkpointed there and a re-run
    resumes. With ``write_explanations``, each explanation (and its headline scores) goes into the
    statistics' ``explanations``, which feature cards and the browser show and search.
    """
    if set(stats_by_dictionary) != set(dictionaries):
        raise ValueError(f"stats and dictionaries need the same names; got {sorted(stats_by_dictionary)} and "
                         f"{sorted(dictionaries)}")
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    if not scorers:
        raise ValueError("give at least one scorer, e.g. RuleScorer()")
    cfg = example_config or ExampleConfig(seed=seed)
    out = Path(out_dir) if out_dir is not None else None
    records: dict[str, list[dict]] = {}
    summary: dict[str, Any] = {"n_features": n_features, "seed": seed, "explainer": explainer.name,
                               "scorers": [s.name for s in scorers], "example_config": asdict(cfg), "dictionaries": {}}
    started = time.perf_counter()
    bar = progress_bar(total=n_features * len(stats_by_dictionary), desc="autointerp", unit="feature",
                       disable=not progress)
    with bar:
        for name, stats in stats_by_dictionary.items():
            source = ExampleSource(stats, dictionaries[name], store[name] if isinstance(store, Mapping) else store,
                                   tokenizer=tokenizer, config=cfg)
            candidates = source.candidates()
            # a sample of its own per dictionary (seeded by the name too), so that dictionaries with
            # as many candidates do not share the same feature ids
            generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            order = [candidates[i] for i in torch.randperm(len(candidates), generator=generator).tolist()]
            key = {"stats": stats.meta.get("fingerprint", {}).get("dictionary_probe", stats.meta.get("created")),
                   "n_tokens": stats.n_tokens, "example_config": asdict(cfg), "explainer": explainer.name,
                   "scorers": [s.name for s in scorers], "seed": seed}
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
            folder = out / _slug(name) / digest if out is not None else None
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                write_json(folder / "key.json", key)
            done, checked = _sample(order, source, stats, folder, explainer, scorers, n_features, chunk, bar)
            records[name] = done
            summary["dictionaries"][name] = _summarise(name, stats, done, scorers, candidates, checked, seed)
            if write_explanations:
                for record in done:
                    explanation = record["explanation"]
                    if not explanation["failed"]:
                        scores = ", ".join(f"{s} {record['scores'][s]['value']:.2f}" for s in record["scores"]
                                           if not record["scores"][s]["failed"])
                        stats.explanations[record["feature"]] = explanation["text"] + (f"  [{scores}]" if scores else "")
    summary["correlations"] = {s.name: {"all": _correlations([r for rs in records.values() for r in rs], s.name, seed)}
                               for s in scorers}
    summary["usage"] = _usage([explainer, *scorers])
    summary["tokens"] = {
        "prompt": sum(r["explanation"]["prompt_tokens"] + sum(s["prompt_tokens"] for s in r["scores"].values())
                      for rs in records.values() for r in rs),
        "completion": sum(r["explanation"]["completion_tokens"] + sum(s["completion_tokens"] for s in r["scores"].values())
                          for rs in records.values() for r in rs)}
    summary["seconds"] = time.perf_counter() - started
    return AutointerpResult(records, summary)


def _correlations(records: list[dict], scorer: str, seed: int) -> dict:
    scored = [r for r in records if not r["scores"][scorer]["failed"]]
    values = [r["scores"][scorer]["value"] for r in scored]
    return {stat: correlation(values, [r[stat] for r in scored], seed=seed) for stat in ("skew", "kurtosis")}


def _summarise(name: str, stats: FeatureStats, records: list[dict], scorers: Sequence[Scorer], candidates: list[int],
               checked: int, seed: int) -> dict:
    out: dict[str, Any] = {"label": stats.meta.get("dictionary_label", name), "n_features": stats.n_features,
                           "candidates": len(candidates), "checked": checked, "eligible": len(records),
                           "explained": sum(not r["explanation"]["failed"] for r in records),
                           "explanation_failures": sum(r["explanation"]["failed"] for r in records), "scores": {},
                           "correlations": {}}
    for scorer in scorers:
        scores = [r["scores"][scorer.name] for r in records]
        entry = mean_interval([s["value"] for s in scores if not s["failed"]], seed=seed)
        entry["failures"] = sum(s["failed"] for s in scores)
        metric_names = sorted({m for s in scores if not s["failed"] for m, v in s["metrics"].items()
                               if isinstance(v, (int, float))})
        entry["metrics"] = {m: mean_interval([s["metrics"].get(m, math.nan) for s in scores if not s["failed"]], seed=seed)
                            for m in metric_names}
        out["scores"][scorer.name] = entry
        out["correlations"][scorer.name] = _correlations(records, scorer.name, seed)
    return out
