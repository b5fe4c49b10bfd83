"""Dictionaries: sets of feature directions behind one protocol, so that an SAE's features, the
MLP's neurons, principal and independent components and random directions are studied alike.

Every dictionary reads one store hook point and turns its rows into dense, non-negative feature
activations (a feature "fires" where its value is > 0); most can also say what one unit of each
feature adds to the residual stream, for logit effects and for matching features across
dictionaries (:func:`best_matches`).

* :class:`SAEDictionary`: an SAE of :mod:`workbench.sae`, any architecture; directions ``W_dec`` rows;
* :class:`NeuronDictionary`: the MLP's neurons at ``blocks.L.mlp.hook_post``; activation
  ``max(x, 0)``, direction the down projection's column for the neuron;
* :class:`PCADictionary`: principal components (streamed covariance), oriented to their heavy tail;
* :class:`ICADictionary`: FastICA (logcosh, symmetric) of the whitened activations, streamed;
* :class:`RandomDictionary`: random unit directions, a baseline.

The linear ones (PCA, ICA, random) encode ``relu((x - mean) @ encoder.T)``: each feature is one
side of a direction. A component's sign is chosen so that its positive side holds the heavy tail
(the projection's skew is positive), so ``relu`` keeps the interesting side; ``both_signs=True``
keeps both sides as two features, ``i`` and ``i + n`` (the negated one). Neurons of SiLU/GELU
MLPs can be negative too; their activation is the positive part, and ``both_signs`` adds the
negative parts likewise.

Residual directions: for hook points that are in the residual stream's basis (``hook_resid_pre``,
``hook_resid_post``, ``hook_mlp_out``) they are the decoder directions themselves; at
``mlp.hook_post`` they go through the MLP's down projection (:func:`down_projection`), which
needs the model (a :class:`NeuronDictionary` keeps its own copy). Unknown hook point names give
``None``.

A saved dictionary is a folder with ``dictionary.json`` and ``dictionary.safetensors``, each
written atomically; a saved SAE (``cfg.json`` + ``sae_weights.safetensors``, workbench's or
SAELens') loads as an :class:`SAEDictionary`. :func:`load_dictionary` reads either.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.files import write_atomic
from workbench.progress import progress_bar
from workbench.store import ActivationStore

if TYPE_CHECKING:
    from workbench.models import Model
    from workbench.sae import SAE

__all__ = [
    "Dictionary",
    "DictionaryError",
    "Firings",
    "ICADictionary",
    "Matches",
    "NeuronDictionary",
    "PCADictionary",
    "RandomDictionary",
    "SAEDictionary",
    "best_matches",
    "down_projection",
    "load_dictionary",
]

FORMAT = "workbench.dictionary"
VERSION = 1
CONFIG_FILENAME = "dictionary.json"
TENSORS_FILENAME = "dictionary.safetensors"

_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|mlp\.hook_post|hook_mlp_out|hook_resid_post)$")
_REFIT = "fit and save the dictionary again"


class DictionaryError(ValueError):
    """A dictionary that cannot be built, fitted, saved or loaded; the message says what to do."""


class Firings(NamedTuple):
    """A batch's non-zero feature activations, in row order."""

    rows: Int[Tensor, " e"]
    """Row of the batch."""
    features: Int[Tensor, " e"]
    """Feature that fires there."""
    values: Float[Tensor, " e"]
    """Its activation (> 0)."""


def firings_of(acts: Float[Tensor, "batch n_features"]) -> Firings:
    """The non-zero entries of dense activations."""
    rows, features = torch.nonzero(acts > 0, as_tuple=True)
    return Firings(rows, features, acts[rows, features].float())


@runtime_checkable
class Dictionary(Protocol):
    """What every dictionary offers (see the module docstring)."""

    kind: str
    """``"sae"``, ``"neurons"``, ``"pca"``, ``"ica"`` or ``"random"``."""
    hookpoint: str
    """The store hook point it reads, e.g. ``"blocks.15.hook_mlp_out"`` (``""`` if unknown)."""
    d_in: int
    """Width of the activations it reads."""
    n_features: int
    """Number of features."""

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch n_features"]:
        """Dense feature activations, >= 0, float32. Runs on :attr:`device` (the input is moved
        there; neurons, which hold no tensors, run where the input is)."""
        ...

    @property
    def device(self) -> torch.device:
        """Where :meth:`encode` runs; ``to(device)`` moves the dictionary."""
        ...

    def residual_directions(self, model: Model | None = None) -> Float[Tensor, "n_features d_model"] | None:
        """What one unit of each feature adds to the residual stream (direct path), on the CPU;
        None where the hook point is unknown."""
        ...

    def describe(self) -> dict:
        """JSON-able summary: kind, label, hookpoint, d_in, n_features, source, ..."""
        ...

    def title(self, feature: int) -> str:
        """A short name of one feature, e.g. ``"neuron 12"``, ``"PCA 3"``."""
        ...

    def save(self, path: str | os.PathLike) -> None:
        """Write the dictionary to the folder ``path``; :func:`load_dictionary` reads it back."""
        ...


# ---- hook points and the model ----------------------------------------------------------------
def _hook_kind(hookpoint: str) -> tuple[str | None, int | None]:
    match = _HOOK.match(hookpoint or "")
    return (match.group(2), int(match.group(1))) if match else (None, None)


