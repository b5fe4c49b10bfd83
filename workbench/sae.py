"""Sparse autoencoders: tensors in, tensors out, one small flat class per architecture.

Every SAE shares the SAELens vocabulary and orientation:
``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``.
``SAE.from_config(cfg)`` builds the class for ``cfg.architecture``:

=============  ==============================================================================
``relu``       ReLU SAE with an L1 penalty. ``relu_variant="towards_monosemanticity"``
               (Bricken et al. 2023): encodes ``x - b_dec``, unit-norm decoder rows, L1 on
               the activations. ``"april_update"`` (Anthropic, April 2024): encodes ``x``,
               free decoder norms, L1 weighted by decoder-row norms.
``topk``       Gao et al. 2024 / EleutherAI sparsify: ``ReLU(TopK(pre))``, unit-norm decoder,
               AuxK loss on dead latents, sparse (index) decoding and backward.
``batchtopk``  Bussmann et al. 2024: top ``k * B`` activations over the whole batch in
               training; a running global threshold for inference (saved as JumpReLU).
``jumprelu``   Rajamanoharan et al. 2024 (DeepMind): per-feature threshold ``exp(log_threshold)``,
               rectangle-kernel straight-through estimators, L0 penalty, unit-norm decoder.
``gated``      Rajamanoharan et al. 2024: gate and magnitude paths sharing ``W_enc``
               (``r_mag``, ``b_gate``, ``b_mag``), decoder-norm-weighted L1 on ``ReLU(pi_gate)``,
               an auxiliary reconstruction through a frozen decoder, unit-norm decoder.
``topafa``     Lee et al. 2025 (arXiv 2503.24277): per token, keep the features whose
               cumulative root-sum-square of ``(f_i ||W_dec_i||)^2`` lands closest to
               ``||x - b_dec||``; loss adds ``(||f||_2 - ||x||_2)^2`` and AuxK.
=============  ==============================================================================

Loss convention, for every architecture: ``mse = ((x_hat - x) ** 2).sum(-1).mean()`` (summed
over ``d_in``, averaged over the batch); every other loss term is in the same units.

A saved SAE is a folder with ``cfg.json`` and ``sae_weights.safetensors`` in the layout that
SAELens 6 reads with ``sae_lens.SAE.load_from_disk`` (topafa excepted: SAELens has no such
architecture). Workbench-only settings sit under the ``"workbench"`` key of ``cfg.json``, which
SAELens ignores. Loading never unpickles.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "BatchTopKSAE",
    "EncoderOutput",
    "ForwardOutput",
    "GatedSAE",
    "JumpReLUSAE",
    "ReLUSAE",
    "SAE",
    "SAEConfig",
    "SAEFormatError",
    "TopAFASAE",
    "TopKSAE",
    "TrainOutput",
]

Architecture = Literal["relu", "topk", "batchtopk", "jumprelu", "gated", "topafa"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
RELU_VARIANTS: tuple[str, ...] = ("towards_monosemanticity", "april_update")
CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# SAELens picks its cfg.json parser from metadata.sae_lens_version: "6.0.0" marks the layout
# written here as the SAELens 6 one. It says nothing about which library trained the SAE.
_SAELENS_FORMAT_VERSION = "6.0.0"


class SAEFormatError(ValueError):
    """A saved SAE folder that cannot be read: missing or truncated file, wrong shapes, unknown architecture."""


# ---- config ---------------------------------------------------------------------------------
@dataclass
class SAEConfig:
    """Everything needed to build an SAE. Flat; ``__post_init__`` only validates."""

    architecture: Architecture
    """One of ``ARCHITECTURES``: relu, topk, batchtopk, jumprelu, gated, topafa."""

    d_in: int
    """Width of the activations the SAE reads."""

    d_sae: int
    """Number of features (latents)."""

    k: int = 32
    """topk: active features per token. batchtopk: mean active features per token (k * B per batch)."""

    l1_coefficient: float = 5.0
    """Sparsity coefficient: the L1 weight for relu and gated (in workbench's units: inputs scaled to
    ``E ||x|| = sqrt(d_in)``, squared error summed over ``d_in``, as Anthropic's April update), the L0
    weight for jumprelu in DeepMind's units (inputs of unit mean squared norm, so the loss is
    ``||x - x_hat||^2 / d_in + l1_coefficient * L0`` there; multiplied by ``d_in`` inside)."""

    relu_variant: Literal["towards_monosemanticity", "april_update"] = "towards_monosemanticity"
    """relu only. ``towards_monosemanticity``: encode ``x - b_dec``, unit-norm decoder rows, L1 on f.
    ``april_update``: encode ``x``, free decoder norms, L1 on ``f_i * ||W_dec_i||``."""

    apply_b_dec_to_input: bool | None = None
    """Subtract ``b_dec`` from the input before encoding. None: the architecture's own choice
    (False for relu april_update and jumprelu, as in their papers; True otherwise)."""

    aux_k: int | None = None
    """AuxK: how many dead latents reconstruct the residual (topk, batchtopk, topafa).
    None: ``d_in // 2`` (Gao et al. 2024, appendix B.1)."""

    aux_coefficient: float = 1 / 32
    """Weight of the AuxK loss (Gao et al. 2024)."""

    afa_coefficient: float = 1 / 32
    """topafa: weight of the AFA loss ``(||f||_2 - ||x||_2)^2``. The reference code sweeps
    {1/128, 1/64, 1/32, 1/24, 1/16} for top-AFA (its generic default is 0, which turns the term
    off); 1/32 is the middle of that sweep. Scaled by ``d_in`` in the loss, because the
    reference averages its MSE over ``d_in`` where workbench sums it."""

    jumprelu_bandwidth: float = 0.001
    """jumprelu: width of the rectangle kernel in the straight-through estimators, in DeepMind's units
    (Rajamanoharan et al. 2024: 0.001 for inputs of unit mean squared norm). The trainer scales inputs
    to ``E ||x|| = sqrt(d_in)``, so the kernel used is ``jumprelu_bandwidth * sqrt(d_in)``."""

    jumprelu_init_threshold: float = 0.04
    """jumprelu: initial threshold of every feature, in the same units (used: ``* sqrt(d_in)``).
    DeepMind's 0.001 suits their runs of hundreds of thousands of steps: Adam moves the log-threshold
    by about the learning rate per step, so in workbench's default 1,168 steps at lr 2e-3 a threshold
    grows at most ~10x, and from 0.001 L0 stayed at 512. From 0.04 it reaches a sparse code (L0 17 at
    an L0 coefficient of 0.01); from 0.1, 31% of the features died (README, jumprelu)."""

    batchtopk_threshold_lr: float = 0.01
    """batchtopk: rate of the running mean of the batch's smallest kept activation, the
    inference threshold (SAELens' ``topk_threshold_lr``). The first training step sets it."""

    hook_name: str = ""
    """Where the activations come from (metadata, saved for SAELens)."""

    model_name: str = ""
    """The model the activations come from (metadata, saved for SAELens)."""

    dtype: str = "float32"
    """Parameter dtype: float32, float64, float16 or bfloat16."""

    device: str = "cpu"
    """Device the parameters are created on."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; known: {', '.join(ARCHITECTURES)}")
        for name in ("d_in", "d_sae", "k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.architecture in ("topk", "batchtopk") and self.k > self.d_sae:
            raise ValueError(f"k={self.k} is larger than d_sae={self.d_sae}")
        if self.relu_variant not in RELU_VARIANTS:
            raise ValueError(f"unknown relu_variant {self.relu_variant!r}; known: {', '.join(RELU_VARIANTS)}")
        if self.apply_b_dec_to_input is not None and not isinstance(self.apply_b_dec_to_input, bool):
            raise ValueError(f"apply_b_dec_to_input must be a bool or None, got {self.apply_b_dec_to_input!r}")
        if self.aux_k is not None and (
            isinstance(self.aux_k, bool) or not isinstance(self.aux_k, int) or self.aux_k < 1
        ):
            raise ValueError(f"aux_k must be None or a positive int, got {self.aux_k!r}")
        for name in ("l1_coefficient", "aux_coefficient", "afa_coefficient"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("jumprelu_bandwidth", "jumprelu_init_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (isinstance(self.batchtopk_threshold_lr, (int, float)) and 0 < self.batchtopk_threshold_lr <= 1):
            raise ValueError(f"batchtopk_threshold_lr must be in (0, 1], got {self.batchtopk_threshold_lr!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPES)}")
        if not isinstance(self.hook_name, str) or not isinstance(self.model_name, str):
            raise ValueError("hook_name and model_name must be strings")


# ---- outputs --------------------------------------------------------------------------------
class EncoderOutput(NamedTuple):
    """What ``SAE.encode`` returns."""

    feature_acts: Float[Tensor, "... d_sae"]
    """Feature activations, dense, zero where a feature is off."""

    pre_acts: Float[Tensor, "... d_sae"]
    """Encoder pre-activations ``sae_in @ W_enc + b_enc`` (gated: the gate pre-activation
    ``pi_gate``, positive exactly where a feature fires)."""


class ForwardOutput(NamedTuple):
    """What ``SAE.forward`` returns."""

    x_hat: Float[Tensor, "... d_in"]
    """Reconstruction of the input."""

    feature_acts: Float[Tensor, "... d_sae"]
    """Feature activations, dense."""


class TrainOutput(NamedTuple):
    """What ``SAE.training_forward`` returns. Only ``loss`` carries gradients."""

    loss: Float[Tensor, ""]
    """Total loss, differentiable: the sum of the terms named in ``type(sae).loss_terms``."""

    x_hat: Float[Tensor, "batch d_in"]
    """Reconstruction (detached)."""

    losses: dict[str, Tensor]
    """Detached scalars for logging. The loss terms (``"mse"`` always: squared error summed over
    ``d_in``, averaged over the batch; then e.g. ``"l1"``, ``"l0_penalty"``, ``"auxk"``, ``"afa"``,
    ``"aux_recon"``), each already weighted, so they add up to ``loss``; and metrics:
    ``"l0"`` (mean active features per token), ``"l0_std"`` (their spread over tokens), and
    for batchtopk ``"threshold"``."""

    fire_counts: Int[Tensor, " d_sae"]
    """On how many tokens of the batch each feature fired (int64), for dead-feature tracking.
    topk and batchtopk count it from the kept indices and never build the dense
    ``[batch, d_sae]`` activations; ``encode`` gives those (for batchtopk, inference's)."""


# ---- the base class -------------------------------------------------------------------------
class SAE(nn.Module):
    """Base sparse autoencoder. Build one with ``SAE.from_config(cfg)`` or ``SAE.load(path)``.

    Subclasses set ``architecture`` and ``loss_terms`` and implement ``_encode`` and
    ``_training_forward``; the base provides input checks, decoding, the decoder-norm
    constraint, scale folding and the folder format.
    """

    architecture: ClassVar[str] = ""
    loss_terms: ClassVar[tuple[str, ...]] = ("mse",)
    """Keys of ``TrainOutput.losses`` that add up to the total loss."""

    W_enc: nn.Parameter
    b_enc: nn.Parameter | None
    W_dec: nn.Parameter
    b_dec: nn.Parameter

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if cfg.architecture != self.architecture:
            raise ValueError(
                f"{type(self).__name__} needs architecture {self.architecture!r}, got {cfg.architecture!r}"
            )
        self.cfg = cfg
        kw = {"dtype": DTYPES[cfg.dtype], "device": cfg.device}
        # Random directions for the decoder rows, the encoder its transpose (Gao et al.;
        # Anthropic's April update, with row norm 0.1 there, since its decoder norms are free).
        W_dec = nn.init.kaiming_uniform_(torch.empty(cfg.d_sae, cfg.d_in, **kw))
        W_dec *= self._init_decoder_norm() / W_dec.norm(dim=1, keepdim=True)
        self.W_enc = nn.Parameter(W_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, **kw))
        self.trained: bool = False
        """False for a fresh initialisation; True once :func:`workbench.train.train` has trained it
        (the activation scale folded back in) and for every SAE read by :meth:`load`. ``train``
        initialises ``b_dec`` and the scale of a fresh SAE only; a trained one is fine-tuned from
        where it is. Saved in ``cfg.json`` (``"workbench_trained"``)."""

    @staticmethod
    def from_config(cfg: SAEConfig) -> SAE:
        """A freshly initialised SAE of the class for ``cfg.architecture``."""
        return _CLASSES[cfg.architecture](cfg)

    # -- properties of the architecture --
    def _init_decoder_norm(self) -> float:
        return 1.0

    @property
    def unit_norm_decoder(self) -> bool:
        """Whether training keeps the decoder rows at unit norm (see ``constrain_weights``)."""
        return True

    _default_apply_b_dec: ClassVar[bool] = True

    @property
    def apply_b_dec_to_input(self) -> bool:
        """Whether ``b_dec`` is subtracted from the input before encoding."""
        if self.cfg.apply_b_dec_to_input is not None:
            return self.cfg.apply_b_dec_to_input
        return self._default_apply_b_dec

    # -- forward --
    def _sae_in(self, x: Tensor) -> Tensor:
        x = x.to(self.W_enc.dtype)
        return x - self.b_dec if self.apply_b_dec_to_input else x

    def _pre_acts(self, x: Tensor) -> Tensor:
        return torch.addmm(self.b_enc, self._sae_in(x), self.W_enc)

    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"expected inputs of width d_in={self.cfg.d_in}, got shape {tuple(x.shape)}")

    def encode(self, x: Float[Tensor, "... d_in"]) -> EncoderOutput:
        """Feature activations (dense) and pre-activations for inputs ``x``."""
        self._check_input(x)
        lead = x.shape[:-1]
        acts, pre = self._encode(x.reshape(-1, self.cfg.d_in))
        return EncoderOutput(acts.reshape(*lead, -1), pre.reshape(*lead, -1))

    def _encode(self, x: Float[Tensor, "batch d_in"]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def decode(self, feature_acts: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """Reconstruction ``feature_acts @ W_dec + b_dec``."""
        return feature_acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "... d_in"]) -> ForwardOutput:
        """Encode then decode."""
        feature_acts = self.encode(x).feature_acts
        return ForwardOutput(self.decode(feature_acts), feature_acts)

    def training_forward(
        self,
        x: Float[Tensor, "batch d_in"],
        *,
        sparsity_scale: float = 1.0,
        dead_mask: Bool[Tensor, " d_sae"] | None = None,
    ) -> TrainOutput:
        """Loss and outputs for one training batch.

        ``sparsity_scale`` multiplies the sparsity coefficient (relu, gated, jumprelu; a trainer's
        warmup). ``dead_mask`` marks the latents AuxK should revive (topk, batchtopk, topafa;
        ignored by the others).
        """
        if x.ndim != 2 or x.shape[1] != self.cfg.d_in:
            raise ValueError(f"expected a batch of shape (batch, {self.cfg.d_in}), got {tuple(x.shape)}")
        if dead_mask is not None and dead_mask.shape != (self.cfg.d_sae,):
            raise ValueError(f"dead_mask must have shape ({self.cfg.d_sae},), got {tuple(dead_mask.shape)}")
        return self._training_forward(x.to(self.W_enc.dtype), float(sparsity_scale), dead_mask)

    def _training_forward(self, x: Tensor, sparsity_scale: float, dead_mask: Tensor | None) -> TrainOutput:
        raise NotImplementedError

    # -- shared loss helpers --
    @staticmethod
    def _mse(x_hat: Tensor, x: Tensor) -> Tensor:
        dtype = torch.promote_types(x_hat.dtype, torch.float32)  # half precision: sum in float32
        return (x_hat.to(dtype) - x.to(dtype)).pow(2).sum(-1).mean()

    def _auxk(self, pre: Tensor, x: Tensor, x_hat: Tensor, dead_mask: Tensor | None) -> Tensor:
        """AuxK (Gao et al. 2024, appendix A.2): the top ``aux_k`` dead latents (by pre-activation,
        ReLU'd) reconstruct the residual ``e = x - x_hat``, without ``b_dec``. The loss is

            aux_coefficient * min(n_dead / aux_k, 1) * mse(e_hat, e) * Var(x) / Var(e)

        with ``Var`` a batch's total variance (summed over ``d_in``, averaged over tokens; both
        detached). This keeps the paper's balance: OpenAI's reference (``sparse_autoencoder/
        train.py``) divides the main MSE by x's variance (``mse_scale``, a constant estimated
        once) and the AuxK MSE by the residual's (``normalized_mse``); in workbench's units,
        where ``mse`` is not normalised, that is the factor ``Var(x) / Var(e)``, about ``1 / FVU``
        (3-10x for FVUs of 0.1-0.3). ``min(n_dead / aux_k, 1)`` is sparsify's (the reference has
        none). The peers are weaker by that factor: sparsify divides AuxK by ``Var(x)``, like its
        FVU, and SAELens does not normalise it, so both keep it in the main loss's units. A batch
        whose residual has no variance gets no AuxK (0/0 in the reference, which maps it to 0)."""
        plan = self._aux_plan(dead_mask, pre)
        if plan is None:
            return x_hat.new_zeros(())
        aux_acts, aux_idx = _aux_select(pre, plan)
        return self._auxk_loss(_SparseDecode.apply(aux_acts, aux_idx, self.W_dec), plan.scale, x, x_hat)

    def _aux_plan(self, dead_mask: Tensor | None, like: Tensor) -> _AuxPlan | None:
        """Which latents AuxK may use and its loss scale; None when AuxK has nothing to do.

        Sync-free (see ``_SYNC_FREE``): the dead mask stays on the device, ``k`` is ``aux_k``
        whatever the number of dead latents, and the scale is a tensor. Otherwise the dead
        latents' indices are gathered (a host sync on CUDA) so that AuxK only looks at them."""
        if dead_mask is None or self.cfg.aux_coefficient == 0:
            return None
        aux_k = self.cfg.aux_k if self.cfg.aux_k is not None else max(self.cfg.d_in // 2, 1)
        dead = dead_mask.to(like.device)
        if _sync_free(like):
            scale = (dead.sum() / aux_k).clamp(max=1.0)
            return _AuxPlan(min(aux_k, self.cfg.d_sae), scale, None, dead)
        dead_idx = dead.nonzero().squeeze(1)
        n_dead = dead_idx.numel()
        if n_dead == 0:
            return None
        return _AuxPlan(min(aux_k, n_dead), min(n_dead / aux_k, 1.0), dead_idx, None)

    def _auxk_loss(self, e_hat: Tensor, scale: Tensor | float, x: Tensor, x_hat: Tensor) -> Tensor:
        """The AuxK loss (see ``_auxk``) from the dead latents' reconstruction ``e_hat``."""
        residual = (x - x_hat).detach()
        var_x, var_e = _total_variance(x.detach()), _total_variance(residual)
        ratio = torch.where(var_e > 0, var_x / var_e.clamp_min(torch.finfo(var_e.dtype).tiny), 0.0)
        return self.cfg.aux_coefficient * scale * ratio * self._mse(e_hat, residual)

    @staticmethod
    def _activity(feature_acts: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """L0 metrics and per-feature fire counts of dense feature activations."""
        with torch.no_grad():
            on = feature_acts != 0
            return _l0_metrics(on.sum(-1)), on.sum(0)

    # -- constraints and folding --
    @torch.no_grad()
    def constrain_gradients(self) -> None:
        """Remove from each decoder row's gradient its component along that row (call after
        ``backward``, before ``optimizer.step()``); a no-op where decoder norms are free."""
        if not self.unit_norm_decoder or self.W_dec.grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).tiny)
        parallel = (self.W_dec.grad * unit).sum(dim=1, keepdim=True)
        self.W_dec.grad.sub_(parallel * unit)

    @torch.no_grad()
    def constrain_weights(self, norms: Float[Tensor, " d_sae"] | None = None) -> None:
        """Renormalise decoder rows to unit norm, or to ``norms`` when given (call after
        ``optimizer.step()``); a no-op where decoder norms are free.

        The trainer passes ``norms`` when it fine-tunes a trained SAE: its rows then keep the norms
        they had when training started (``1 / scale`` after scale folding, anything for a SAELens
        SAE), so that training continues from the same function instead of rescaling its features.
        """
        if not self.unit_norm_decoder:
            return
        eps = torch.finfo(self.W_dec.dtype).eps
        if norms is None:
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True) + eps)
        else:
            self.W_dec.mul_(norms[:, None] / (self.W_dec.norm(dim=1, keepdim=True) + eps))

    @torch.no_grad()
    def fold_activation_scale(self, scale: float) -> None:
        """The SAE was trained on ``x * scale``: change the weights so that it takes raw ``x`` and
        returns raw-scale ``x_hat`` with the same feature activations.

        ``W_enc *= scale``, ``W_dec /= scale``, ``b_dec /= scale`` (as SAELens'
        ``fold_activation_norm_scaling_factor``). Pre-activations are unchanged, so thresholds
        and gated biases stay as they are. Decoder rows then have norm ``1 / scale``: fold once
        training is over, as a later ``constrain_weights`` would undo it.
        """
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    # -- saving and loading --
    def _saelens_architecture(self) -> str:
        return self.architecture

    def _saelens_tensors(self) -> dict[str, Tensor]:
        """Tensors under the names SAELens expects for ``_saelens_architecture()``."""
        return {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}

    def _saelens_cfg_extra(self) -> dict[str, Any]:
        return {}

    def _load_saelens_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of ``_saelens_tensors``: copy the (shape-checked) tensors into this SAE."""
        with torch.no_grad():
            for name, value in tensors.items():
                getattr(self, name).copy_(value)

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        d_in, d_sae = self.cfg.d_in, self.cfg.d_sae
        return {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}

    def save(self, path: str | os.PathLike) -> None:
        """Write ``cfg.json`` and ``sae_weights.safetensors`` into the folder ``path``, atomically:
        the files are written to a fresh sibling folder that then replaces ``path``. A folder
        at ``path`` holding anything else than a saved SAE is left alone (FileExistsError)."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.exists():
            if not path.is_dir():
                raise FileExistsError(f"{path} exists and is not a folder")
            others = sorted(p.name for p in path.iterdir() if p.name not in (CFG_FILENAME, WEIGHTS_FILENAME))
            if others:
                raise FileExistsError(
                    f"{path} holds files other than a saved SAE ({', '.join(others)}); not overwriting"
                )
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self._saelens_tensors().items()}
        cfg = {
            "architecture": self._saelens_architecture(),
            "d_in": self.cfg.d_in,
            "d_sae": self.cfg.d_sae,
            "dtype": self.cfg.dtype,
            "device": self.cfg.device,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "reshape_activations": "none",
            **self._saelens_cfg_extra(),
            "metadata": {
                "model_name": self.cfg.model_name,
                "hook_name": self.cfg.hook_name,
                "sae_lens_version": _SAELENS_FORMAT_VERSION,
                "sae_lens_training_version": None,
            },
            "workbench": asdict(self.cfg),
            "workbench_trained": self.trained,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            save_file(tensors, str(tmp / WEIGHTS_FILENAME), metadata={"format": "pt"})
            with open(tmp / CFG_FILENAME, "w") as f:
                json.dump(cfg, f, indent=2)
                f.write("\n")
            for name in (WEIGHTS_FILENAME, CFG_FILENAME):
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            if path.exists():
                old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old)
            else:
                tmp.rename(path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> SAE:
        """Load a folder written by ``SAE.save`` or by SAELens (``save_model``/``save_inference_model``
        and the cfg.json variants of older pretrained SAEs). Raises ``SAEFormatError``."""
        path = Path(path)
        cfg_path, weights_path = path / CFG_FILENAME, path / WEIGHTS_FILENAME
        for file in (cfg_path, weights_path):
            if not file.is_file():
                raise SAEFormatError(f"{path} is not a saved SAE: {file.name} is missing")
        try:
            raw = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SAEFormatError(f"{cfg_path} is not valid JSON: {e}") from e
        if not isinstance(raw, dict):
            raise SAEFormatError(f"{cfg_path} must hold a JSON object")
        cfg = _cfg_from_json(raw, device, cfg_path)
        tensors = _read_safetensors(weights_path)
        sae = SAE.from_config(cfg)
        tensors = _tensors_from_saelens(raw, cfg, tensors, weights_path)
        expected = sae._expected_shapes()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise SAEFormatError(
                f"{weights_path} does not match a {cfg.architecture} SAE: "
                + "; ".join(
                    ([f"missing tensors {missing}"] if missing else [])
                    + ([f"unexpected tensors {unexpected}"] if unexpected else [])
                )
            )
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise SAEFormatError(
                    f"{weights_path}: tensor {name} has shape {tuple(tensors[name].shape)} but the cfg "
                    f"(d_in={cfg.d_in}, d_sae={cfg.d_sae}) needs {shape}"
                )
        dtype = DTYPES[cfg.dtype]
        sae._load_saelens_tensors({k: v.to(device=cfg.device, dtype=dtype) for k, v in tensors.items()})
        if cls is not SAE and not isinstance(sae, cls):
            raise SAEFormatError(f"{path} holds a {cfg.architecture} SAE, not a {cls.__name__}")
        # Folders saved before the flag existed, and SAELens folders, hold trained SAEs.
        sae.trained = bool(raw.get("workbench_trained", True))
        return sae

    def extra_repr(self) -> str:
        return f"architecture={self.cfg.architecture!r}, d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}"


# ---- relu -----------------------------------------------------------------------------------
class ReLUSAE(SAE):
    """ReLU SAE with an L1 penalty (``relu_variant`` picks Towards Monosemanticity or the April update)."""

    architecture = "relu"
    loss_terms = ("mse", "l1")

    @property
    def _april(self) -> bool:
        return self.cfg.relu_variant == "april_update"

    def _init_decoder_norm(self) -> float:
        return 0.1 if self._april else 1.0

    @property
    def unit_norm_decoder(self) -> bool:
        return not self._april

    @property
    def _default_apply_b_dec(self) -> bool:  # type: ignore[override]
        return not self._april

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self._pre_acts(x)
        return F.relu(pre), pre

    def _training_forward(self, x, sparsity_scale, dead_mask) -> TrainOutput:
        f, _ = self._encode(x)
        x_hat = self.decode(f)
        mse = self._mse(x_hat, x)
        weighted = f * self.W_dec.norm(dim=1) if self._april else f
        l1 = self.cfg.l1_coefficient * sparsity_scale * weighted.sum(-1).mean()
        losses = {"mse": mse, "l1": l1}
        return _train_output(losses, x_hat, *self._activity(f))

    def _saelens_architecture(self) -> str:
        return "standard"


# ---- topk -----------------------------------------------------------------------------------
class _Bags(NamedTuple):
    """The entries of an index matrix grouped by latent, for ``_segment_sum``."""

    order: Tensor
    token: Tensor
    offsets: Tensor


def _bags(idx: Int[Tensor, "batch n"], n_out: int) -> _Bags:
    """Sort the (token, slot) entries of ``idx`` by latent: one bag of entries per latent."""
    width = idx.shape[1]
    latents, order = idx.reshape(-1).sort(stable=True)  # stable sort is the fast (radix) one on CPU
    # Where each latent's run starts in the sorted list (bincount would sync on CUDA).
    offsets = torch.searchsorted(latents, torch.arange(n_out, device=idx.device, dtype=latents.dtype))
    return _Bags(order, order.div(width, rounding_mode="floor"), offsets)


def _segment_sum(
    bags: _Bags, weights: Float[Tensor, "batch n"], rows: Float[Tensor, "batch d"]
) -> Float[Tensor, "n_out d"]:
    """``out[m] = sum over (b, j) with idx[b, j] == m of weights[b, j] * rows[b]``, without a
    dense [batch, n_out] matrix: one weighted embedding bag per latent."""
    w = weights.reshape(-1)[bags.order].to(rows.dtype)
    return F.embedding_bag(bags.token, rows, bags.offsets, mode="sum", per_sample_weights=w)


def _gather_dot(W: Float[Tensor, "m d"], idx: Int[Tensor, "batch n"], g: Float[Tensor, "batch d"]) -> Tensor:
    """``out[b, j] = g[b] . W[idx[b, j]]``: the gradient of ``embedding_bag``'s per-sample weights."""
    batch, width = idx.shape
    flat = idx.reshape(-1)
    offsets = torch.arange(0, batch * width, width, device=idx.device)
    bag = torch.arange(batch, device=idx.device)[:, None].expand(batch, width).reshape(-1)
    op = getattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward", None)
    if op is not None:
        return op(g.contiguous(), W, flat, offsets, bag, 0, -1).view(batch, width)
    out = torch.empty(batch, width, dtype=g.dtype, device=g.device)
    for start in range(0, batch, 256):  # fallback, in chunks to bound the [chunk, n, d] gather
        sl = slice(start, start + 256)
        out[sl] = torch.bmm(W[idx[sl]], g[sl, :, None]).squeeze(-1)
    return out


class _SparseDecode(torch.autograd.Function):
    """``out[b] = sum_j acts[b, j] W_dec[idx[b, j]]`` (no bias), with a backward that touches the
    selected rows only: grouped by latent for ``W_dec``, gathered for ``acts``. On CPU that is
    about twice as fast as ``embedding_bag``'s own backward, which goes through a dense pass."""

    @staticmethod
    def forward(ctx, acts: Tensor, idx: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(acts, idx, W_dec)
        ctx.mark_non_differentiable(idx)
        return F.embedding_bag(idx, W_dec, per_sample_weights=acts, mode="sum")

    @staticmethod
    def backward(ctx, g):
        acts, idx, W_dec = ctx.saved_tensors
        g = g.contiguous()
        grad_acts = _gather_dot(W_dec, idx, g) if ctx.needs_input_grad[0] else None
        grad_W_dec = _segment_sum(_bags(idx, W_dec.shape[0]), acts, g) if ctx.needs_input_grad[2] else None
        return grad_acts, None, grad_W_dec


class _TopKAutoencode(torch.autograd.Function):
    """x -> (x_hat, e_hat, top acts, top indices) with a sparse backward.

    The forward does the one dense matmul (pre-activations) and a top-k; decoding and every
    gradient go through the k selected latents per token only (as sparsify's fused encoder and
    embedding-bag decoder do), so a step costs about one dense matmul. With an AuxK ``plan``,
    ``e_hat`` is the AuxK reconstruction from the top dead latents (``_aux_select``), whose
    gradients take the same sparse path (else ``e_hat`` is empty). No host syncs (given a
    sync-free plan).
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, k: int, subtract_b_dec: bool, plan: _AuxPlan | None, scratch):
        sae_in = x - b_dec if subtract_b_dec else x
        pre = torch.addmm(b_enc, sae_in, W_enc, out=scratch)  # (B, d_sae); scratch: None or reused memory
        vals, idx = pre.topk(k, dim=1, sorted=False)  # (B, k)
        acts = vals.clamp_min(0)
        x_hat = F.embedding_bag(idx, W_dec, per_sample_weights=acts, mode="sum") + b_dec
        if plan is not None:
            aux_acts, aux_idx = _aux_select(pre, plan)  # (B, k_aux)
            e_hat = F.embedding_bag(aux_idx, W_dec, per_sample_weights=aux_acts, mode="sum")
        else:
            aux_acts, aux_idx = acts.new_empty(acts.shape[0], 0), idx.new_empty(idx.shape[0], 0)
            e_hat = x_hat.new_empty(0)
            ctx.mark_non_differentiable(e_hat)
        del pre
        ctx.subtract_b_dec = subtract_b_dec
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(sae_in, W_enc, W_dec, idx, acts, aux_idx, aux_acts)
        ctx.mark_non_differentiable(idx)
        return x_hat, e_hat, acts, idx

    @staticmethod
    def backward(ctx, g_x_hat, g_e_hat, g_acts, _g_idx):
        sae_in, W_enc, W_dec, idx, acts, aux_idx, aux_acts = ctx.saved_tensors
        d_sae = W_dec.shape[0]
        need = ctx.needs_input_grad
        grad_x = grad_W_enc = grad_b_enc = grad_W_dec = grad_b_dec = None
        if g_x_hat is None:
            g_x_hat = torch.zeros(sae_in.shape, dtype=W_dec.dtype, device=W_dec.device)
        g_x_hat = g_x_hat.contiguous()
        # Decoder: x_hat[b] = sum_j acts[b, j] W_dec[idx[b, j]] + b_dec.
        g = _gather_dot(W_dec, idx, g_x_hat)  # d x_hat / d acts, (B, k)
        if g_acts is not None:
            g = g + g_acts
        bags = _bags(idx, d_sae)
        if need[3]:
            grad_W_dec = _segment_sum(bags, acts, g_x_hat)
        # Encoder, through the ReLU on the kept pre-activations.
        g = g * (acts > 0)
        if need[1]:
            grad_W_enc_T = _segment_sum(bags, g, sae_in)
        all_idx, all_g = idx, g
        if aux_idx.shape[1] > 0 and g_e_hat is not None:
            # AuxK: e_hat[b] = sum_j aux_acts[b, j] W_dec[aux_idx[b, j]], the same two ways.
            g_e_hat = g_e_hat.contiguous()
            g_aux = _gather_dot(W_dec, aux_idx, g_e_hat) * (aux_acts > 0)
            aux_bags = _bags(aux_idx, d_sae)
            if need[3]:
                grad_W_dec += _segment_sum(aux_bags, aux_acts, g_e_hat)
            if need[1]:
                grad_W_enc_T += _segment_sum(aux_bags, g_aux, sae_in)
            all_idx, all_g = torch.cat([idx, aux_idx], dim=1), torch.cat([g, g_aux], dim=1)
        if need[1]:
            grad_W_enc = grad_W_enc_T.T
        g_pre_sum = torch.zeros(d_sae, dtype=all_g.dtype, device=all_g.device)
        g_pre_sum.index_add_(0, all_idx.reshape(-1), all_g.reshape(-1))  # d loss / d b_enc
        if need[2]:
            grad_b_enc = g_pre_sum
        if need[0]:  # rarely: only when the input itself requires grad
            W_enc_rows = W_enc.T.contiguous()
            grad_x = F.embedding_bag(all_idx, W_enc_rows, per_sample_weights=all_g.to(W_enc.dtype), mode="sum")
        if need[4]:
            grad_b_dec = g_x_hat.sum(0)
            if ctx.subtract_b_dec:
                grad_b_dec = grad_b_dec - W_enc @ g_pre_sum
        return grad_x, grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec, None, None, None, None


class TopKSAE(SAE):
    """TopK SAE (Gao et al. 2024), trained as in EleutherAI's sparsify: ``ReLU(TopK(pre))``,
    unit-norm decoder rows, AuxK on dead latents, decoding through the k indices."""

    architecture = "topk"
    loss_terms = ("mse", "auxk")

    _scratch: Tensor | None = None

    def _pre_scratch(self, x: Tensor) -> Tensor | None:
        """On CPU, memory for the training step's ``[batch, d_sae]`` pre-activations, kept from
        step to step: a fresh tensor that large (beyond glibc's 32 MB mmap threshold) costs page
        faults on every step, 5-10% of it. None on CUDA, whose caching allocator does this."""
        if x.is_cuda:
            return None
        shape = (x.shape[0], self.cfg.d_sae)
        scratch = self._scratch
        if scratch is None or scratch.shape != shape or scratch.dtype != x.dtype or scratch.device != x.device:
            self._scratch = scratch = torch.empty(shape, dtype=x.dtype, device=x.device)
        return scratch

    def _topk(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pre = self._pre_acts(x)
        vals, idx = pre.topk(self.cfg.k, dim=1, sorted=False)
        return vals.clamp_min(0), idx, pre

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        acts, idx, pre = self._topk(x)
        return torch.zeros_like(pre).scatter_(1, idx, acts), pre

    def forward(self, x: Float[Tensor, "... d_in"]) -> ForwardOutput:
        self._check_input(x)
        lead = x.shape[:-1]
        acts, idx, pre = self._topk(x.reshape(-1, self.cfg.d_in))
        x_hat = F.embedding_bag(idx, self.W_dec, per_sample_weights=acts, mode="sum") + self.b_dec
        feature_acts = torch.zeros_like(pre).scatter_(1, idx, acts)
        return ForwardOutput(x_hat.reshape(*lead, -1), feature_acts.reshape(*lead, -1))

    def _training_forward(self, x, sparsity_scale, dead_mask) -> TrainOutput:
        plan = self._aux_plan(dead_mask, x)
        x_hat, e_hat, acts, idx = _TopKAutoencode.apply(
            x, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.cfg.k, self.apply_b_dec_to_input, plan,
            self._pre_scratch(x),
        )
        mse = self._mse(x_hat, x)
        auxk = self._auxk_loss(e_hat, plan.scale, x, x_hat) if plan is not None else mse.new_zeros(())
        with torch.no_grad():
            on = acts > 0  # (B, k): ReLU-zeroed picks do not fire
            fire_counts = torch.zeros(self.cfg.d_sae, dtype=torch.long, device=idx.device)
            fire_counts.index_add_(0, idx.reshape(-1), on.reshape(-1).long())
        return _train_output({"mse": mse, "auxk": auxk}, x_hat, _l0_metrics(on.sum(1)), fire_counts)

    def _saelens_cfg_extra(self) -> dict[str, Any]:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}


# ---- batchtopk ------------------------------------------------------------------------------
class BatchTopKSAE(SAE):
    """BatchTopK SAE (Bussmann et al. 2024): the top ``k * B`` ReLU activations of the whole
    batch in training; at inference a feature fires where its activation exceeds ``threshold``,
    a running mean of the smallest activation kept per training batch. Saved as JumpReLU."""

    architecture = "batchtopk"
    loss_terms = ("mse", "auxk")

    threshold: Tensor

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        # -1: not estimated yet (encode then keeps every positive activation).
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=DTYPES[cfg.dtype], device=cfg.device))

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self._pre_acts(x)
        return F.relu(pre) * (pre > self.threshold), pre

    def _training_forward(self, x, sparsity_scale, dead_mask) -> TrainOutput:
        batch, d_sae = x.shape[0], self.cfg.d_sae
        pre = self._pre_acts(x)
        top = F.relu(pre).flatten().topk(self.cfg.k * batch, sorted=False)
        # Decode the kept entries per token with an embedding bag (row-sorted), not a dense matmul.
        flat_idx, order = top.indices.sort(stable=True)
        rows = flat_idx.div(d_sae, rounding_mode="floor")
        cols = flat_idx - rows * d_sae
        token_starts = torch.arange(0, batch * d_sae, d_sae, device=flat_idx.device, dtype=flat_idx.dtype)
        offsets = torch.searchsorted(flat_idx, token_starts)  # each token's first entry, without a sync
        kept = top.values[order]
        x_hat = F.embedding_bag(cols, self.W_dec, offsets, mode="sum", per_sample_weights=kept) + self.b_dec
        mse = self._mse(x_hat, x)
        auxk = self._auxk(pre, x, x_hat, dead_mask)
        with torch.no_grad():
            self._update_threshold(kept)
            on = kept > 0
            l0 = torch.zeros(batch, dtype=torch.long, device=rows.device).index_add_(0, rows, on.long())
            fire_counts = torch.zeros(d_sae, dtype=torch.long, device=cols.device).index_add_(0, cols, on.long())
            metrics = {**_l0_metrics(l0), "threshold": self.threshold.clone()}
        return _train_output({"mse": mse, "auxk": auxk}, x_hat, metrics, fire_counts)

    @torch.no_grad()
    def _update_threshold(self, kept: Tensor) -> None:
        """Set the threshold to the smallest positive kept activation on the first step, then
        move it towards it by ``batchtopk_threshold_lr``; unchanged when nothing positive was
        kept. Tensor ops only: no host sync."""
        smallest = torch.where(kept > 0, kept, math.inf).amin().to(self.threshold.dtype)
        lr = self.cfg.batchtopk_threshold_lr
        moved = torch.where(self.threshold < 0, smallest, self.threshold * (1 - lr) + lr * smallest)
        self.threshold.copy_(torch.where(torch.isfinite(smallest), moved, self.threshold))

    def _saelens_architecture(self) -> str:
        return "jumprelu"

    def _saelens_tensors(self) -> dict[str, Tensor]:
        threshold = self.threshold.clamp_min(0).expand(self.cfg.d_sae)
        return {**super()._saelens_tensors(), "threshold": threshold}

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {**super()._expected_shapes(), "threshold": (self.cfg.d_sae,)}

    def _load_saelens_tensors(self, tensors: dict[str, Tensor]) -> None:
        tensors = dict(tensors)
        threshold = tensors.pop("threshold")
        if threshold.numel() and not torch.equal(threshold, threshold[:1].expand_as(threshold)):
            raise SAEFormatError("a batchtopk SAE needs one threshold shared by every feature; the file has several")
        super()._load_saelens_tensors(tensors)
        with torch.no_grad():
            self.threshold.copy_(threshold[0])


# ---- jumprelu -------------------------------------------------------------------------------
def _rectangle(z: Tensor) -> Tensor:
    return ((z > -0.5) & (z < 0.5)).to(z.dtype)


class _JumpReLU(torch.autograd.Function):
    """``z * (z > threshold)``; threshold gradient by the rectangle-kernel STE (Rajamanoharan et al. 2024)."""

    @staticmethod
    def forward(ctx, z, threshold, bandwidth: float):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold)

    @staticmethod
    def backward(ctx, grad):
        z, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_z = (z > threshold) * grad
        grad_threshold = (-(threshold / bw) * _rectangle((z - threshold) / bw) * grad).sum(0)
        return grad_z, grad_threshold, None


class _Step(torch.autograd.Function):
    """``(z > threshold)``; threshold gradient by the rectangle-kernel STE, none to ``z``."""

    @staticmethod
    def forward(ctx, z, threshold, bandwidth: float):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_threshold = (-(1.0 / bw) * _rectangle((z - threshold) / bw) * grad).sum(0)
        return None, grad_threshold, None


class JumpReLUSAE(SAE):
    """JumpReLU SAE (Rajamanoharan et al. 2024): ``f = pre * (pre > exp(log_threshold))`` on
    ``pre = ReLU(x @ W_enc + b_enc)``, trained with an L0 penalty through straight-through
    estimators; decoder rows kept at unit norm.

    DeepMind's hyper-parameters (bandwidth and initial threshold 0.001, the L0 coefficient) are for
    inputs of unit mean squared norm; workbench's inputs have ``E ||x|| = sqrt(d_in)``, so
    pre-activations are ``sqrt(d_in)`` times larger and the summed squared error ``d_in`` times
    larger. The config keeps DeepMind's units and the SAE scales them: bandwidth and initial
    threshold by ``sqrt(d_in)``, the L0 coefficient by ``d_in``."""

    architecture = "jumprelu"
    loss_terms = ("mse", "l0_penalty")
    _default_apply_b_dec = False

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(
            torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold * math.sqrt(cfg.d_in)),
                       dtype=DTYPES[cfg.dtype], device=cfg.device)
        )

    @property
    def threshold(self) -> Float[Tensor, " d_sae"]:
        """Per-feature threshold ``exp(log_threshold)``."""
        return self.log_threshold.exp()

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self._pre_acts(x)
        return F.relu(pre) * (pre > self.threshold), pre

    def _training_forward(self, x, sparsity_scale, dead_mask) -> TrainOutput:
        z = F.relu(self._pre_acts(x))
        threshold = self.threshold
        bw = self.cfg.jumprelu_bandwidth * math.sqrt(self.cfg.d_in)
        f = _JumpReLU.apply(z, threshold, bw)
        x_hat = self.decode(f)
        mse = self._mse(x_hat, x)
        l0 = _Step.apply(z, threshold, bw).sum(-1).mean()
        penalty = self.cfg.l1_coefficient * self.cfg.d_in * sparsity_scale * l0
        return _train_output({"mse": mse, "l0_penalty": penalty}, x_hat, *self._activity(f))

    def _saelens_tensors(self) -> dict[str, Tensor]:
        return {**super()._saelens_tensors(), "threshold": self.threshold}

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {**super()._expected_shapes(), "threshold": (self.cfg.d_sae,)}

    def _load_saelens_tensors(self, tensors: dict[str, Tensor]) -> None:
        tensors = dict(tensors)
        # SAELens' JumpReLU is ReLU(pre) * (pre > threshold): a negative threshold acts as 0.
        threshold = tensors.pop("threshold").clamp_min(0)
        super()._load_saelens_tensors(tensors)
        with torch.no_grad():
            self.log_threshold.copy_(threshold.log())


# ---- gated ----------------------------------------------------------------------------------
class GatedSAE(SAE):
    """Gated SAE (Rajamanoharan et al. 2024). ``pi_gate = sae_in @ W_enc + b_gate`` decides which
    features fire, ``pi_mag = sae_in @ (W_enc * exp(r_mag)) + b_mag`` how strongly. Loss: MSE,
    ``l1_coefficient * sum_i ReLU(pi_gate)_i ||W_dec_i||`` and the reconstruction of ``x`` from
    ``ReLU(pi_gate)`` through a frozen (detached) decoder. ``b_enc`` is None (as in SAELens).

    Decoder rows are kept at unit norm, as dictionary_learning's gated trainer does (SAELens
    leaves them free and relies on the norm weighting alone; on the synthetic recovery
    test that lets the gate drift until every feature fires). With unit rows the norm weighting
    is 1, but it keeps the penalty right for a loaded SAE whose rows are not unit norm."""

    architecture = "gated"
    loss_terms = ("mse", "l1", "aux_recon")

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        kw = {"dtype": DTYPES[cfg.dtype], "device": cfg.device}
        del self.b_enc
        self.b_enc = None
        self.b_gate = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae, **kw))

    def _gate_and_magnitude(self, x: Tensor) -> tuple[Tensor, Tensor]:
        sae_in = self._sae_in(x)
        # Two matmuls, in SAELens' order, so that outputs agree with it to rounding.
        pi_gate = torch.addmm(self.b_gate, sae_in, self.W_enc)
        pi_mag = torch.addmm(self.b_mag, sae_in, self.W_enc * self.r_mag.exp())
        return pi_gate, pi_mag

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pi_gate, pi_mag = self._gate_and_magnitude(x)
        return (pi_gate > 0) * F.relu(pi_mag), pi_gate

    def _training_forward(self, x, sparsity_scale, dead_mask) -> TrainOutput:
        pi_gate, pi_mag = self._gate_and_magnitude(x)
        f = (pi_gate > 0) * F.relu(pi_mag)
        x_hat = self.decode(f)
        mse = self._mse(x_hat, x)
        f_gate = F.relu(pi_gate)
        l1 = self.cfg.l1_coefficient * sparsity_scale * (f_gate * self.W_dec.norm(dim=1)).sum(-1).mean()
        x_hat_frozen = f_gate @ self.W_dec.detach() + self.b_dec.detach()
        aux_recon = self._mse(x_hat_frozen, x)
        losses = {"mse": mse, "l1": l1, "aux_recon": aux_recon}
        return _train_output(losses, x_hat, *self._activity(f))

    def _saelens_tensors(self) -> dict[str, Tensor]:
        return {
            "W_enc": self.W_enc, "W_dec": self.W_dec, "b_dec": self.b_dec,
            "b_gate": self.b_gate, "b_mag": self.b_mag, "r_mag": self.r_mag,
        }  # fmt: skip

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        d_in, d_sae = self.cfg.d_in, self.cfg.d_sae
        return {
            "W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
            "b_gate": (d_sae,), "b_mag": (d_sae,), "r_mag": (d_sae,),
        }  # fmt: skip


# ---- top-AFA --------------------------------------------------------------------------------
class TopAFASAE(SAE):
    """Top-AFA SAE (Lee et al. 2025, "Evaluating and Designing Sparse Autoencoders by
    Approximating Quasi-Orthogonality", arXiv 2503.24277), following its reference code.

    Per token, features are ranked by ``(f_i ||W_dec_i||)^2``; the kept ones are the first
    ``k`` whose cumulative root-sum-square is closest to the approximate feature activation
    ``||x - b_dec||_2`` (``k`` varies per token, at least 1, never all of ``d_sae``). Loss:
    ``mse + afa_coefficient * d_in * mean((||f||_2 - ||x||_2)^2) + AuxK``; the ``d_in`` keeps the
    reference's balance, whose MSE is a mean over ``d_in``. Decoder rows kept at unit norm.

    As in the reference (``TopAFASAE.forward`` in SewoongLee/top-afa-sae ``training/sae.py``) the
    encoder has no bias: ``pre = (x - b_dec) @ W_enc``, and ``b_enc`` is None. Folders saved by
    older workbench versions with a zero ``b_enc`` still load; a non-zero one is refused.
    """

    architecture = "topafa"
    loss_terms = ("mse", "afa", "auxk")

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        del self.b_enc
        self.b_enc = None

    def _pre_acts(self, x: Tensor) -> Tensor:
        return self._sae_in(x) @ self.W_enc

    def _saelens_tensors(self) -> dict[str, Tensor]:
        return {"W_enc": self.W_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = super()._expected_shapes()
        del shapes["b_enc"]
        return shapes

    @torch.no_grad()
    def _afa_mask(self, acts: Tensor, x: Tensor) -> Tensor:
        target = (x - self.b_dec).norm(dim=-1, keepdim=True)  # (B, 1)
        scores = (acts * self.W_dec.norm(dim=1)).pow(2)
        sorted_scores, order = scores.sort(dim=1, descending=True)
        cumulative = sorted_scores.cumsum(dim=1).sqrt()
        cumulative[:, -1] = math.inf  # as the reference's 1e8 sentinel: never keep every feature
        k = (cumulative - target).abs().argmin(dim=1, keepdim=True) + 1  # (B, 1)
        keep_sorted = torch.arange(acts.shape[1], device=acts.device) < k
        return torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self._pre_acts(x)
        acts = F.relu(pre)
        return acts * self._afa_mask(acts, x.to(acts.dtype)), pre

    def _training_forward(self, x, sparsity_scale, dead_mask) -> TrainOutput:
        pre = self._pre_acts(x)
        acts = F.relu(pre)
        f = acts * self._afa_mask(acts, x)
        x_hat = self.decode(f)
        mse = self._mse(x_hat, x)
        gap = torch.linalg.vector_norm(f, dim=-1) - torch.linalg.vector_norm(x, dim=-1)
        afa = self.cfg.afa_coefficient * self.cfg.d_in * gap.pow(2).mean()
        auxk = self._auxk(pre, x, x_hat, dead_mask)
        return _train_output({"mse": mse, "afa": afa, "auxk": auxk}, x_hat, *self._activity(f))


# ---- helpers --------------------------------------------------------------------------------
_CLASSES: dict[str, type[SAE]] = {
    "relu": ReLUSAE,
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "jumprelu": JumpReLUSAE,
    "gated": GatedSAE,
    "topafa": TopAFASAE,
}


_SYNC_FREE: bool | None = None
"""Whether training steps avoid host synchronisations (no ``nonzero``, ``bincount``, boolean
indexing or ``.item()``), so that the host can queue work ahead of the device. Every step is
written that way except AuxK, which on CPU, where a sync costs nothing, keeps a much cheaper path
that first gathers the dead latents' columns. None: sync-free on CUDA only; True or False force
it (tests force True on CPU)."""


def _sync_free(x: Tensor) -> bool:
    return x.is_cuda if _SYNC_FREE is None else _SYNC_FREE


class _AuxPlan(NamedTuple):
    """Which latents AuxK may use, in one of two forms, and its loss scale."""

    k: int
    """Latents AuxK keeps per token."""
    scale: Tensor | float
    """``min(n_dead / aux_k, 1)``: a tensor when sync-free, else a float."""
    dead_idx: Tensor | None
    """Indices of the dead latents (the path with a sync), or None."""
    dead: Tensor | None
    """The dead mask (the sync-free path), or None."""


def _aux_select(
    pre: Float[Tensor, "batch d_sae"], plan: _AuxPlan
) -> tuple[Float[Tensor, "batch k_aux"], Int[Tensor, "batch k_aux"]]:
    """The ``plan.k`` largest dead pre-activations of each token, ReLU'd, and their latents.
    Sync-free, live latents are masked to -inf, so with fewer dead latents than ``k`` some
    picks are live ones with activation 0 (no reconstruction, no gradient)."""
    if plan.dead_idx is not None:
        vals, local = pre.index_select(1, plan.dead_idx).topk(plan.k, dim=1, sorted=False)
        return vals.clamp_min(0), plan.dead_idx[local]
    vals, idx = pre.masked_fill(~plan.dead, -math.inf).topk(plan.k, dim=1, sorted=False)
    return vals.clamp_min(0), idx


def _total_variance(x: Float[Tensor, "batch d"]) -> Float[Tensor, ""]:
    """``sum_d Var_batch(x_d)``: the mean squared distance of the tokens to their mean (float32 at least)."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return (x - x.mean(0)).pow(2).sum(-1).mean()


def _l0_metrics(l0: Tensor) -> dict[str, Tensor]:
    """Mean and spread over tokens of the number of active features per token."""
    l0 = l0.float()
    return {"l0": l0.mean(), "l0_std": l0.std(correction=0)}


def _train_output(
    terms: dict[str, Tensor], x_hat: Tensor, metrics: dict[str, Tensor], fire_counts: Tensor
) -> TrainOutput:
    loss = sum(terms.values())
    losses = {name: value.detach().float() for name, value in {**terms, **metrics}.items()}
    return TrainOutput(loss, x_hat.detach(), losses, fire_counts)  # type: ignore[arg-type]


def _read_safetensors(file: Path) -> dict[str, Tensor]:
    """Tensors of a safetensors file, after checking its header against the file size."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SAEFormatError(f"{file} is truncated: {size} bytes, not even a safetensors header length")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise SAEFormatError(
                f"{file} is truncated: its header claims {header_len} bytes, the file has {size - 8} after the length"
            )
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SAEFormatError(f"{file}: the safetensors header does not parse ({e}); the file is damaged") from e
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError, AttributeError) as e:
        raise SAEFormatError(f"{file}: malformed safetensors header ({e})") from e
    if 8 + header_len + end != size:
        raise SAEFormatError(
            f"{file} has {size} bytes but its header describes {8 + header_len + end}: the file is truncated or damaged"
        )
    try:
        return load_file(str(file))
    except SafetensorError as e:
        raise SAEFormatError(f"{file}: {e}") from e


def _cfg_from_json(raw: dict[str, Any], device: str, where: Path) -> SAEConfig:
    """An SAEConfig from a workbench or SAELens cfg.json (including pre-6 SAELens variants)."""
    if "workbench" in raw:
        wb = raw["workbench"]
        if not isinstance(wb, dict):
            raise SAEFormatError(f"{where}: 'workbench' must be a JSON object")
        known = {f.name for f in fields(SAEConfig)}
        unknown = sorted(set(wb) - known)
        if unknown:
            raise SAEFormatError(f"{where}: unknown workbench config keys {unknown}")
        if wb.get("architecture") not in ARCHITECTURES:
            raise SAEFormatError(
                f"{where}: unknown architecture {wb.get('architecture')!r}; known: {', '.join(ARCHITECTURES)}"
            )
        try:
            return SAEConfig(**{**wb, "device": device})
        except (TypeError, ValueError) as e:
            raise SAEFormatError(f"{where}: invalid workbench config: {e}") from e

    # SAELens: 6.x layout, or an older one (architecture absent = standard, hook_point, ...).
    arch = raw.get("architecture") or "standard"
    activation = raw.get("activation_fn", raw.get("activation_fn_str"))
    kwargs = raw.get("activation_fn_kwargs") or {}
    if arch == "standard" and activation == "topk" and kwargs.get("k") is not None:
        arch = "topk"
    saelens_to_workbench = {
        "standard": "relu",
        "topk": "topk",
        "jumprelu": "jumprelu",
        "gated": "gated",
        "batchtopk": "batchtopk",
    }
    if arch not in saelens_to_workbench:
        raise SAEFormatError(
            f"{where}: unknown architecture {arch!r}; known: {', '.join(saelens_to_workbench)} (SAELens) "
            f"and {', '.join(ARCHITECTURES)} (workbench)"
        )
    for key in ("d_in", "d_sae"):
        if not isinstance(raw.get(key), int):
            raise SAEFormatError(f"{where}: missing or non-integer {key!r}")
    norm = raw.get("normalize_activations", "none")
    if norm not in (None, False, "none"):
        raise SAEFormatError(
            f"{where}: normalize_activations={norm!r} is not supported; workbench SAEs take raw "
            "activations (fold the normalisation into the weights first)"
        )
    if raw.get("reshape_activations", "none") not in (None, "none", "hook_z"):
        raise SAEFormatError(f"{where}: unsupported reshape_activations={raw['reshape_activations']!r}")
    if raw.get("finetuning_scaling_factor") is True:
        raise SAEFormatError(f"{where}: finetuning_scaling_factor is not supported")
    dtype = str(raw.get("dtype", "float32")).removeprefix("torch.")
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    hook_name = raw.get("hook_name") or raw.get("hook_point") or metadata.get("hook_name") or ""
    model_name = raw.get("model_name") or metadata.get("model_name") or ""
    apply_b_dec = raw.get("apply_b_dec_to_input", True)
    cfg: dict[str, Any] = {
        "architecture": saelens_to_workbench[arch],
        "d_in": raw["d_in"],
        "d_sae": raw["d_sae"],
        "apply_b_dec_to_input": bool(apply_b_dec),
        "hook_name": str(hook_name),
        "model_name": str(model_name),
        "dtype": dtype,
        "device": device,
    }
    if arch == "standard":
        cfg["relu_variant"] = "towards_monosemanticity" if apply_b_dec else "april_update"
    if arch in ("topk", "batchtopk"):
        k = raw.get("k", kwargs.get("k"))
        if isinstance(k, float) and k.is_integer():
            k = int(k)
        if not isinstance(k, int):
            raise SAEFormatError(f"{where}: a {arch} SAE needs an integer k, got {k!r}")
        cfg["k"] = k
    if arch == "batchtopk" and "topk_threshold_lr" in raw:
        cfg["batchtopk_threshold_lr"] = raw["topk_threshold_lr"]
    # SAELens training settings that have a workbench counterpart.
    renamed = {"l1_coefficient": "l1_coefficient", "l0_coefficient": "l1_coefficient",
               "jumprelu_bandwidth": "jumprelu_bandwidth", "jumprelu_init_threshold": "jumprelu_init_threshold",
               "aux_loss_coefficient": "aux_coefficient"}  # fmt: skip
    for src, dst in renamed.items():
        if isinstance(raw.get(src), (int, float)) and not isinstance(raw.get(src), bool):
            cfg[dst] = raw[src]
    if arch == "jumprelu":  # SAELens' JumpReLU settings are in its input units (||x|| ~ sqrt(d_in)): to DeepMind's
        for key in ("jumprelu_bandwidth", "jumprelu_init_threshold"):
            if key in cfg:
                cfg[key] = cfg[key] / math.sqrt(raw["d_in"])
        if "l1_coefficient" in cfg:
            cfg["l1_coefficient"] = cfg["l1_coefficient"] / raw["d_in"]
    try:
        return SAEConfig(**cfg)
    except (TypeError, ValueError) as e:
        raise SAEFormatError(f"{where}: {e}") from e


def _tensors_from_saelens(
    raw: dict[str, Any], cfg: SAEConfig, tensors: dict[str, Tensor], where: Path
) -> dict[str, Tensor]:
    """Map a SAELens state dict onto the names ``SAE._expected_shapes`` uses, folding what
    workbench does not model (decoder-norm rescaling, unit scaling factors, log thresholds)."""
    tensors = dict(tensors)
    if "scaling_factor" in tensors:  # older SAELens files; all ones means unused
        factor = tensors.pop("scaling_factor")
        if not torch.all(factor == 1):
            raise SAEFormatError(f"{where}: a non-trivial scaling_factor is not supported")
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    if "topk_threshold" in tensors and "threshold" not in tensors:  # SAELens batchtopk training checkpoint
        tensors["threshold"] = tensors.pop("topk_threshold").reshape(1).expand(cfg.d_sae).clone()
    if cfg.architecture == "topafa" and "b_enc" in tensors:  # written before top-AFA lost its encoder bias
        if torch.any(tensors["b_enc"] != 0):
            raise SAEFormatError(
                f"{where}: this top-AFA SAE has a non-zero encoder bias (b_enc), saved by an older workbench; "
                "top-AFA now follows the reference encoder, which has none. Retrain it"
            )
        del tensors["b_enc"]
    if (
        "workbench" not in raw
        and raw.get("rescale_acts_by_decoder_norm")
        and {"W_enc", "b_enc", "W_dec"} <= set(tensors)
    ):
        # SAELens trained with pre-acts scaled by decoder norms: fold the norms into the encoder
        # (as SAELens does when it saves an inference model), so the features are unchanged.
        norms = tensors["W_dec"].norm(dim=1)
        if tensors["W_enc"].shape[-1:] == norms.shape and tensors["b_enc"].shape == norms.shape:
            tensors["W_enc"] = tensors["W_enc"] * norms
            tensors["b_enc"] = tensors["b_enc"] * norms
            tensors["W_dec"] = tensors["W_dec"] / norms[:, None]
    return tensors
