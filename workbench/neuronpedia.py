"""Export feature statistics in the JSON batch files that SAEDashboard writes for Neuronpedia.

``write_neuronpedia(stats, out_dir)`` turns a :class:`~workbench.features.FeatureStats` (anything
with ``.n_features``, ``.meta`` and ``.card(i)``) into the folder that SAEDashboard's
``NeuronpediaRunner`` writes for a custom SAE, so Neuronpedia's importer
(``neuronpedia-utils/convert-saedashboard-to-neuronpedia-export.py --saedashboard-output-dir
OUT_DIR``) can read it. No science happens here: every number comes from the cards.

Reference read: ``sae-dashboard==0.8.0`` (PyPI; github.com/jbloomAus/SAEDashboard), files
``sae_dashboard/neuronpedia/neuronpedia_runner.py`` (what is written), ``neuronpedia_converter.py``
(``NeuronpediaConverter.convert_to_np_json``: how each field is filled) and
``neuronpedia_dashboard.py`` (``NeuronpediaDashboardBatch/Feature/Activation.to_dict``: the keys),
and, for the fields the importer actually reads, Neuronpedia's
``utils/neuronpedia-utils/neuronpedia_utils/convert-saedashboard-to-neuronpedia-export.py``.

Files
-----
``NeuronpediaRunner.run`` writes, into ``OUTPUTS_DIR/{model_id}_{sae_set}_{hook_name}_{d_sae}[_{suffix}]/``:

``batch-{i}.json``
    ``i = 0, 1, ...``; features ``[i * n_features_at_a_time, (i + 1) * n_features_at_a_time)``
    (default 128 per batch). The importer reads every file named ``batch-*`` and nothing else.
``run_settings.json``
    ``NeuronpediaRunnerConfig.__dict__`` (its ~40 run settings). Nothing reads it back.
``skipped_indexes.json``
    ``{"model_id", "layer" (a str), "sae_set", "log_sparsity", "skipped_indexes": [int]}``; in
    0.8.0 every feature is processed, so ``skipped_indexes`` is always ``[]``.
``tokens_{n_prompts}.pt``
    The sampled prompts, a pickled torch tensor (a cache for re-runs; not written here: no pickles).

``write_neuronpedia`` writes the batch files, ``skipped_indexes.json`` and a ``run_settings.json``
holding the subset of the runner's settings that apply (plus the stats' ``meta`` under
``"workbench"``), directly into ``out_dir``.

A batch file (``NeuronpediaDashboardBatch.to_dict``)
---------------------------------------------------
``model_id`` (str)       TransformerLens model name, e.g. ``"gpt2-small"``.
``layer`` (int)          Layer of the hook point (``blocks.{layer}.``).
``sae_set`` (str)        Neuronpedia set name (``np_set_name``, else ``sae_set``).
``sae_id_suffix``        str or null: appended as ``__{suffix}`` to the source id.
``features`` (list)      One dict per feature, keys below.

A feature (``NeuronpediaDashboardFeature.to_dict``)
---------------------------------------------------
==============================  ===========  =================================================
key                             type         meaning (SAEDashboard's computation)
==============================  ===========  =================================================
``feature_index``               int          Index of the feature in the SAE.
``neuron_alignment_indices``    [int] x 3    Hook-point dimensions with the largest decoder
                                             weights (top-3 by signed value, after
                                             ``fold_W_dec_norm``: unit-norm decoder rows).
``neuron_alignment_values``     [float] x 3  Those decoder weights.
``neuron_alignment_l1``         [float] x 3  ``|weight| / ||decoder row||_1``.
``correlated_neurons_indices``  [int] x 3    Hook-point dimensions whose activations correlate
                                             most (Pearson) with the feature's over the run.
``correlated_neurons_pearson``  [float]      Their Pearson correlations.
``correlated_neurons_l1``       [float]      Their cosine similarities (stored under ``_l1``).
``correlated_features_indices`` [int]        Features (of the same 128-feature batch only)
                                             whose activations correlate most with this one.
``correlated_features_pearson`` [float]      Pearson correlations.
``correlated_features_l1``      [float]      Cosine similarities.
``neg_str`` / ``neg_values``    [str]/[float] The 10 most suppressed tokens of the direct logit
                                             effect ``W_dec[f] @ W_U`` (ascending: most
                                             negative first), through TransformerLens' processed
                                             ``W_U`` (final norm weight folded in, unembed
                                             centred over the vocabulary).
``pos_str`` / ``pos_values``    [str]/[float] The 10 most promoted tokens (descending).
``frac_nonzero``                float        Fraction of all sampled tokens where the feature is
                                             > 0 (ignored BOS/EOS/pad tokens count as zeros),
                                             parsed back from a ``"{:.3%}"`` title: 5 decimals.
``freq_hist_data_bar_values``   [float] x 50 Bin centres of the histogram of the non-zero
                                             activations (50 linear bins, min to max).
``freq_hist_data_bar_heights``  [int] x 50   Counts per bin.
``logits_hist_data_bar_values`` [float] x 50 Bin centres of the histogram of the logit effect on
                                             every vocabulary token (50 linear bins).
``logits_hist_data_bar_heights`` [int] x 50  Counts per bin.
``n_prompts_total``             int          Prompts sampled.
``n_tokens_in_prompt``          int          Tokens per prompt.
``dataset``                     str          Hugging Face dataset path of the prompts.
``decoder_weights_dist``        [float]      Per-head share of the decoder norm; only for
                                             ``hook_z`` SAEs with DFA, else ``[]``.
``activations``                 [dict]       Example contexts, keys below.
``vector``                      [float]      The raw vector, for vector sets; ``[]`` for SAEs.
==============================  ===========  =================================================

Lists are rounded to 3 decimals (``np.round``); histogram heights come out as ints. A feature
that never fires gets empty histograms.

An activation (``NeuronpediaDashboardActivation.to_dict``)
---------------------------------------------------------
``bin_min`` / ``bin_max`` / ``bin_contains``
    The group: top activations are ``-1, max activation, -1`` (20 contexts); each of the 5
    intervals ``[i * max / 5, (i + 1) * max / 5]``, highest first, is ``lo, hi, fraction of all
    sampled tokens in [lo, hi]`` (the lowest interval starts at 0, so it counts the zeros too;
    5 random contexts each).
``tokens`` ([str]), ``values`` ([float], 3 decimals)
    The whole prompt after its first position (127 of 128 tokens) and the feature on each.
``qualifying_token_index`` (int)
    Index into ``tokens`` of the token that put the context in its group.
``dfa_values`` ([float]), ``dfa_maxValue``, ``dfa_targetIndex`` (int)
    Direct feature attribution, computed only with ``use_dfa`` (attention ``hook_z`` SAEs).
    Without it 0.8.0 still writes them, as ``[]``, ``0`` and ``-1`` (``FeatureData.dfa_data``
    defaults to ``{}``, not None, so the converter's "no DFA for this prompt" branch runs);
    ``NeuronpediaDashboardActivation.to_dict`` leaves out only the ones that are None.

What workbench writes, and where it differs
-------------------------------------------
Exactly the keys and JSON types above (``tests/test_neuronpedia.py`` checks them against the
reference and, when ``sae_dashboard`` is installed, against its own dataclasses and a real
SAEDashboard export), filled from each card:

- ``frac_nonzero`` is the card's ``density`` unrounded (SAEDashboard's 5 decimals round a
  feature firing on fewer than 1 in 200,000 tokens to 0); workbench counts over the store's
  rows, which exclude the BOS position when the capture dropped it.
- The activation histogram is the card's: log-spaced bins trimmed to the populated range, so
  ``bar_values`` (bin centres) are not evenly spaced and there are not always 50 bars.
- Logit effects are the card's direct path ``W_U (gamma * d)`` without centring the unembed:
  the same ranking as SAEDashboard, values shifted by the feature's mean effect over the
  vocabulary. A card without logits (``None``) gives empty ``pos_*``, ``neg_*`` and logit
  histogram.
- ``activations`` are the card's ``top`` and ``interval`` groups (``bin_contains`` is the card's
  ``fraction``); ``quantile`` groups have no SAEDashboard counterpart and are left out. Tokens
  and values are the card's window around the example token, not the whole prompt.
- Correlated neurons and correlated features are not computed: they get ``[]``, the defaults
  SAEDashboard's ``NeuronpediaDashboardFeature`` writes when a feature has no table data.
  Neuron alignment is computed when ``decoder`` (an SAE's ``W_dec``) is given, else ``[]`` too.
- Units: SAEDashboard folds the decoder norms into the encoder first (``fold_W_dec_norm``), so
  its activations are ``f * ||W_dec_f||`` and its logit effects are those of the unit-norm row.
  With ``decoder`` given, the export does the same (activation values, bin bounds and histogram
  centres times the row norm; logit values and their histogram divided by it), so the numbers
  match an SAEDashboard export of the same SAE (``bench/saedashboard_compare.py``); without it,
  or with ``fold_decoder_norms=False``, they are the card's. A workbench TopK SAE's rows all have
  one norm, its input scale (e.g. 1.6): not folding leaves its numbers that factor apart.
- ``decoder_weights_dist`` and ``vector`` are ``[]``, and every activation carries
  ``dfa_values=[]``, ``dfa_maxValue=0``, ``dfa_targetIndex=-1``: SAEDashboard 0.8.0's values for a
  non-DFA SAE.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["write_neuronpedia"]

NEURON_ALIGNMENT_ROWS = 3
"""Rows of the neuron-alignment table (SAEDashboard's runner: ``FeatureTablesConfig(n_rows=3)``)."""

_OWN_FILES = re.compile(r"batch-\d+\.json|run_settings\.json|skipped_indexes\.json")


class _Stats(Protocol):
    """What ``write_neuronpedia`` reads from a :class:`~workbench.features.FeatureStats`."""

    n_features: int
    meta: dict

    def card(self, feature: int) -> dict: ...


def write_neuronpedia(
    stats: _Stats,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 128,
    model_id: str | None = None,
    layer: int | None = None,
    sae_set: str = "workbench",
    sae_id_suffix: str | None = None,
    dataset: str | None = None,
    n_prompts_total: int | None = None,
    n_tokens_in_prompt: int | None = None,
    decoder: Float[Tensor, "n_features d_in"] | None = None,
    fold_decoder_norms: bool = True,
    features: Iterable[int] | None = None,
) -> list[Path]:
    """Write ``stats`` as SAEDashboard's Neuronpedia batch files into the folder ``out_dir``.

    Args:
        stats: Feature statistics (``.n_features``, ``.meta``, ``.card(i)``).
        out_dir: The folder to create (or replace, if it holds only a previous export).
        batch_size: Features per ``batch-{i}.json`` (SAEDashboard's ``n_features_at_a_time``).
        model_id: Neuronpedia/TransformerLens model name; default ``stats.meta["model"]``.
        layer: Layer of the hook point; default parsed from ``blocks.{layer}.`` in the stats'
            hook point.
        sae_set: Neuronpedia set name (``np_set_name``).
        sae_id_suffix: Optional source-id suffix (``np_sae_id_suffix``).
        dataset: Where the prompts came from; default ``stats.meta["corpus"]`` or ``""``.
        n_prompts_total: Prompts the statistics read; default ``stats.meta["n_contexts"]``, else 0
            (Neuronpedia's importer takes these two from its command line, not from the files).
        n_tokens_in_prompt: Tokens per prompt; default ``stats.meta["ctx_len"]``, else 0.
        decoder: The dictionary's decoder rows in the hook point's basis (an SAE's ``W_dec``),
            for the neuron-alignment table and SAEDashboard's units; None leaves that table empty.
        fold_decoder_norms: With ``decoder``, write activations times each row's norm and logit
            effects divided by it, as SAEDashboard does after ``fold_W_dec_norm``.
        features: Which features to export (default all), in batches of ``batch_size``.

    Returns:
        The batch files written, in order.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = int(stats.n_features)
    meta = dict(getattr(stats, "meta", None) or {})
    indices = list(range(n)) if features is None else [int(f) for f in features]
    bad = [f for f in indices if not 0 <= f < n]
    if bad:
        raise ValueError(f"features {bad[:5]} are outside 0..{n - 1}")
    if decoder is not None and (decoder.ndim != 2 or decoder.shape[0] != n):
        raise ValueError(f"decoder must be [n_features={n}, d_in], got shape {tuple(decoder.shape)}")

    model_id = model_id if model_id is not None else _meta_value(meta, "model", "model_name", "model_id")
    if not model_id:
        raise ValueError("no model id in stats.meta: pass model_id=, the model's Neuronpedia name (e.g. 'gpt2-small')")
    if layer is None:
        layer = _layer_of(meta)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"layer must be an int, got {layer!r}")
    dataset = dataset if dataset is not None else str(_meta_value(meta, "corpus", "dataset") or "")
    n_prompts_total = n_prompts_total if n_prompts_total is not None else int(_meta_value(meta, "n_contexts", "n_prompts") or 0)
    n_tokens_in_prompt = n_tokens_in_prompt if n_tokens_in_prompt is not None else int(_meta_value(meta, "ctx_len") or 0)

    alignment = _neuron_alignment(decoder) if decoder is not None else None
    if decoder is not None and fold_decoder_norms:
        norms = decoder.detach().to("cpu", torch.float64).norm(dim=1)
        if not bool((norms > 0).all()):
            raise ValueError("the decoder has all-zero rows, whose norms cannot be folded: pass fold_decoder_norms=False")
        scales = norms.tolist()
    else:
        scales = [1.0] * n
    header = {"model_id": str(model_id), "layer": layer, "sae_set": sae_set, "sae_id_suffix": sae_id_suffix}
    per_feature = {"n_prompts_total": n_prompts_total, "n_tokens_in_prompt": n_tokens_in_prompt, "dataset": dataset}

    out = Path(out_dir)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        names = []
        for i, first in enumerate(range(0, len(indices), batch_size)):
            batch = [
                _feature_dict(stats.card(f), f, per_feature, None if alignment is None else alignment[f], scales[f])
                for f in indices[first : first + batch_size]
            ]
            name = f"batch-{i}.json"
            _write_json(tmp / name, {**header, "features": batch})
            names.append(name)
        _write_json(tmp / "skipped_indexes.json", {
            "model_id": str(model_id), "layer": str(layer), "sae_set": sae_set,
            "log_sparsity": None, "skipped_indexes": sorted(set(range(n)) - set(indices)),
        })
        _write_json(tmp / "run_settings.json", {
            "sae_set": sae_set, "np_set_name": sae_set, "np_sae_id_suffix": sae_id_suffix,
            "outputs_dir": str(out), "huggingface_dataset_path": dataset, "n_prompts_total": n_prompts_total,
            "n_tokens_in_prompt": n_tokens_in_prompt, "n_features_at_a_time": batch_size,
            "model_id": str(model_id), "layer": layer, "workbench": _jsonable(meta),
        })
        _replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return [out / name for name in names]


# ---- one feature ------------------------------------------------------------------------------
def _feature_dict(card: dict, index: int, per_feature: dict, alignment: tuple[list, list, list] | None,
                  scale: float = 1.0) -> dict:
    """A card as SAEDashboard's ``NeuronpediaDashboardFeature.to_dict`` (same keys, same order);
    activations are multiplied by ``scale`` and logit effects divided by it."""
    if int(card.get("feature", index)) != index:
        raise ValueError(f"stats.card({index}) returned the card of feature {card.get('feature')}")
    logits = card.get("logits")
    top = logits["top"] if logits else []
    bottom = logits["bottom"] if logits else []
    act_values, act_heights = _bars(card.get("histogram"), scale)
    logit_values, logit_heights = _bars(logits.get("histogram") if logits else None, 1 / scale)
    align_idx, align_val, align_l1 = alignment if alignment is not None else ([], [], [])
    return {
        "feature_index": index,
        "neuron_alignment_indices": align_idx,
        "neuron_alignment_values": align_val,
        "neuron_alignment_l1": align_l1,
        "correlated_neurons_indices": [],
        "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [],
        "correlated_features_indices": [],
        "correlated_features_l1": [],
        "correlated_features_pearson": [],
        "neg_str": [str(entry["token"]) for entry in bottom],
        "neg_values": _round3(entry["value"] / scale for entry in bottom),
        "pos_str": [str(entry["token"]) for entry in top],
        "pos_values": _round3(entry["value"] / scale for entry in top),
        "frac_nonzero": float(card["density"]),
        "freq_hist_data_bar_values": act_values,
        "freq_hist_data_bar_heights": act_heights,
        "logits_hist_data_bar_heights": logit_heights,
        "logits_hist_data_bar_values": logit_values,
        "n_prompts_total": per_feature["n_prompts_total"],
        "n_tokens_in_prompt": per_feature["n_tokens_in_prompt"],
        "dataset": per_feature["dataset"],
        "decoder_weights_dist": [],
        "activations": _activations(card, scale),
        "vector": [],
    }


def _activations(card: dict, scale: float = 1.0) -> list[dict]:
    """The card's top and interval groups as ``NeuronpediaDashboardActivation.to_dict`` entries,
    activation values multiplied by ``scale``."""
    out = []
    for group in card.get("groups", []):
        kind = group.get("kind")
        if kind == "top":
            bins = (-1, _r3(card["max"] * scale), -1)  # SAEDashboard: bin_min=-1, bin_max=MAX, bin_contains=-1
        elif kind == "interval":
            bins = (_r3(group["lo"] * scale), _r3(group["hi"] * scale), float(group["fraction"]))
        else:  # quantile groups: no SAEDashboard counterpart
            continue
        for example in group.get("examples", []):
            if not example.get("tokens"):
                continue  # the importer takes max(values): an empty example would crash it
            out.append({
                "bin_min": bins[0],
                "bin_max": bins[1],
                "bin_contains": bins[2],
                "tokens": [str(t) for t in example["tokens"]],
                "values": _round3(v * scale for v in example["values"]),
                "qualifying_token_index": int(example["focus"]),
                "dfa_values": [],  # SAEDashboard 0.8.0 without DFA: [], 0, -1
                "dfa_maxValue": 0,
                "dfa_targetIndex": -1,
            })
    return out


def _bars(histogram: dict | None, scale: float = 1.0) -> tuple[list[float], list[int]]:
    """Bin centres (times ``scale``) and counts of a card histogram ``{"edges": [n+1], "counts": [n]}``."""
    if not histogram or not histogram.get("counts"):
        return [], []
    edges = [float(e) for e in histogram["edges"]]
    counts = [int(c) for c in histogram["counts"]]
    if len(edges) != len(counts) + 1:
        raise ValueError(f"a histogram needs one more edge than counts, got {len(edges)} edges and {len(counts)} counts")
    return [_r3((lo + hi) / 2 * scale) for lo, hi in zip(edges[:-1], edges[1:])], counts


def _neuron_alignment(decoder: Tensor) -> list[tuple[list[int], list[float], list[float]]]:
    """SAEDashboard's neuron-alignment table for every decoder row: the ``NEURON_ALIGNMENT_ROWS``
    largest weights of the unit-norm row (``fold_W_dec_norm``), and each one's share of the row's L1."""
    rows = decoder.detach().to("cpu", torch.float32)  # (F, d)
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = min(NEURON_ALIGNMENT_ROWS, rows.shape[1])
    top = rows.topk(k, dim=-1)  # (F, k)
    l1 = top.values.abs() / rows.abs().sum(-1, keepdim=True).clamp_min(1e-12)
    return [
        (idx, _round3(val), _round3(share))
        for idx, val, share in zip(top.indices.tolist(), top.values.tolist(), l1.tolist())
    ]


# ---- helpers ----------------------------------------------------------------------------------
def _r3(x: float) -> float:
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"a card holds a non-finite number ({x}); JSON and Neuronpedia need finite values")
    return round(x, 3)


def _round3(values: Iterable[float]) -> list[float]:
    return [_r3(v) for v in values]


def _meta_value(meta: dict, *keys: str) -> Any:
    """The first of ``keys`` found in ``meta`` or one level down (e.g. ``meta["store"]["model"]``)."""
    for key in keys:
        if meta.get(key) not in (None, ""):
            return meta[key]
    for value in meta.values():
        if isinstance(value, dict):
            found = _meta_value(value, *keys)
            if found not in (None, ""):
                return found
    return None


def _layer_of(meta: dict) -> int:
    hookpoint = _meta_value(meta, "hookpoint", "hook_name", "hook_point")
    match = re.search(r"blocks\.(\d+)\.", str(hookpoint or ""))
    if match is None:
        raise ValueError(
            f"cannot tell the layer from the stats' hook point {hookpoint!r}: pass layer= (an int)"
        )
    return int(match.group(1))


def _jsonable(value: Any) -> Any:
    """``value`` with anything JSON cannot hold turned into a string."""
    return json.loads(json.dumps(value, default=str))


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())


def _check_replaceable(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    others = sorted(p.name for p in out.iterdir() if not _OWN_FILES.fullmatch(p.name))
    if others:
        raise FileExistsError(
            f"{out} holds files other than a Neuronpedia export ({', '.join(others[:5])}); "
            "not overwriting: pass a new or empty folder"
        )


def _replace(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out``; a previous export there is removed only after."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