def down_projection(model: Model | nn.Module, layer: int) -> Float[Tensor, "d_mlp d_model"]:
    """What one unit of each MLP neuron of block ``layer`` adds to the residual stream: row ``i``
    is the down projection's column ``W_out[:, i]`` (float32, CPU).

    Handles ``nn.Linear`` (weight ``[out, in]``) and GPT-2's ``Conv1D`` (weight ``[in, out]``).
    Where the MLP's output passes through a norm before the residual stream (Gemma 2), the
    norm's weight is applied, without its data-dependent scale
    (:func:`workbench.logit_effects.through_norm`).
    """
    from workbench import hookpoints

    hf = getattr(model, "hf", model)
    layout = hookpoints.layout_for(hf)
    blocks = hf.get_submodule(layout.blocks)
    if not 0 <= layer < len(blocks):
        raise DictionaryError(f"layer {layer} is out of range: the model has {len(blocks)} blocks")
    block = blocks[layer]
    proj = block.get_submodule(layout.down_proj)
    weight = proj.weight.detach().float().cpu()
    W_out = weight.T if isinstance(proj, nn.Linear) else weight
    if layout.mlp_out != layout.down_proj.rpartition(".")[0]:  # a norm after the MLP (Gemma 2)
        from workbench.logit_effects import through_norm

        W_out = through_norm(block.get_submodule(layout.mlp_out), W_out).cpu()
    return W_out.contiguous()


def _to_residual(directions: Tensor, hookpoint: str, model: Model | nn.Module | None, what: str) -> Tensor | None:
    """Directions in the hook point's basis -> the residual stream's (None for unknown hook points)."""
    kind, layer = _hook_kind(hookpoint)
    if kind is None:
        return None
    directions = directions.detach().float().cpu()
    if kind != "mlp.hook_post":
        return directions
    if model is None:
        raise DictionaryError(
            f"{what} reads {hookpoint}, the MLP's neurons: pass model= so that its directions can be "
            "mapped to the residual stream through the MLP's down projection"
        )
    W_out = down_projection(model, layer)
    if W_out.shape[0] != directions.shape[1]:
        raise DictionaryError(
            f"{what} has d_in={directions.shape[1]} but block {layer}'s MLP has {W_out.shape[0]} neurons: "
            "pass the model the dictionary was fitted on"
        )
    return directions @ W_out


def _only_hookpoint(store: ActivationStore, hookpoint: str | None) -> str:
    if hookpoint is None:
        if len(store.hookpoints) != 1:
            raise DictionaryError(f"the store holds several hook points; pass hookpoint= one of {sorted(store.hookpoints)}")
        return next(iter(store.hookpoints))
    store.d(hookpoint)  # a clear StoreError for a hook point the store lacks
    return hookpoint


def _rows(store: ActivationStore, hookpoint: str, *, batch_size: int, max_rows: int | None, dtype: torch.dtype,
          device: str | torch.device, bar: Any = None) -> Iterator[Tensor]:
    """The first ``max_rows`` rows (all if None) in store order, in batches, counted on ``bar``."""
    left = store.n_rows if max_rows is None else min(max_rows, store.n_rows)
    for batch in store.batches(hookpoint, batch_size=batch_size, shuffle=False, device=device, dtype=dtype):
        if left <= 0:
            break
        batch = batch[:left]
        left -= batch.shape[0]
        if bar is not None:
            bar.update(batch.shape[0])
        yield batch


def _n_rows(store: ActivationStore, max_rows: int | None) -> int:
    n = store.n_rows if max_rows is None else min(max_rows, store.n_rows)
    if n < 2:
        raise DictionaryError(f"fitting needs at least 2 rows; the store has {store.n_rows} (max_rows={max_rows})")
    return n


def _moments(store: ActivationStore, hookpoint: str, *, batch_size: int, max_rows: int | None,
             device: str | torch.device, progress: bool, desc: str) -> tuple[int, Tensor, Tensor]:
    """Row count, mean and covariance (float64, CPU) in one streamed pass. The sums are taken
    around the first batch's mean, which keeps them well conditioned for offset activations."""
    n = _n_rows(store, max_rows)
    d = store.d(hookpoint)
    shift = total = outer = None
    with progress_bar(total=n, desc=desc, unit="tok", unit_scale=True, disable=not progress) as bar:
        for batch in _rows(store, hookpoint, batch_size=batch_size, max_rows=max_rows, dtype=torch.float64,
                           device=device, bar=bar):
            if shift is None:
                shift = batch.mean(0)
                total = torch.zeros(d, dtype=torch.float64, device=device)
                outer = torch.zeros(d, d, dtype=torch.float64, device=device)
            centred = batch - shift
            total += centred.sum(0)
            outer += centred.T @ centred
    offset = total / n
    cov = outer / n - torch.outer(offset, offset)
    cov = (cov + cov.T) / 2
    return n, (shift + offset).cpu(), cov.cpu()


