"""Train one or several SAEs from a plain iterator of activation batches.

The trainer knows no language model and no activation store: it eats an iterator of
``Float[Tensor, "batch d_in"]`` (SAELens's ``DataProvider = Iterator[Tensor]``), so tests
can feed ``torch.randn``. Several SAEs (a sweep over ``k`` or the L1 coefficient, say) are
trained from one pass over the data: every batch goes to every SAE, and each SAE keeps its
own optimizer, schedule, firing counters and random generator, so training a list of SAEs
gives the same weights as training each one alone with the same seed.

Layout of ``out_dir`` (when given), the same for one SAE or several::

    out_dir/
        sae_0/, sae_1/, ...                     # the trained SAEs (SAE.save folders), in order
        checkpoint/                             # the latest complete training state
            state.json                          # step, tokens, scale, configs, history
            sae_{i}.safetensors                 # weights, Adam state, counters, generator
            rng.safetensors                     # global torch RNG states

A checkpoint is written into ``checkpoint.tmp/`` and swapped in by renaming, the previous one
being kept (as ``checkpoint.old/``) until the new one is complete; a checkpoint is never
written from a state that saw a non-finite loss or gradient.

Calling :func:`train` again with the same arguments on an ``out_dir`` holding a checkpoint
resumes it exactly: the batches already consumed are skipped, so the caller must pass an
iterator that starts from the beginning of the same data.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from workbench.sae import SAE

__all__ = [
    "Callback",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainingDiverged",
    "default_lr",
    "geometric_median",
    "sae_dir",
    "train",
]

CHECKPOINT_DIR = "checkpoint"
"""Name of the checkpoint folder inside ``out_dir``."""

EVENTS = ("on_train_start", "on_step_end", "on_log", "on_checkpoint", "on_train_end")
"""Events a :class:`Callback` may handle, in the order they first fire."""

_CHECKPOINT_FORMAT = "workbench.train.checkpoint/1"
_MAX_INIT_POINTS = 32_768  # tokens used for the geometric median of b_dec


def sae_dir(out_dir: str | Path, index: int = 0) -> Path:
    """Where :func:`train` saves the ``index``-th trained SAE: ``out_dir/sae_{index}``."""
    return Path(out_dir) / f"sae_{index}"


@dataclass
class TrainConfig:
    """How to train. Every SAE in a run shares it; the SAEs' own configs say what to train."""

    steps: int
    """Number of optimizer steps, i.e. batches taken from the iterator."""

    lr: float | None = None
    """Adam learning rate. ``None`` picks it per SAE from its width as sparsify does:
    ``2e-4 / sqrt(d_sae / 2**14)`` (see :func:`default_lr`)."""

    lr_warmup_steps: int = 0
    """Linearly raise the learning rate over the first ``N`` steps (``lr * 1/N, ..., lr``;
    0: no warm-up)."""

    lr_decay_steps: int = 0
    """Linearly lower the learning rate towards 0 over the final steps, SAELens-like: the last
    ``N`` steps use ``lr * N/N, lr * (N-1)/N, ..., lr * 1/N`` (0: no decay)."""

    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's ``(beta1, beta2)``."""

    sparsity_warmup_steps: int = 0
    """Linearly ramp the ``sparsity_scale`` passed to the SAE over the first ``N`` steps
    (``1/N, 2/N, ..., 1``; the L1 warm-up of Anthropic's April 2024 update; 0: none)."""

    normalize_activations: bool = True
    """Scale inputs by one constant so that ``E ||x * scale|| = sqrt(d_in)``, estimated on the
    first ``init_batches`` batches; the scale is folded into the weights at the end, so the
    returned SAEs take raw activations."""

    init_b_dec: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    """Initialise ``b_dec`` from the first ``init_batches`` batches: their geometric median
    (Weiszfeld, as SAELens), their mean, or zeros."""

    init_batches: int = 1
    """Leading batches used for the activation scale and ``b_dec``; they are trained on too."""

    dead_window: int = 10_000_000
    """A feature is dead if it has not fired in the last this many tokens. Drives the
    ``dead_mask`` given to the SAE (AuxK), the logged dead fraction and resampling."""

    resample_every: int | None = None
    """Every this many steps (at most ``resample_times`` times), resample the dead features of
    ``"relu"`` SAEs as Towards Monosemanticity does: inputs drawn from a pool of recent training
    inputs with probability proportional to the square of the SAE's loss on them, without
    duplicates; other architectures are left alone. ``None`` disables it."""

    resample_times: int = 4
    """How many times to resample (Towards Monosemanticity: 4, at 25k, 50k, 75k and 100k steps)."""

    resample_pool: int = 65_536
    """Inputs (tokens) in the pool resampling draws from: the latest training batches before a
    resampling step (Towards Monosemanticity scored 819,200; the pool is held in memory)."""

    max_grad_norm: float | None = None
    """Clip the gradient's global norm to this (Anthropic's April 2024 update: 1.0); None: no clipping."""

    checkpoint_every: int = 500
    """Write a checkpoint every this many steps (only with an ``out_dir``), and at the end."""

    seed: int = 0
    """Seed of each SAE's private generator (used by resampling). SAEs are initialised by the
    caller, so seed them there."""

    log_every: int = 10
    """Record the window-averaged losses, L0 and dead fraction every this many steps (the
    only steps at which the trainer waits for the device)."""

    def __post_init__(self) -> None:
        positive = ("steps", "init_batches", "dead_window", "checkpoint_every", "log_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("lr_warmup_steps", "lr_decay_steps", "sparsity_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be positive or None, got {self.lr}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"TrainConfig.adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if self.init_b_dec not in ("geometric_median", "mean", "zeros"):
            raise ValueError(
                f"TrainConfig.init_b_dec must be 'geometric_median', 'mean' or 'zeros', got {self.init_b_dec!r}"
            )
        if self.resample_every is not None and self.resample_every <= 0:
            raise ValueError(f"TrainConfig.resample_every must be positive or None, got {self.resample_every}")
        if self.resample_times < 0 or self.resample_pool <= 0:
            raise ValueError("TrainConfig.resample_times must be >= 0 and resample_pool positive, got "
                             f"{self.resample_times} and {self.resample_pool}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"TrainConfig.max_grad_norm must be positive or None, got {self.max_grad_norm}")

    def lr_multiplier(self, step: int) -> float:
        """Factor applied to the base learning rate at 1-based ``step``."""
        mult = 1.0
        if self.lr_warmup_steps > 0 and step <= self.lr_warmup_steps:
            mult = step / self.lr_warmup_steps
        if self.lr_decay_steps > 0:
            mult *= min(1.0, (self.steps - step + 1) / self.lr_decay_steps)
        return max(mult, 0.0)

    def sparsity_scale(self, step: int) -> float:
        """The ``sparsity_scale`` passed to the SAEs at 1-based ``step``."""
        if self.sparsity_warmup_steps > 0 and step < self.sparsity_warmup_steps:
            return step / self.sparsity_warmup_steps
        return 1.0


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN or infinite; the last good checkpoint was kept."""


class TrainResult(NamedTuple):
    """What :func:`train` returns."""

    saes: list[SAE]
    """The trained SAEs (the objects passed in, trained in place), scale folded in: they take
    raw activations."""

    history: list[dict[str, Any]]
    """One row per SAE per log step: ``step``, ``n_tokens``, ``sae`` (index), ``lr``,
    ``sparsity_scale``, ``loss``, the SAE's loss terms (``mse``, ...), ``l0`` and
    ``dead_fraction``, each averaged over the steps since the previous row. Losses are in
    normalised units (where ``E ||x|| = sqrt(d_in)``). ``pandas.DataFrame(history)`` works."""

    stats: list[dict[str, Any]]
    """Per SAE: its last history row plus ``activation_scale`` and ``dead_window``."""


def default_lr(d_sae: int) -> float:
    """sparsify's width-scaled Adam learning rate, ``2e-4 / sqrt(d_sae / 2**14)``."""
    return 2e-4 / math.sqrt(d_sae / 2**14)


@torch.no_grad()
def geometric_median(
    points: Float[Tensor, "n d"],
    *,
    eps: float = 1e-6,
    max_iter: int = 100,
    ftol: float = 1e-20,
) -> Float[Tensor, " d"]:
    """Geometric median (the point minimising the summed Euclidean distance) by Weiszfeld.

    Same iteration as SAELens's ``compute_geometric_median``: start at the mean, reweight each
    point by ``1 / max(distance, eps)`` and stop after ``max_iter`` iterations or when the
    objective improves by less than ``ftol`` relative. Computed in at least float32.
    """
    pts = points.reshape(-1, points.shape[-1])
    if pts.dtype not in (torch.float32, torch.float64):
        pts = pts.float()
    median = pts.mean(0)
    objective = torch.linalg.vector_norm(pts - median, dim=1).sum().item()
    for _ in range(max_iter):
        dist = torch.linalg.vector_norm(pts - median, dim=1)
        weights = 1.0 / dist.clamp(min=eps)
        median = (pts * weights[:, None]).sum(0) / weights.sum()
        previous, objective = objective, torch.linalg.vector_norm(pts - median, dim=1).sum().item()
        if abs(previous - objective) <= ftol * objective:
            break
    return median.to(points.dtype)


class Callback:
    """Hooks a notebook, a logger or a test can attach to :func:`train` (minGPT-style).

    Subclass and override some hooks, or pass plain functions: ``Callback(on_log=fn)``. Any
    other object with some of these methods works too (duck typing). Each hook receives the
    :class:`TrainState`; an exception raised by a hook stops training, and the last
    checkpoint stays as it was.
    """

    def __init__(self, **hooks: Callable[[TrainState], None]):
        for event, fn in hooks.items():
            if event not in EVENTS:
                raise ValueError(f"unknown callback event {event!r}; choose from {EVENTS}")
            setattr(self, event, fn)

    def on_train_start(self, state: TrainState) -> None:
        """After set-up or resuming, before the first step."""

    def on_step_end(self, state: TrainState) -> None:
        """After every optimizer step (keep it cheap; reading losses waits for the device)."""

    def on_log(self, state: TrainState) -> None:
        """Every ``log_every`` steps, once ``state.log`` holds the new history rows."""

    def on_checkpoint(self, state: TrainState) -> None:
        """After a checkpoint was completely written to ``out_dir/checkpoint``."""

    def on_train_end(self, state: TrainState) -> None:
        """After the SAEs were folded and saved, just before :func:`train` returns."""


def _hooks(callbacks: list[Any], event: str) -> list[Callable[[TrainState], None]]:
    """The callables handling ``event``, leaving out :class:`Callback`'s empty defaults."""
    found = []
    for cb in callbacks:
        if not any(callable(getattr(cb, name, None)) for name in EVENTS):
            raise TypeError(
                f"callback {cb!r} has none of the methods {EVENTS}; wrap a function as Callback(on_step_end=fn)"
            )
        hook = getattr(cb, event, None)
        if not callable(hook):
            continue
        if getattr(type(cb), event, None) is getattr(Callback, event) and event not in vars(cb):
            continue
        found.append(hook)
    return found


class TrainState:
    """The trainer's state as callbacks see it (one object, updated in place).

    ``step`` counts completed optimizer steps. ``losses``, ``l0`` and ``dead_fraction`` read
    the latest step's tensors, so touching them waits for the device; ``log`` holds the rows
    just added to the history (set during ``on_log``).
    """

    def __init__(self, runs: list[_SAERun], cfg: TrainConfig, out_dir: Path | None):
        self._runs = runs
        self.cfg: TrainConfig = cfg
        """The training config."""
        self.out_dir: Path | None = out_dir
        """Where checkpoints and the trained SAEs go, if anywhere."""
        self.step: int = 0
        """Completed optimizer steps."""
        self.n_tokens: int = 0
        """Tokens (rows) trained on so far."""
        self.sparsity_scale: float = 1.0
        """The sparsity scale used at the latest step."""
        self.activation_scale: float = 1.0
        """Inputs are multiplied by this during training."""
        self.history: list[dict[str, Any]] = []
        """All history rows so far (see :class:`TrainResult`)."""
        self.log: list[dict[str, Any]] = []
        """The latest history rows, one per SAE."""

    @property
    def saes(self) -> list[SAE]:
        """The SAEs being trained (inputs scaled by ``activation_scale``)."""
        return [run.sae for run in self._runs]

    @property
    def lr(self) -> list[float]:
        """Per-SAE learning rate used at the latest step."""
        return [run.lr for run in self._runs]

    @property
    def losses(self) -> list[dict[str, float]]:
        """Per-SAE loss terms of the latest step, total under ``"loss"``."""
        return [run.last_losses() for run in self._runs]

    @property
    def l0(self) -> list[float]:
        """Per-SAE mean number of active features per token at the latest step."""
        return [run.last_l0() for run in self._runs]

    @property
    def dead_fraction(self) -> list[float]:
        """Per-SAE fraction of features that have not fired in ``cfg.dead_window`` tokens."""
        return [run.dead_fraction() for run in self._runs]


class _SAERun:
    """One SAE's optimizer, counters and running sums; the per-step work lives here."""

    def __init__(self, sae: SAE, index: int, cfg: TrainConfig):
        self.sae = sae
        self.index = index
        self.cfg = cfg
        self.names = [name for name, p in sae.named_parameters() if p.requires_grad]
        self.params = [p for p in sae.parameters() if p.requires_grad]
        d_sae, self.d_in = sae.W_dec.shape
        device = sae.W_dec.device
        self.device, self.dtype = device, sae.W_dec.dtype
        self.base_lr = cfg.lr if cfg.lr is not None else default_lr(d_sae)
        self.lr = self.base_lr
        # Fused Adam: one kernel for all parameters, on CUDA and on CPU (98 ms -> 8 ms per step on a
        # 2-core CPU for a 4608 x 576 SAE, most of a TopK step there).
        fused = device.type in ("cuda", "cpu") and all(p.is_floating_point() for p in self.params)
        self.opt = torch.optim.Adam(self.params, lr=self.base_lr, betas=tuple(cfg.adam_betas), fused=fused or None)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.resample = cfg.resample_every is not None and _architecture(sae) == "relu"
        # Fine-tuning a trained SAE: its decoder rows keep the norms they start with (None: unit).
        self.decoder_norms: Tensor | None = None
        # Resampling: the latest inputs before the next resampling step, and resamplings so far.
        self.pool: list[Tensor] = []
        self.resamples_done = 0
        # Firing counters, updated with tensor ops only.
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.tokens_seen = 0
        # Running sums over the current log window.
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.active_sum = torch.zeros((), dtype=torch.long, device=device)
        self.window_tokens = 0
        # First non-finite step (-1: none) and which of [loss, grad of each param] it hit.
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_what = torch.zeros(1 + len(self.params), dtype=torch.bool, device=device)
        self.last: dict[str, Tensor] = {}
        self.last_active = torch.zeros((), dtype=torch.long, device=device)
        self.last_tokens = 1

    # ---- the step -------------------------------------------------------------------------
    def train_step(self, x: Float[Tensor, "batch d_in"], step: int, lr_mult: float, sparsity_scale: float) -> None:
        """Forward, backward, constrain, Adam step and counter updates for one batch."""
        self.lr = self.base_lr * lr_mult
        if self.resample:
            self._remember(x, step)
        for group in self.opt.param_groups:
            group["lr"] = self.lr
        # No feature can be dead before dead_window tokens: pass None and spare the SAE a sync.
        window = self.cfg.dead_window
        dead_mask = self.tokens_since_fired >= window if self.tokens_seen >= window else None
        out = self.sae.training_forward(x, sparsity_scale=sparsity_scale, dead_mask=dead_mask)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.sae.constrain_gradients()
        if self.cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self._watch_finite(out.loss, step)
        self.opt.step()
        self.sae.constrain_weights(self.decoder_norms)
        with torch.no_grad():
            fires_F = out.fire_counts
            self.tokens_since_fired.add_(x.shape[0]).masked_fill_(fires_F > 0, 0)
            self.last_active = fires_F.sum()
            self.active_sum += self.last_active
            self.last_tokens = x.shape[0]
            self.tokens_seen += x.shape[0]
            self.window_tokens += x.shape[0]
            self.last = {**out.losses, "loss": out.loss.detach()}
            for key, value in self.last.items():
                if key == "l0":  # measured from fire_counts (active_sum) instead
                    continue
                value = value.detach()
                self.sums[key] = self.sums[key] + value if key in self.sums else value
                self.counts[key] = self.counts.get(key, 0) + 1
            if self.resample and step % self.cfg.resample_every == 0:
                self._resample()

    def _watch_finite(self, loss: Tensor, step: int) -> None:
        """Record (without a device sync) the first step whose loss or gradients are non-finite."""
        grads = [p.grad.sum() if p.grad is not None else loss.new_zeros(()) for p in self.params]
        bad = ~torch.isfinite(torch.stack([loss.detach().float(), *(g.float() for g in grads)]))
        first = bad.any() & (self.bad_step < 0)
        self.bad_step.masked_fill_(first, step)
        self.bad_what = torch.where(first, bad, self.bad_what)

    def check_finite(self, n_steps: int) -> None:
        """Raise :class:`TrainingDiverged` if a non-finite loss or gradient was seen (syncs)."""
        step = int(self.bad_step.item())
        if step < 0:
            return
        bad = self.bad_what.tolist()
        what = (["total loss"] if bad[0] else []) + [f"gradient of {n}" for n, b in zip(self.names, bad[1:]) if b]
        terms = [k for k, v in self.sums.items() if not torch.isfinite(v).item()]
        raise TrainingDiverged(
            f"SAE {self.index} ({_architecture(self.sae) or type(self.sae).__name__}) diverged at step "
            f"{step} of {n_steps}: non-finite {', '.join(what)}"
            + (f" (non-finite loss terms since the last log: {', '.join(terms)})" if terms else "")
            + ". Training stopped and the last good checkpoint, if any, was kept. Try a lower lr "
            "(or a longer lr_warmup_steps) and check the input data for NaNs or infs."
        )

    # ---- resampling -----------------------------------------------------------------------
    def _remember(self, x: Float[Tensor, "batch d_in"], step: int) -> None:
        """Keep ``x`` for the pool when ``step`` is among the last ones before a resampling step."""
        every = self.cfg.resample_every
        upcoming = -(-step // every)  # 1-based index of the next resampling at or after this step
        if upcoming > self.cfg.resample_times:
            return
        if upcoming * every - step < -(-self.cfg.resample_pool // x.shape[0]):
            self.pool.append(x)

    @torch.no_grad()
    def _resample(self) -> None:
        """Resample dead features as Towards Monosemanticity ("Neuron resampling") does.

        Score every input of the pool (the latest ``resample_pool`` training inputs) by the SAE's
        squared error, draw one distinct input per dead feature with probability proportional to
        the square of that loss (without replacement: no two features get the same direction; with
        more dead features than usable inputs, the rest wait for the next resampling), set the
        decoder row to the normalised input, the encoder column to it times 0.2 times the mean
        norm of the alive encoder columns, the bias to 0, and reset Adam's moments there.
        """
        pool, self.pool = self.pool, []
        if self.resamples_done >= self.cfg.resample_times:
            return
        self.resamples_done += 1
        dead = (self.tokens_since_fired >= self.cfg.dead_window).nonzero().squeeze(1)
        if dead.numel() == 0 or not pool:
            return
        x = torch.cat(pool)[-self.cfg.resample_pool :]
        loss = torch.cat([(chunk - self.sae(chunk).x_hat).pow(2).sum(-1) for chunk in x.split(8192)])
        weights = loss.double().pow(2).cpu()
        if not torch.isfinite(weights).all() or weights.sum() <= 0:
            return
        n = min(dead.numel(), int((weights > 0).sum()))
        dead = dead[:n]
        rows = torch.multinomial(weights, n, replacement=False, generator=self.generator)
        inputs = x[rows.to(x.device)]
        inputs = inputs / inputs.norm(dim=-1, keepdim=True).clamp(min=1e-8)  # (n, d_in), distinct rows
        W_enc, b_enc, W_dec = self.sae.W_enc, self.sae.b_enc, self.sae.W_dec
        alive = torch.ones(W_enc.shape[1], dtype=torch.bool, device=W_enc.device)
        alive[dead] = False
        enc_norms, dec_norms = W_enc.norm(dim=0), W_dec.norm(dim=1)
        alive_norm = enc_norms[alive].mean() if alive.any() else enc_norms.mean()
        if self.decoder_norms is not None:
            row_norms = self.decoder_norms[dead, None]
        elif self.sae.unit_norm_decoder:
            row_norms = torch.ones_like(dec_norms[dead, None])
        else:
            row_norms = (dec_norms[alive].mean() if alive.any() else dec_norms.mean()).expand(n, 1)
        W_enc[:, dead] = (inputs * 0.2 * alive_norm).T.to(W_enc.dtype)
        if b_enc is not None:
            b_enc[dead] = 0.0
        W_dec[dead] = (inputs * row_norms).to(W_dec.dtype)
        for param, index in ((W_enc, (slice(None), dead)), (b_enc, dead), (W_dec, dead)):
            for key in ("exp_avg", "exp_avg_sq"):
                if param is not None and key in self.opt.state.get(param, {}):
                    self.opt.state[param][key][index] = 0.0
        self.tokens_since_fired[dead] = 0

    # ---- logging --------------------------------------------------------------------------
    def log_row(self) -> dict[str, float]:
        """Window averages of the loss terms, L0 and the dead fraction; resets the window."""
        keys = list(self.sums)
        values = [self.sums[k].double() / self.counts[k] for k in keys]
        values.append(self.active_sum.double() / max(self.window_tokens, 1))
        values.append((self.tokens_since_fired >= self.cfg.dead_window).double().mean())
        floats = torch.stack([v.to(self.device) for v in values]).tolist()  # the one sync
        row = dict(zip([*keys, "l0", "dead_fraction"], floats))
        self.sums, self.counts, self.window_tokens = {}, {}, 0
        self.active_sum = torch.zeros_like(self.active_sum)
        return {"lr": self.lr, "loss": row.pop("loss"), **row}

    def last_losses(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.last.items()}

    def last_l0(self) -> float:
        return float(self.last_active) / self.last_tokens

    def dead_fraction(self) -> float:
        return float((self.tokens_since_fired >= self.cfg.dead_window).float().mean())

    # ---- checkpointing --------------------------------------------------------------------
    def state_tensors(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Everything needed to continue exactly: tensors for safetensors, the rest for JSON."""
        tensors = {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        opt_state = self.opt.state_dict()["state"]
        for index, state in opt_state.items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        tensors["counter.tokens_since_fired"] = self.tokens_since_fired
        if self.decoder_norms is not None:
            tensors["decoder_norms"] = self.decoder_norms
        if self.pool:
            tensors["resample.pool"] = torch.cat(self.pool)
        tensors["generator"] = self.generator.get_state()
        tensors["window.active_sum"] = self.active_sum
        for key, value in self.sums.items():
            tensors[f"window.sum.{key}"] = value
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        extra = {"counts": self.counts, "window_tokens": self.window_tokens, "lr": self.lr}
        extra["tokens_seen"] = self.tokens_seen
        extra["resamples_done"] = self.resamples_done
        return tensors, extra

    def load_state_tensors(self, tensors: dict[str, Tensor], extra: dict[str, Any]) -> None:
        """Inverse of :meth:`state_tensors`."""
        self.sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
        opt_state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                opt_state.setdefault(int(index), {})[name] = value
        self.opt.load_state_dict({"state": opt_state, "param_groups": self.opt.state_dict()["param_groups"]})
        # Moments were saved contiguous; a fused Adam walks them in their parameter's memory order,
        # so give them its strides again (W_enc can be a column-major copy of W_dec.T).
        for param, state in self.opt.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state and state[key].stride() != param.stride():
                    state[key] = torch.empty_like(param).copy_(state[key])
        self.tokens_since_fired.copy_(tensors["counter.tokens_since_fired"])
        norms = tensors.get("decoder_norms")
        self.decoder_norms = None if norms is None else norms.to(self.device, self.dtype)
        pool = tensors.get("resample.pool")
        self.pool = [] if pool is None else [pool.to(self.device, self.dtype)]
        self.resamples_done = int(extra.get("resamples_done", 0))
        self.generator.set_state(tensors["generator"])
        self.active_sum = tensors["window.active_sum"].to(self.device)
        prefix = "window.sum."
        self.sums = {k[len(prefix) :]: v.to(self.device) for k, v in tensors.items() if k.startswith(prefix)}
        self.counts = dict(extra["counts"])
        self.window_tokens = int(extra["window_tokens"])
        self.tokens_seen = int(extra["tokens_seen"])
        self.lr = float(extra["lr"])


def _architecture(sae: SAE) -> str | None:
    return getattr(getattr(sae, "cfg", None), "architecture", None)


def _sae_config_dict(sae: SAE) -> dict[str, Any] | None:
    """The SAE's config as a JSON-able dict (device left out: a run may resume elsewhere)."""
    cfg = getattr(sae, "cfg", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        return None
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "device"}
    return json.loads(json.dumps(fields, default=str))


# ---- initialisation from the first batches ------------------------------------------------
@torch.no_grad()
def _initialise(runs: list[_SAERun], init: list[Tensor], cfg: TrainConfig) -> float:
    """Estimate the activation scale; set the ``b_dec`` of every fresh SAE, and bring every trained
    one to the scaled inputs (the inverse of the final fold), its decoder norms held from here on.
    Returns the scale."""
    first = runs[0]
    x = torch.cat([b.reshape(-1, first.d_in).to(first.device, torch.float32) for b in init])
    scale = 1.0
    if cfg.normalize_activations:
        mean_norm = float(x.norm(dim=-1).mean())
        if not math.isfinite(mean_norm) or mean_norm <= 0:
            raise ValueError(
                f"cannot normalise activations: mean norm of the first batches is {mean_norm}; "
                "check the input data for NaNs, infs or all-zero batches"
            )
        scale = math.sqrt(first.d_in) / mean_norm
    for run in runs:
        if run.sae.trained:
            _check_trained(run)
            run.sae.fold_activation_scale(1 / scale)  # takes x * scale, returns x_hat * scale: the same function
            if run.sae.unit_norm_decoder:
                run.decoder_norms = run.sae.W_dec.norm(dim=1).clone()
    fresh = [run for run in runs if not run.sae.trained]
    if not fresh:
        return scale
    x = x[:_MAX_INIT_POINTS] * scale
    if cfg.init_b_dec == "geometric_median":
        b_dec = geometric_median(x)
    elif cfg.init_b_dec == "mean":
        b_dec = x.mean(0)
    else:
        b_dec = torch.zeros(first.d_in)
    for run in fresh:
        run.sae.b_dec.copy_(b_dec.to(run.sae.b_dec))
    return scale


def _check_trained(run: _SAERun) -> None:
    """Refuse to fine-tune what cannot continue: non-finite weights, or a decoder row of norm 0
    where the architecture holds row norms fixed (it would stay 0 for ever)."""
    bad = [name for name, p in run.sae.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"SAE {run.index} is marked trained but its {', '.join(bad)} hold NaN or inf; "
                         "it cannot be fine-tuned: load a good copy, or build a fresh SAE")
    if run.sae.unit_norm_decoder and bool((run.sae.W_dec.norm(dim=1) == 0).any()):
        raise ValueError(f"SAE {run.index} has decoder rows of norm 0; fine-tuning holds row norms fixed, so those "
                         "features could never learn. Re-initialise those rows (or the SAE) first")


# ---- checkpoints --------------------------------------------------------------------------
def _find_checkpoint(out_dir: Path) -> Path | None:
    """The latest complete checkpoint folder (``state.json`` is written last), if any."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        if (out_dir / name / "state.json").is_file():
            return out_dir / name
    return None


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_checkpoint(out_dir: Path, runs: list[_SAERun], state: TrainState, sae_configs: list[Any]) -> Path:
    """Write the training state to ``out_dir/checkpoint`` atomically (tmp folder + renames)."""
    from safetensors.torch import save as st_save

    final = out_dir / CHECKPOINT_DIR
    tmp = out_dir / (CHECKPOINT_DIR + ".tmp")
    old = out_dir / (CHECKPOINT_DIR + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    extras = []
    for run in runs:
        tensors, extra = run.state_tensors()
        _fsync_write(tmp / f"sae_{run.index}.safetensors", st_save(tensors, metadata={"step": str(state.step)}))
        extras.append(extra)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    _fsync_write(tmp / "rng.safetensors", st_save(rng))
    meta = {
        "format": _CHECKPOINT_FORMAT,
        "step": state.step,
        "n_tokens": state.n_tokens,
        "activation_scale": state.activation_scale,
        "n_saes": len(runs),
        "train_config": dataclasses.asdict(state.cfg),
        "sae_configs": sae_configs,
        "runs": extras,
        "history": state.history,
    }
    _fsync_write(tmp / "state.json", json.dumps(meta, indent=1).encode())
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _read_checkpoint(path: Path, runs: list[_SAERun], state: TrainState, sae_configs: list[Any]) -> None:
    """Load a checkpoint written by :func:`_write_checkpoint` into ``runs`` and ``state``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((path / "state.json").read_text())
        if meta.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"unknown checkpoint format {meta.get('format')!r}")
        if meta["n_saes"] != len(runs):
            raise ValueError(f"it holds {meta['n_saes']} SAEs but {len(runs)} were passed")
        for i, (saved, given) in enumerate(zip(meta["sae_configs"], sae_configs)):
            if saved is not None and given is not None and saved != given:
                diff = sorted(k for k in set(saved) | set(given) if saved.get(k) != given.get(k))
                raise ValueError(f"SAE {i}'s config differs from the checkpoint's in {diff}")
        tensors = [load_file(path / f"sae_{i}.safetensors") for i in range(len(runs))]
        rng = load_file(path / "rng.safetensors")
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise ValueError(
            f"cannot resume from the checkpoint in {path}: {err}. "
            "Use another out_dir, or delete this one to start afresh."
        ) from err
    saved_cfg = meta["train_config"]
    current = json.loads(json.dumps(dataclasses.asdict(state.cfg)))
    harmless = {"log_every", "checkpoint_every"} | ({"steps"} if state.cfg.lr_decay_steps == 0 else set())
    changed = sorted(k for k in current if saved_cfg.get(k) != current[k] and k not in harmless)
    if changed:
        warnings.warn(f"resuming {path} with a different TrainConfig ({changed}); the run will not be exact")
    for run, run_tensors, extra in zip(runs, tensors, meta["runs"]):
        run.load_state_tensors(run_tensors, extra)
    torch.set_rng_state(rng["torch"])
    cuda_states = [rng[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in rng))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    state.step = int(meta["step"])
    state.n_tokens = int(meta["n_tokens"])
    state.activation_scale = float(meta["activation_scale"])
    state.history = list(meta["history"])


def _skip(data: Iterable[Tensor], n: int) -> Iterator[Tensor]:
    """An iterator over ``data`` past its first ``n`` batches (``data.skip(n)`` if it has one)."""
    skip = getattr(data, "skip", None)
    if callable(skip):
        skipped = skip(n)
        return iter(skipped if skipped is not None else data)
    it = iter(data)
    for i in range(n):
        if next(it, None) is None:
            raise ValueError(f"cannot resume: the data ran out after {i} batches, the checkpoint is at step {n}")
    return it


# ---- the loop -----------------------------------------------------------------------------
def train(
    saes: SAE | list[SAE],
    data: Iterable[Float[Tensor, "batch d_in"]],
    cfg: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    callbacks: list[Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``saes`` on ``cfg.steps`` batches of ``data``, all SAEs on each batch.

    ``data`` yields ``[batch, d_in]`` tensors (extra leading dims are flattened); it is
    consumed once, shared by every SAE. The SAEs are trained in place and returned with the
    activation scale folded in. With ``out_dir``, checkpoints are written every
    ``cfg.checkpoint_every`` steps and the trained SAEs saved at the end (layout in the module
    docstring); if ``out_dir`` already holds a checkpoint, training resumes from it, skipping
    the batches it consumed: pass the same data from its beginning (``data.skip(n)`` is used
    when it exists). A finished run found in ``out_dir`` is returned without training.

    Raises :class:`TrainingDiverged` when a loss or gradient becomes non-finite (detected at
    the next log or checkpoint step; no checkpoint is written from the bad state). After any
    exception (a callback's, Ctrl-C) the SAEs passed in are left as they were at that step, scale
    folded back in; call :func:`train` again with the same ``out_dir`` to resume from the checkpoint.

    **Fine-tuning.** An SAE that is already trained (``sae.trained``: returned by ``train``, or
    read by ``SAE.load``, SAELens folders included) is continued from where it is: its ``b_dec`` is
    kept, the activation scale measured on the first batches is un-folded from its weights before
    training (so it computes the same function on the scaled inputs) and folded back at the end,
    and its decoder rows keep the norms they start with. One step at a learning rate of 1e-12
    leaves it unchanged. Non-finite weights are refused with a ValueError.
    """
    sae_list: list[SAE] = list(saes) if isinstance(saes, (list, tuple)) else [saes]
    if not sae_list:
        raise ValueError("train() needs at least one SAE")
    d_ins = {sae.W_dec.shape[1] for sae in sae_list}
    if len(d_ins) != 1:
        raise ValueError(f"all SAEs trained from one data stream must share d_in, got {sorted(d_ins)}")
    out_path = Path(out_dir) if out_dir is not None else None
    runs = [_SAERun(sae, i, cfg) for i, sae in enumerate(sae_list)]
    sae_configs = [_sae_config_dict(sae) for sae in sae_list]
    state = TrainState(runs, cfg, out_path)
    hooks = {event: _hooks(callbacks or [], event) for event in EVENTS}

    def fire(event: str) -> None:
        for hook in hooks[event]:
            hook(state)

    checkpoint = _find_checkpoint(out_path) if out_path is not None else None
    if checkpoint is not None:
        _read_checkpoint(checkpoint, runs, state, sae_configs)
        batches = _skip(data, state.step) if state.step < cfg.steps else iter(())
    else:
        batches = iter(data)
        init = list(itertools.islice(batches, cfg.init_batches))
        if not init:
            raise ValueError("the data yielded no batches")
        state.activation_scale = _initialise(runs, init, cfg)
        batches = itertools.chain(init, batches)
    for sae in sae_list:
        sae.train()

    from workbench.progress import progress_bar

    bar = progress_bar(total=cfg.steps, initial=state.step, disable=not progress, desc="train", unit="step")
    logged_step = checkpointed_step = state.step

    def log() -> None:
        nonlocal logged_step
        for run in runs:
            run.check_finite(cfg.steps)
        base = {"step": state.step, "n_tokens": state.n_tokens, "sparsity_scale": state.sparsity_scale}
        state.log = [{**base, "sae": run.index, **run.log_row()} for run in runs]
        state.history.extend(state.log)
        logged_step = state.step
        bar.set_postfix_str(_postfix(state.log), refresh=False)
        fire("on_log")

    def save_checkpoint() -> None:
        nonlocal checkpointed_step
        for run in runs:
            run.check_finite(cfg.steps)
        _write_checkpoint(out_path, runs, state, sae_configs)
        checkpointed_step = state.step
        fire("on_checkpoint")

    try:
        fire("on_train_start")
        for step in range(state.step + 1, cfg.steps + 1):
            x = next(batches, None)
            if x is None:
                warnings.warn(f"the data ran out after {step - 1} of {cfg.steps} steps; stopping there")
                break
            x = x.reshape(-1, runs[0].d_in)
            lr_mult, state.sparsity_scale = cfg.lr_multiplier(step), cfg.sparsity_scale(step)
            scaled: dict[tuple[torch.device, torch.dtype], Tensor] = {}
            for run in runs:
                key = (run.device, run.dtype)
                if key not in scaled:
                    to_gpu = run.device.type == "cuda"
                    scaled[key] = x.to(run.device, run.dtype, non_blocking=to_gpu) * state.activation_scale
                run.train_step(scaled[key], step, lr_mult, state.sparsity_scale)
            state.step, state.n_tokens = step, state.n_tokens + x.shape[0]
            bar.update(1)
            fire("on_step_end")
            if step % cfg.log_every == 0 or step == cfg.steps:
                log()
            if out_path is not None and step % cfg.checkpoint_every == 0:
                save_checkpoint()
        if logged_step != state.step:
            log()
        for run in runs:
            run.check_finite(cfg.steps)
        if out_path is not None and checkpointed_step != state.step:
            save_checkpoint()
    finally:
        bar.close()
        # Whatever happened, the SAEs passed in take raw activations again (a trained SAE is
        # fine-tuned from there by the next call; a checkpoint, when there is one, wins over them).
        for sae in sae_list:
            if state.activation_scale != 1.0:
                sae.fold_activation_scale(state.activation_scale)
            sae.trained = True
            sae.eval()
    if out_path is not None:
        for i, sae in enumerate(sae_list):
            sae.save(sae_dir(out_path, i))
    last = {row["sae"]: row for row in state.history}
    stats = [
        {**last.get(i, {}), "activation_scale": state.activation_scale, "dead_window": cfg.dead_window}
        for i in range(len(runs))
    ]
    fire("on_train_end")
    return TrainResult(saes=sae_list, history=state.history, stats=stats)


def _postfix(rows: list[dict[str, Any]]) -> str:
    """Progress-bar text: loss, L0 and dead fraction of each SAE (compact for several)."""
    if len(rows) == 1:
        r = rows[0]
        return f"loss={r['loss']:.4g} l0={r['l0']:.1f} dead={r['dead_fraction']:.1%}"
    return " ".join(f"[{r['sae']}] {r['loss']:.3g}/{r['l0']:.0f}/{r['dead_fraction']:.0%}" for r in rows)