def _skew(store: ActivationStore, hookpoint: str, mean: Tensor, encoder: Tensor, *, batch_size: int,
          max_rows: int | None, device: str | torch.device, progress: bool, desc: str) -> Tensor:
    """Skew of each row of ``encoder``'s projection of the centred rows, in one streamed pass."""
    n = _n_rows(store, max_rows)
    mean32, enc32 = mean.float().to(device), encoder.float().to(device)
    sums = torch.zeros(3, encoder.shape[0], dtype=torch.float64, device=device)
    with progress_bar(total=n, desc=desc, unit="tok", unit_scale=True, disable=not progress) as bar:
        for batch in _rows(store, hookpoint, batch_size=batch_size, max_rows=max_rows, dtype=torch.float32,
                           device=device, bar=bar):
            p = ((batch - mean32) @ enc32.T).double()
            sums[0] += p.sum(0)
            sums[1] += p.square().sum(0)
            sums[2] += p.pow(3).sum(0)
    m1, m2, m3 = (sums / n).cpu()
    var = (m2 - m1.square()).clamp_min(1e-300)
    return (m3 - 3 * m1 * m2 + 2 * m1.pow(3)) / var.pow(1.5)


# ---- saving -------------------------------------------------------------------------------------
def _save_folder(path: str | os.PathLike, config: dict, tensors: dict[str, Tensor]) -> None:
    """Write ``dictionary.safetensors`` then ``dictionary.json``, each atomically, with a shared
    ``save_id`` so that a load notices files from two different saves."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DictionaryError(f"{path} is a file; pass a folder to save the dictionary in")
    path.mkdir(parents=True, exist_ok=True)
    save_id = uuid.uuid4().hex
    tensors = {k: v.detach().to("cpu", torch.float32).clone(memory_format=torch.contiguous_format)
               for k, v in tensors.items()}  # unshared, contiguous
    config = {"format": FORMAT, "version": VERSION, **config, "save_id": save_id,
              "tensors": {k: list(v.shape) for k, v in tensors.items()}}
    write_atomic(path / TENSORS_FILENAME, lambda tmp: save_file(tensors, str(tmp), metadata={"save_id": save_id}))
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    write_atomic(path / CONFIG_FILENAME, lambda tmp: tmp.write_text(text))


def _read_folder(path: Path) -> tuple[dict, dict[str, Tensor]]:
    """The config and tensors of a saved dictionary, checked against each other."""
    from safetensors import SafetensorError, safe_open

    cfg_file, tensors_file = path / CONFIG_FILENAME, path / TENSORS_FILENAME
    try:
        config = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DictionaryError(f"{cfg_file} is not valid JSON ({e}); the file is damaged: {_REFIT}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise DictionaryError(f"{cfg_file} is not a workbench dictionary config; pass a folder written by dictionary.save")
    if config.get("version") != VERSION:
        raise DictionaryError(f"{cfg_file} has format version {config.get('version')!r}; this workbench reads {VERSION}")
    missing = [k for k in ("kind", "hookpoint", "d_in", "n_features", "save_id", "tensors") if k not in config]
    if missing:
        raise DictionaryError(f"{cfg_file} lacks {', '.join(missing)}: {_REFIT}")
    if not tensors_file.is_file():
        raise DictionaryError(f"{tensors_file} is missing: the folder holds only the config; {_REFIT}")
    try:
        with safe_open(str(tensors_file), framework="pt") as f:
            save_id = (f.metadata() or {}).get("save_id")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError) as e:
        raise DictionaryError(f"{tensors_file} is truncated or damaged ({e}); {_REFIT}") from None
    if save_id != config["save_id"]:
        raise DictionaryError(
            f"{cfg_file} and {tensors_file} come from different saves (an interrupted save?); {_REFIT}"
        )
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    if shapes != config["tensors"]:
        raise DictionaryError(f"{tensors_file} holds tensors {shapes}, {cfg_file} lists {config['tensors']}; {_REFIT}")
    return config, tensors


def load_dictionary(path: str | os.PathLike, device: str = "cpu") -> Dictionary:
    """Load a folder written by a dictionary's ``save``, or an SAE folder (workbench's or SAELens'
    ``cfg.json`` + ``sae_weights.safetensors``) as an :class:`SAEDictionary`."""
    path = Path(path)
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise DictionaryError(f"no dictionary at {path}: it {what}; pass a folder written by dictionary.save or an SAE folder")
    if (path / CONFIG_FILENAME).is_file():
        config, tensors = _read_folder(path)
        classes: dict[str, type] = {"neurons": NeuronDictionary, "pca": PCADictionary, "ica": ICADictionary,
                                    "random": RandomDictionary}
        if config["kind"] not in classes:
            raise DictionaryError(f"{path / CONFIG_FILENAME}: unknown kind {config['kind']!r}; known: {', '.join(classes)}")
        dictionary = classes[config["kind"]]._from_saved(config, tensors, path)
        return dictionary.to(device)
    if (path / "cfg.json").is_file():
        return SAEDictionary.from_path(path, device=device)
    raise DictionaryError(
        f"no dictionary at {path}: it has neither {CONFIG_FILENAME} (a saved dictionary) nor cfg.json (a saved SAE)"
    )


# ---- SAE ----------------------------------------------------------------------------------------
class SAEDictionary:
    """The features of an SAE (any architecture of :mod:`workbench.sae`)."""

    kind: ClassVar[str] = "sae"

    def __init__(self, sae: SAE, hookpoint: str | None = None, source: str | None = None) -> None:
        self.sae = sae
        """The SAE; ``encode`` runs it without gradients."""
        self.hookpoint = sae.cfg.hook_name if hookpoint is None else hookpoint
        """Its hook point: ``hookpoint`` if given, else the SAE's ``cfg.hook_name``."""
        self.d_in = sae.cfg.d_in
        self.n_features = sae.cfg.d_sae
        self.source = source
        """The folder it was loaded from, if any."""

    @classmethod
    def from_path(cls, path: str | os.PathLike, device: str = "cpu") -> SAEDictionary:
        """Load an SAE folder (workbench's or SAELens'; see :meth:`workbench.sae.SAE.load`)."""
        from workbench.sae import SAE

        return cls(SAE.load(path, device=device), source=str(path))

    @torch.no_grad()
    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch n_features"]:
        """The SAE's ``feature_acts``, float32, on the SAE's device."""
        return self.sae.encode(x.to(self.sae.W_enc.device)).feature_acts.float()

    @torch.no_grad()
    def firings(self, x: Float[Tensor, "batch d_in"]) -> Firings:
        """Every activation > 0 as (row, feature, value), rows in order. For a TopK SAE straight
        from its k largest pre-activations, without the dense ``[batch, d_sae]`` tensor."""
        from workbench.sae import TopKSAE

        x = x.to(self.sae.W_enc.device)
        if type(self.sae) is TopKSAE:
            values, features, _ = self.sae._topk(x)
            fired = values > 0
            rows = torch.arange(len(x), device=x.device).unsqueeze(1).expand_as(features)
            return Firings(rows[fired], features[fired], values[fired].float())
        return firings_of(self.encode(x))

    def residual_directions(self, model: Model | None = None) -> Float[Tensor, "n_features d_model"] | None:
        """``W_dec`` rows, through the down projection at ``mlp.hook_post`` (needs ``model``)."""
        return _to_residual(self.sae.W_dec, self.hookpoint, model, "this SAE")

    def title(self, feature: int) -> str:
        return f"feature {feature}"

    def describe(self) -> dict:
        arch = self.sae.cfg.architecture
        return {"kind": self.kind, "label": f"{arch} SAE, {self.hookpoint or 'unknown hook point'}, {self.n_features} features",
                "hookpoint": self.hookpoint, "d_in": self.d_in, "n_features": self.n_features, "architecture": arch,
                "model": self.sae.cfg.model_name, "source": self.source}

    @property
    def device(self) -> torch.device:
        """Where ``encode`` runs (the SAE's parameters)."""
        return self.sae.W_enc.device

    def to(self, device: str | torch.device) -> SAEDictionary:
        """Move the SAE to ``device``; returns self."""
        self.sae.to(device)
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Save the SAE's folder (:meth:`workbench.sae.SAE.save`), with this hook point as its ``hook_name``."""
        cfg = self.sae.cfg
        self.sae.cfg = replace(cfg, hook_name=self.hookpoint)
        try:
            self.sae.save(path)
        finally:
            self.sae.cfg = cfg


# ---- neurons ------------------------------------------------------------------------------------
class NeuronDictionary:
    """The MLP's neurons at ``blocks.L.mlp.hook_post``: activation ``max(x_i, 0)`` (the positive
    part: SiLU/GELU neurons can be negative; ``both_signs`` adds ``max(-x_i, 0)`` as features
    ``d_mlp + i``), direction ``W_out[:, i]``. Holds the down projection it needs, so it
    saves and loads without the model. Build it with :meth:`from_model`."""

    kind: ClassVar[str] = "neurons"

    def __init__(self, hookpoint: str, W_out: Float[Tensor, "d_mlp d_model"], both_signs: bool = False,
                 info: dict | None = None) -> None:
        self.hookpoint = hookpoint
        self.W_out = W_out.detach().float().cpu()
        """Row ``i``: what one unit of neuron ``i`` adds to the residual stream."""
        self.both_signs = both_signs
        self.d_in = self.W_out.shape[0]
        self.n_features = self.d_in * (2 if both_signs else 1)
        self.info = dict(info or {})
        """Provenance (model name, layer), JSON-able."""

    @classmethod
    def from_model(cls, model: Model, layer: int, *, both_signs: bool = False) -> NeuronDictionary:
        """The neurons of block ``layer``'s MLP."""
        hookpoint = model.hookpoint(f"blocks.{layer}.mlp.hook_post").name  # a clear error for a bad layer
        return cls(hookpoint, down_projection(model, layer), both_signs, {"model": model.name, "layer": layer})

    @torch.no_grad()
    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch n_features"]:
        x = x.float()
        if x.shape[-1] != self.d_in:
            raise ValueError(f"expected inputs of width d_in={self.d_in}, got shape {tuple(x.shape)}")
        return (torch.cat([x, -x], dim=-1) if self.both_signs else x).clamp_min(0)

    def residual_directions(self, model: Model | None = None) -> Float[Tensor, "n_features d_model"]:
        """``W_out`` rows (negated copies too with ``both_signs``); ``model`` is not needed."""
        return torch.cat([self.W_out, -self.W_out]) if self.both_signs else self.W_out.clone()

    def title(self, feature: int) -> str:
        return f"neuron {feature}" if feature < self.d_in else f"neuron {feature - self.d_in} (negative part)"

    def describe(self) -> dict:
        signs = " (both signs)" if self.both_signs else ""
        return {"kind": self.kind, "label": f"MLP neurons{signs}, {self.hookpoint}, {self.n_features} features",
                "hookpoint": self.hookpoint, "d_in": self.d_in, "n_features": self.n_features,
                "both_signs": self.both_signs, "source": self.info.get("source"), **self.info}

    @property
    def device(self) -> torch.device:
        """Always the CPU: encoding needs no tensors of its own, it runs where the input is."""
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> NeuronDictionary:
        """Nothing to move; returns self."""
        return self

    def save(self, path: str | os.PathLike) -> None:
        _save_folder(path, {"kind": self.kind, "hookpoint": self.hookpoint, "d_in": self.d_in,
                            "n_features": self.n_features, "both_signs": self.both_signs,
                            "info": {k: v for k, v in self.info.items() if k != "source"}},
                     {"W_out": self.W_out})

    @classmethod
    def _from_saved(cls, config: dict, tensors: dict[str, Tensor], path: Path) -> NeuronDictionary:
        return cls(config["hookpoint"], tensors["W_out"], bool(config.get("both_signs")),
                   {**config.get("info", {}), "source": str(path)})


# ---- linear dictionaries: PCA, ICA, random ------------------------------------------------------
class _Linear:
    """``relu((x - mean) @ encoder.T)``, feature ``i`` adding ``decoder[i]`` to the hook point's
    activations; ``both_signs`` appends the negated features."""

    kind: ClassVar[str] = ""
    _name: ClassVar[str] = ""
    """How a feature's title starts, e.g. ``"PCA"`` in ``"PCA 3"``."""
    _label: ClassVar[str] = ""
    """What the dictionary is called in its label."""
    _extra: ClassVar[tuple[str, ...]] = ()
    """Names of further per-component tensors a subclass saves (e.g. explained variance)."""

    def __init__(self, hookpoint: str, encoder: Float[Tensor, "n d_in"], decoder: Float[Tensor, "n d_in"],
                 mean: Float[Tensor, " d_in"] | None = None, both_signs: bool = False, info: dict | None = None,
                 **extra: Tensor) -> None:
        if encoder.ndim != 2 or decoder.shape != encoder.shape:
            raise DictionaryError(f"encoder and decoder must both be [n, d_in], got {tuple(encoder.shape)} and {tuple(decoder.shape)}")
        self.hookpoint = hookpoint
        self.encoder = encoder.detach().float()
        """``[n, d_in]``: feature ``i``'s activation is ``relu((x - mean) . encoder[i])``."""
        self.decoder = decoder.detach().float()
        """``[n, d_in]``: what one unit of feature ``i`` adds to the activations."""
        d = self.encoder.shape[1]
        self.mean = torch.zeros(d) if mean is None else mean.detach().float()
        """``[d_in]``: subtracted before projecting."""
        self.both_signs = both_signs
        self.d_in = d
        self.n_features = self.encoder.shape[0] * (2 if both_signs else 1)
        self.info = dict(info or {})
        """How it was fitted (rows, iterations, ...), JSON-able."""
        for name in self._extra:
            setattr(self, name, extra[name].detach().float() if name in extra else None)

    @torch.no_grad()
    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch n_features"]:
        if x.shape[-1] != self.d_in:
            raise ValueError(f"expected inputs of width d_in={self.d_in}, got shape {tuple(x.shape)}")
        x = x.to(self.encoder.device, torch.float32)
        projected = (x - self.mean) @ self.encoder.T
        return (torch.cat([projected, -projected], dim=-1) if self.both_signs else projected).clamp_min(0)

    def directions(self) -> Float[Tensor, "n_features d_in"]:
        """Each feature's direction in the hook point's own basis (negated copies with ``both_signs``)."""
        return torch.cat([self.decoder, -self.decoder]) if self.both_signs else self.decoder.clone()

    def residual_directions(self, model: Model | None = None) -> Float[Tensor, "n_features d_model"] | None:
        """:meth:`directions`, through the down projection at ``mlp.hook_post`` (needs ``model``)."""
        return _to_residual(self.directions(), self.hookpoint, model, f"this {self._name} dictionary")

    def title(self, feature: int) -> str:
        n = self.encoder.shape[0]
        return f"{self._name} {feature}" if feature < n else f"{self._name} {feature - n} (negated)"

    def describe(self) -> dict:
        signs = " (both signs)" if self.both_signs else ""
        return {"kind": self.kind,
                "label": f"{self._label}{signs}, {self.hookpoint or 'unknown hook point'}, {self.n_features} features",
                "hookpoint": self.hookpoint, "d_in": self.d_in, "n_features": self.n_features,
                "both_signs": self.both_signs, "source": self.info.get("source"), **self.info}

    @property
    def device(self) -> torch.device:
        """Where ``encode`` runs (inputs are moved there)."""
        return self.encoder.device

    def to(self, device: str | torch.device) -> _Linear:
        """Move the encoder, decoder and mean to ``device``; returns self."""
        self.encoder, self.decoder, self.mean = (t.to(device) for t in (self.encoder, self.decoder, self.mean))
        return self

    def save(self, path: str | os.PathLike) -> None:
        tensors = {"encoder": self.encoder, "decoder": self.decoder, "mean": self.mean}
        tensors |= {name: getattr(self, name) for name in self._extra if getattr(self, name) is not None}
        info = {k: v for k, v in self.info.items() if k != "source"}
        _save_folder(path, {"kind": self.kind, "hookpoint": self.hookpoint, "d_in": self.d_in,
                            "n_features": self.n_features, "both_signs": self.both_signs, "info": info}, tensors)

    @classmethod
    def _build(cls, hookpoint: str, encoder: Tensor, decoder: Tensor, mean: Tensor | None, both_signs: bool,
               info: dict, **extra: Tensor):
        self = cls.__new__(cls)
        _Linear.__init__(self, hookpoint, encoder, decoder, mean, both_signs, info, **extra)
        return self

    @classmethod
    def _from_saved(cls, config: dict, tensors: dict[str, Tensor], path: Path):
        for name in ("encoder", "decoder", "mean"):
            if name not in tensors:
                raise DictionaryError(f"{path / TENSORS_FILENAME} lacks the tensor {name!r}; {_REFIT}")
        extra = {name: tensors[name] for name in cls._extra if name in tensors}
        self = cls._build(config["hookpoint"], tensors["encoder"], tensors["decoder"], tensors["mean"],
                          bool(config.get("both_signs")), {**config.get("info", {}), "source": str(path)}, **extra)
        if (self.d_in, self.n_features) != (config["d_in"], config["n_features"]):
            raise DictionaryError(
                f"{path / CONFIG_FILENAME} says d_in={config['d_in']}, n_features={config['n_features']}, the tensors "
                f"give {self.d_in}, {self.n_features}; {_REFIT}"
            )
        return self


def _orient(skew: Tensor, *rows: Tensor) -> tuple[Tensor, ...]:
    """Flip the rows whose projection has negative skew, so that the heavy tail is the positive side."""
    sign = torch.where(skew < 0, -1.0, 1.0)
    return (skew * sign, *(r * sign.to(r.dtype)[:, None] for r in rows))


class PCADictionary(_Linear):
    """Principal components of a hook point's activations, each oriented to its heavy tail.

    Fit with :meth:`fit`. Encoder and decoder are both the components (orthonormal rows).
    """

    kind = "pca"
    _name = _label = "PCA"
    _extra = ("explained_variance", "explained_variance_ratio", "skew")
    explained_variance: Float[Tensor, " n"]
    """Variance of the data along each component, descending."""
    explained_variance_ratio: Float[Tensor, " n"]
    """That variance as a fraction of the total variance (of all ``d_in`` directions)."""
    skew: Float[Tensor, " n"]
    """Skew of each (oriented) component's projection, >= 0."""

    @property
    def components(self) -> Float[Tensor, "n d_in"]:
        """The principal directions, unit rows, by explained variance."""
        return self.decoder

    @classmethod
    @torch.no_grad()
    def fit(cls, store: ActivationStore, hookpoint: str | None = None, n_components: int | None = None, *,
            batch_size: int = 8192, both_signs: bool = False, max_rows: int | None = None,
            device: str | torch.device = "cpu", progress: bool = True) -> PCADictionary:
        """Two streamed passes over the first ``max_rows`` rows (all if None): float64 mean and
        covariance, then (after the eigendecomposition) the third moments that orient each
        component.

        Args:
            store: The activations.
            hookpoint: Which of the store's hook points; may be omitted when it has one.
            n_components: Components kept, by explained variance; None keeps all ``d_in``.
            batch_size: Rows per streamed batch.
            both_signs: Keep both sides of each component (``2 * n_components`` features).
            max_rows: Fit on the first rows of the store only (store order).
            device: Where the passes run; the fitted dictionary is on the CPU.
            progress: Show a progress bar per pass.
        """
        hookpoint = _only_hookpoint(store, hookpoint)
        d = store.d(hookpoint)
        n_components = d if n_components is None else n_components
        if not 1 <= n_components <= d:
            raise DictionaryError(f"n_components must be in 1..d_in={d}, got {n_components}")
        n, mean, cov = _moments(store, hookpoint, batch_size=batch_size, max_rows=max_rows, device=device,
                                progress=progress, desc="PCA: covariance")
        variance, vectors = torch.linalg.eigh(cov)  # ascending
        variance, vectors = variance.flip(0).clamp_min(0), vectors.flip(1)
        total = float(variance.sum())
        components = vectors[:, :n_components].T.contiguous()  # (n, d)
        kept = variance[:n_components]
        skew = _skew(store, hookpoint, mean, components, batch_size=batch_size, max_rows=max_rows, device=device,
                     progress=progress, desc="PCA: orientation")
        skew, components = _orient(skew, components)
        ratio = kept / total if total > 0 else torch.zeros_like(kept)
        info = {"n_rows": n, "n_components": n_components, "variance_explained": float(ratio.sum())}
        return cls._build(hookpoint, components, components, mean, both_signs, info, explained_variance=kept,
                          explained_variance_ratio=ratio, skew=skew)


def _sym_decorrelate(W: Tensor) -> Tensor:
    """``(W W^T)^(-1/2) W``: the nearest matrix with orthonormal rows."""
    s, u = torch.linalg.eigh(W @ W.T)
    return (u * s.clamp_min(1e-300).rsqrt()) @ u.T @ W


class ICADictionary(_Linear):
    """Independent components (FastICA) of a hook point's activations, each oriented to its heavy tail.

    Fit with :meth:`fit`. ``decoder`` rows are the unit mixing directions (what a source adds
    to the activations); ``encoder`` rows are the unmixing rows scaled so that
    ``activation * decoder[i]`` is the source's contribution. Components are ordered by the
    variance they contribute (``||a_i||^2``).
    """

    kind = "ica"
    _name = _label = "ICA"
    _extra = ("scale", "skew")
    scale: Float[Tensor, " n"]
    """Each component's mixing-column norm: the standard deviation it contributes, descending."""
    skew: Float[Tensor, " n"]
    """Skew of each (oriented) component's projection, >= 0."""

    @classmethod
    @torch.no_grad()
    def fit(cls, store: ActivationStore, hookpoint: str | None = None, n_components: int | None = None, *,
            max_iter: int = 200, tol: float = 1e-4, seed: int = 0, max_rows: int | None = None,
            batch_size: int = 8192, both_signs: bool = False, device: str | torch.device = "cpu",
            progress: bool = True) -> ICADictionary:
        """FastICA (Hyvarinen 1999; the parallel algorithm of scikit-learn's ``FastICA`` with
        ``fun="logcosh"``, ``algorithm="parallel"``), streamed over the first ``max_rows`` rows.

        Whitening comes from the streamed covariance (the top ``n_components`` principal
        components, each scaled to unit variance; None keeps all directions of non-zero
        variance). Each fixed-point iteration is one streamed pass accumulating
        ``E[z g(W z)^T]`` and ``E[g'(W z)]`` in float64 (the products of a batch in float32),
        with ``g = tanh``; then ``W <- sym_decorrelate(E[g(Wz) z^T] - diag(E[g'(Wz)]) W)``.
        It stops when ``max |abs(diag(W_new W^T)) - 1| < tol`` or after ``max_iter`` passes
        (``info["converged"]`` says which). A last pass orients each component by its skew.
        On 2 CPU cores, a pass over 60k rows of width 576 took about 0.4 s at 64 components and
        2 s at 576; ``max_rows``, ``n_components`` and ``device`` bound the cost.

        Args:
            store: The activations.
            hookpoint: Which of the store's hook points; may be omitted when it has one.
            n_components: Independent components, found in the span of as many principal
                components; None: every direction of non-zero variance.
            max_iter: Most fixed-point passes.
            tol: Convergence threshold on the change of the unmixing rows.
            seed: Seed of the random initial unmixing matrix.
            max_rows: Fit on the first rows of the store only (store order).
            batch_size: Rows per streamed batch.
            both_signs: Keep both sides of each component (``2 * n_components`` features).
            device: Where the passes run; the fitted dictionary is on the CPU.
            progress: Show progress bars (one for the fixed-point passes).
        """
        hookpoint = _only_hookpoint(store, hookpoint)
        d = store.d(hookpoint)
        n, mean, cov = _moments(store, hookpoint, batch_size=batch_size, max_rows=max_rows, device=device,
                                progress=progress, desc="ICA: whitening")
        variance, vectors = torch.linalg.eigh(cov)
        variance, vectors = variance.flip(0), vectors.flip(1)
        rank = int((variance > variance[0].clamp_min(0) * 1e-10).sum()) if variance[0] > 0 else 0
        n_components = rank if n_components is None else n_components
        if not 1 <= n_components <= rank:
            raise DictionaryError(
                f"n_components must be in 1..{rank} (the rank of the data, of d_in={d}), got {n_components}"
            )
        sd = variance[:n_components].sqrt()
        whiten = vectors[:, :n_components].T / sd[:, None]  # (n, d): z = whiten (x - mean) has unit covariance
        generator = torch.Generator().manual_seed(seed)
        W = _sym_decorrelate(torch.randn(n_components, n_components, generator=generator, dtype=torch.float64))
        mean32, whiten32 = mean.float().to(device), whiten.float().to(device)
        converged, change, iterations = False, float("inf"), 0
        with progress_bar(total=max_iter, desc="ICA: fixed point", unit="pass", disable=not progress) as bar:
            for iterations in range(1, max_iter + 1):
                W32 = W.float().to(device)
                gz = torch.zeros(n_components, n_components, dtype=torch.float64, device=device)
                g_prime = torch.zeros(n_components, dtype=torch.float64, device=device)
                for batch in _rows(store, hookpoint, batch_size=batch_size, max_rows=max_rows, dtype=torch.float32,
                                   device=device):
                    z = (batch - mean32) @ whiten32.T  # (B, n)
                    g = torch.tanh(z @ W32.T)  # (B, n)
                    gz += (g.T @ z).double()
                    g_prime += (1 - g.square()).sum(0).double()
                W_new = _sym_decorrelate(gz.cpu() / n - (g_prime.cpu() / n)[:, None] * W)
                change = float(((W_new * W).sum(1).abs() - 1).abs().max())
                W = W_new
                bar.update(1)
                bar.set_postfix_str(f"change {change:.2e}")
                if change < tol:
                    converged = True
                    break
        unmixing = W @ whiten  # (n, d): sources s = unmixing (x - mean), unit variance
        mixing = (W * sd) @ vectors[:, :n_components].T  # (n, d): row i = a_i, x - mean ~ sum_i s_i a_i
        scale = mixing.norm(dim=1)
        order = scale.argsort(descending=True)
        scale, unmixing, mixing = scale[order], unmixing[order], mixing[order]
        encoder, decoder = unmixing * scale[:, None], mixing / scale[:, None]
        skew = _skew(store, hookpoint, mean, encoder, batch_size=batch_size, max_rows=max_rows, device=device,
                     progress=progress, desc="ICA: orientation")
        skew, encoder, decoder = _orient(skew, encoder, decoder)
        info = {"n_rows": n, "n_components": n_components, "iterations": iterations, "converged": converged,
                "final_change": change, "tol": tol, "max_iter": max_iter, "seed": seed}
        return cls._build(hookpoint, encoder, decoder, mean, both_signs, info, scale=scale, skew=skew)


class RandomDictionary(_Linear):
    """``n_features`` random unit directions (a baseline): ``relu((x - mean) @ D.T)``, ``D``
    drawn from a seeded Gaussian. ``mean`` is zero unless :meth:`fit_mean` sets it."""

    kind = "random"
    _name, _label = "random", "random directions"

    def __init__(self, d_in: int, n_features: int, seed: int = 0, hookpoint: str = "", *,
                 both_signs: bool = False) -> None:
        if d_in < 1 or n_features < 1:
            raise DictionaryError(f"need d_in >= 1 and n_features >= 1, got {d_in} and {n_features}")
        D = torch.randn(n_features, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        D = (D / D.norm(dim=1, keepdim=True)).float()
        super().__init__(hookpoint, D, D, None, both_signs, {"seed": seed, "mean_fitted": False})

    @torch.no_grad()
    def fit_mean(self, store: ActivationStore, *, batch_size: int = 8192, max_rows: int | None = None,
                 progress: bool = True) -> RandomDictionary:
        """Set ``mean`` to the store's mean activation (one streamed pass, float64 sums); returns self."""
        self.hookpoint = _only_hookpoint(store, self.hookpoint or None)
        if store.d(self.hookpoint) != self.d_in:
            raise DictionaryError(f"the store's {self.hookpoint} has width {store.d(self.hookpoint)}, not d_in={self.d_in}")
        n = _n_rows(store, max_rows)
        total = torch.zeros(self.d_in, dtype=torch.float64)
        with progress_bar(total=n, desc="random: mean", unit="tok", unit_scale=True, disable=not progress) as bar:
            for batch in _rows(store, self.hookpoint, batch_size=batch_size, max_rows=max_rows, dtype=torch.float64,
                               device="cpu", bar=bar):
                total += batch.sum(0)
        self.mean = (total / n).float().to(self.encoder.device)
        self.info.update(mean_fitted=True, n_rows=n)
        return self


# ---- matching features across dictionaries ----------------------------------------------------
class Matches(NamedTuple):
    """What :func:`best_matches` returns."""

    features: Int[Tensor, " m"]
    """The features of the first dictionary that were matched."""
    ids: Int[Tensor, "m k"]
    """For each, the second dictionary's ``k`` features of highest ``|cosine|``, best first."""
    cosines: Float[Tensor, "m k"]
    """Their (signed) cosines between residual directions."""


@torch.no_grad()
def best_matches(a: Dictionary, b: Dictionary, features: list[int] | Tensor | None = None, *, k: int = 1,
                 model: Model | None = None, batch: int = 1024) -> Matches:
    """For each of ``a``'s ``features`` (all if None), the ``k`` features of ``b`` whose residual
    directions have the highest ``|cosine|`` with its own, e.g. the neuron and the PCA direction
    that best match an SAE feature. ``model`` is needed for dictionaries at ``mlp.hook_post``."""
    directions = []
    for name, dictionary in (("a", a), ("b", b)):
        found = dictionary.residual_directions(model)
        if found is None:
            raise DictionaryError(
                f"dictionary {name} ({dictionary.describe()['label']}) has no residual directions: its hook point "
                f"{dictionary.hookpoint!r} is not a blocks.L.<kind> name; build it with one"
            )
        directions.append(torch.nn.functional.normalize(found.float(), dim=1))
    da, db = directions
    if da.shape[1] != db.shape[1]:
        raise DictionaryError(f"the dictionaries' residual directions differ in width: {da.shape[1]} and {db.shape[1]}")
    index = torch.arange(a.n_features) if features is None else torch.as_tensor(features, dtype=torch.long).reshape(-1)
    if index.numel() and (index.min() < 0 or index.max() >= a.n_features):
        raise DictionaryError(f"features must lie in 0..{a.n_features - 1}")
    k = min(k, b.n_features)
    ids = torch.empty(len(index), k, dtype=torch.long)
    cosines = torch.empty(len(index), k)
    for start in range(0, len(index), batch):
        cos = da[index[start:start + batch]] @ db.T  # (c, n_b)
        best = cos.abs().topk(k, dim=1).indices
        ids[start:start + batch] = best
        cosines[start:start + batch] = cos.gather(1, best)
    return Matches(index, ids, cosines)
