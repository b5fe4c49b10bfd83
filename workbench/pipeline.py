"""End-to-end recipes: capture -> train -> evaluate, as ``workbench train`` and ``workbench eval`` run them.

A run folder holds everything of one run::

    DIR/store/           activation store of the training tokens (unless --store points elsewhere)
    DIR/checkpoint/      the trainer's latest state (a re-run resumes from it)
    DIR/sae_0/           the trained SAE (cfg.json + sae_weights.safetensors, SAELens layout)
    DIR/metrics.json     held-out metrics: reconstruction, sparsity, epsilon-LBO, loss recovered
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from workbench.afa import AFAMetrics
from workbench.capture import CaptureConfig, capture_corpus
from workbench.data import EMBEDDED_CORPUS, token_contexts
from workbench.evaluate import LossRecovered, faithfulness
from workbench.features import activation_stats
from workbench.files import write_json
from workbench.metrics import ReconstructionMetrics
from workbench.models import Model, load_model
from workbench.sae import SAE, SAEConfig
from workbench.store import ActivationStore
from workbench.train import TrainConfig, TrainResult, sae_dir, train


@dataclass
class TrainRunConfig:
    """What ``workbench train`` does: capture (or reuse) activations, train one SAE, evaluate it on held-out text."""

    out: str
    """Run folder: store, checkpoint, SAE and metrics.json (a re-run resumes from its checkpoint)."""
    model: str = "smollm2-135m"
    """Embedded model name, local folder or Hugging Face id."""
    hookpoint: str = "blocks.15.hook_mlp_out"
    """Hook point the SAE reads."""
    arch: Literal["relu", "topk", "batchtopk", "jumprelu", "gated", "topafa"] = "topk"
    """SAE architecture."""
    d_sae: int = 4608
    """Number of features."""
    k: int = 32
    """Active features per token (topk, batchtopk)."""
    relu_variant: Literal["april_update", "towards_monosemanticity"] = "april_update"
    """relu only: Anthropic's April 2024 update (L1 weighted by decoder norms, free decoder norms,
    gradient clipping at 1; SAELens's standard SAE) or Towards Monosemanticity (unit-norm decoder,
    plain L1). The April update reached loss recovered 0.82 at L0 13 where Towards
    Monosemanticity gave 0.79 at L0 37 on the default data (README)."""
    l1: float | None = None
    """Sparsity coefficient (L1 for relu and gated, L0 in DeepMind's units for jumprelu). None: the
    architecture's default in DEFAULT_L1, measured on this job's data (see README)."""
    tokens: int = 150_000
    """Training tokens to capture (ignored with --store)."""
    epochs: int = 8
    """Passes over the training tokens (8 beat 4 on the default data: held-out FVU 0.259 vs 0.281)."""
    batch_size: int = 1024
    """Activations per optimizer step."""
    lr: float | None = 2e-3
    """Adam learning rate. 2e-3 was best for TopK on SmolLM2's layer-15 MLP output with the default budget
    (150k tokens x 4 epochs: loss recovered 0.900 at sparsify's 3.8e-4, 0.928 at 1e-3, 0.945 at 2e-3);
    None: the trainer's default 2e-4 / sqrt(d_sae / 2**14), as sparsify, meant for much longer runs."""
    store: str | None = None
    """An existing activation store to train on instead of capturing into OUT/store."""
    corpus: str = EMBEDDED_CORPUS
    """Text for capture and evaluation (evaluation uses its held-out test split)."""
    ctx_len: int = 128
    """Tokens per context, BOS included."""
    eval_tokens: int = 32_768
    """Held-out tokens for the metrics (0 skips evaluation). 32,768 (258 contexts) puts the 95% interval of the
    default SAE's loss recovered within about +-0.02 (24,576 gave +-0.0205) in about 3 minutes on a 2-core CPU."""
    seed: int = 0
    """Seed of the data order and the SAE's initialisation."""
    device: str = "cpu"
    """Torch device, e.g. cpu or cuda."""

    def __post_init__(self) -> None:
        for name in ("d_sae", "k", "tokens", "epochs", "batch_size", "ctx_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.eval_tokens < 0:
            raise ValueError("eval_tokens must be >= 0")


def train_run(cfg: TrainRunConfig, *, model: Model | None = None, callbacks: list | None = None,
              progress: bool = True) -> tuple[TrainResult, dict]:
    """Run ``cfg`` end to end; returns the training result and the metrics written to OUT/metrics.json."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = model or load_model(cfg.model, device=cfg.device)
    if cfg.store:
        store = ActivationStore.open(cfg.store)
    else:
        capture_cfg = CaptureConfig(out=str(out / "store"), hookpoint=[cfg.hookpoint], model=cfg.model, tokens=cfg.tokens,
                                    corpus=cfg.corpus, ctx_len=cfg.ctx_len, seed=cfg.seed, device=cfg.device)
        store = capture_corpus(capture_cfg, model=model, progress=progress)
    torch.manual_seed(cfg.seed)
    sae = new_sae(cfg, store.d(cfg.hookpoint))
    train_cfg = train_config(cfg, store.n_rows)
    batches = store.batches(cfg.hookpoint, batch_size=cfg.batch_size, seed=cfg.seed, epochs=cfg.epochs,
                            drop_last=True, device=cfg.device)
    started = time.perf_counter()
    result = train(sae, batches, train_cfg, out_dir=out, callbacks=callbacks, progress=progress)
    seconds = time.perf_counter() - started
    metrics = {"config": asdict(cfg), "train": {**result.stats[0], "steps": train_cfg.steps, "seconds": seconds}}
    if cfg.eval_tokens:
        mean = activation_stats(store, cfg.hookpoint).mean
        evaluation = evaluate_sae(model, result.saes[0], cfg.hookpoint, tokens=cfg.eval_tokens, corpus=cfg.corpus,
                                  ctx_len=cfg.ctx_len, seed=cfg.seed, mean=mean, progress=progress)
        metrics.update(evaluation.to_dict())
    write_json(out / "metrics.json", metrics, default=float)
    return result, metrics


DEFAULT_L1 = {"relu": 2.0, "gated": 5.0, "jumprelu": 0.004}
"""Sparsity coefficients used when ``--l1`` is not given, measured on the default job (SmolLM2-135M layer
15 MLP output, 150k tokens x 8 epochs, 4,608 features; README): relu (April update) at 2 gave L0 55 and
loss recovered 0.90, where Anthropic's 5 gave L0 13 and 0.82 in this short run; jumprelu at 0.004 gave
L0 30 and 0.86; gated at 5 gave L0 45 and 0.86 (at 2 and 4: L0 234 and 77)."""


def sae_config(cfg: TrainRunConfig, d_in: int) -> SAEConfig:
    """The SAE's configuration for a run: ``cfg``'s fields, the architecture's default sparsity when ``cfg.l1`` is None."""
    l1 = cfg.l1 if cfg.l1 is not None else DEFAULT_L1.get(cfg.arch, 5.0)
    return SAEConfig(architecture=cfg.arch, d_in=d_in, d_sae=cfg.d_sae, k=cfg.k, l1_coefficient=l1,
                     relu_variant=cfg.relu_variant, hook_name=cfg.hookpoint, model_name=cfg.model, device=cfg.device)


def new_sae(cfg: TrainRunConfig, d_in: int) -> SAE:
    """A freshly initialised SAE as ``cfg`` describes it (seed the RNG first for a reproducible init)."""
    return SAE.from_config(sae_config(cfg, d_in))


def train_config(cfg: TrainRunConfig, n_rows: int) -> TrainConfig:
    """The trainer's settings for ``cfg.epochs`` passes over ``n_rows`` activations.

    Warm-up is 10% of the steps (at most 100), the learning rate decays linearly to 0 over the
    last 20%, and a feature counts as dead after half an epoch (at least 100k tokens) without firing.
    ReLU SAEs resample their dead features 4 times, every eighth of the run (Towards
    Monosemanticity), and warm the L1 coefficient up over the first 5% of steps (April update);
    the April update's variant also clips the gradient norm at 1, as published.
    """
    steps = cfg.epochs * (n_rows // cfg.batch_size)
    if steps == 0:
        raise ValueError(f"the store holds {n_rows} rows, fewer than one batch of {cfg.batch_size}; "
                         "capture more tokens or lower --batch-size")
    relu = cfg.arch == "relu"
    return TrainConfig(steps=steps, lr=cfg.lr, lr_warmup_steps=min(100, steps // 10), lr_decay_steps=steps // 5,
                       checkpoint_every=max(50, steps // 10), seed=cfg.seed, dead_window=max(100_000, n_rows // 2),
                       resample_every=max(1, steps // 8) if relu else None,
                       sparsity_warmup_steps=steps // 20 if cfg.arch in ("relu", "gated", "jumprelu") else 0,
                       max_grad_norm=1.0 if relu and cfg.relu_variant == "april_update" else None)


@dataclass
class SAEEvaluation:
    """An SAE measured on held-out text: reconstruction and sparsity, epsilon-LBO, and loss recovered."""

    heldout: dict
    """Which text: corpus, split and number of tokens."""
    reconstruction: ReconstructionMetrics
    """MSE, FVU, L0, dead and dense fractions, per-feature density."""
    loss_recovered: LossRecovered
    """Cross-entropy with the SAE spliced in vs clean, zero-, mean- (and skip-) ablation."""
    afa: AFAMetrics | None = None
    """Epsilon-LBO of Lee et al. 2025 and the ZF-plot sample, on the same activations as ``reconstruction``."""

    @property
    def summary(self) -> str:
        """One sentence with 95% intervals: the loss the SAE adds, against the fair baseline of its hook point."""
        return self.loss_recovered.sentence()

    def rows(self) -> list[tuple[str, str, str]]:
        """``(figure, value, 95% interval)`` rows for a report table, formatted."""
        rc, lr = self.reconstruction, self.loss_recovered

        def ci(name: str, spec: str = ".4f") -> str:
            interval = lr.ci.get(name)
            return "" if interval is None else f"{interval.low:{spec}} to {interval.high:{spec}}"

        fvu_ci = "" if rc.fvu_ci is None else f"{rc.fvu_ci.low:.4f} to {rc.fvu_ci.high:.4f}"
        rows = [
            ("held-out tokens (contexts)", f"{rc.n_tokens:,} ({lr.n_contexts})", ""),
            ("fraction of variance unexplained (FVU)", f"{rc.fvu:.4f}", fvu_ci),
        ]
        if self.afa is not None:
            afa = self.afa
            afa_ci = "" if afa.eps_lbo_ci is None else f"{afa.eps_lbo_ci.low:.4g} to {afa.eps_lbo_ci.high:.4g}"
            rows += [("εLBO, mean over tokens (Lee et al. 2025; lower is better)", f"{afa.eps_lbo:.4g}", afa_ci),
                     ("εLBO, median over tokens", f"{afa.eps_lbo_median:.4g}", "")]
        rows += [
            ("MSE per token", f"{rc.mse_per_token:.4g}", ""),
            ("L0 (active features per token)", f"{rc.l0_mean:.1f}", ""),
            ("dead features (never fired on held-out text)", f"{rc.dead_fraction:.1%}", ""),
            ("dense features (fire on > 10% of tokens)", f"{rc.dense_fraction:.1%}", ""),
            ("CE clean (nats/token)", f"{lr.ce_clean:.4f}", ci("ce_clean")),
            ("CE with the SAE spliced in", f"{lr.ce_sae:.4f}", ci("ce_sae")),
            ("CE increase from the SAE (nats/token)", f"{lr.ce_increase:+.4f}", ci("ce_increase")),
            ("KL(clean || SAE) per token", f"{lr.kl:.4f}", ci("kl")),
            ("CE with the activation zero-ablated", f"{lr.ce_zero:.4f}", ci("ce_zero")),
            ("loss recovered vs zero-ablation", f"{lr.loss_recovered:.3f}", ci("loss_recovered", ".3f")),
        ]
        if lr.ce_mean is not None:
            rows += [("CE with the activation mean-ablated", f"{lr.ce_mean:.4f}", ci("ce_mean")),
                     ("loss recovered vs mean-ablation", f"{lr.loss_recovered_mean:.3f}",
                      ci("loss_recovered_mean", ".3f"))]
        if lr.ce_skip is not None:
            rows += [(f"CE with block {lr.skip_layer} skipped", f"{lr.ce_skip:.4f}", ci("ce_skip")),
                     ("loss recovered vs skipping the block", f"{lr.loss_recovered_skip:.3f}",
                      ci("loss_recovered_skip", ".3f"))]
        return rows

    def to_dict(self) -> dict:
        """JSON-able figures (feature densities left out)."""
        out = {"heldout": self.heldout, "reconstruction": self.reconstruction.to_dict(),
               "loss_recovered": self.loss_recovered.to_dict(), "summary": self.summary}
        if self.afa is not None:
            out["afa"] = self.afa.to_dict()
        return out


def evaluate_sae(model: Model, sae: SAE, hookpoint: str, *, tokens: int = 32_768, corpus: str = EMBEDDED_CORPUS,
                 ctx_len: int = 128, seed: int = 0, mean: torch.Tensor | None = None, batch_size: int = 16,
                 convention: str = "workbench", progress: bool = False) -> SAEEvaluation:
    """Reconstruction, sparsity, epsilon-LBO and loss-recovered metrics on ``tokens`` held-out tokens (the
    corpus's test split), from one pass of the model per batch."""
    n_contexts = -(-tokens // (ctx_len - 1))
    contexts = token_contexts(model.tokenizer, corpus, n_contexts=n_contexts, ctx_len=ctx_len, seed=seed, split="test",
                              bos_token_id=model.bos_token_id)
    recon, recovered, afa = faithfulness(model, sae, hookpoint, contexts, batch_size=batch_size, mean=mean,
                                         convention=convention, progress=progress)
    heldout = {"corpus": corpus, "split": "test", "tokens": recon.n_tokens, "contexts": recon.n_contexts}
    return SAEEvaluation(heldout, recon, recovered, afa)


def load_run_sae(path: str | Path) -> SAE:
    """The SAE of a run folder (``DIR/sae_0``) or an SAE folder itself."""
    path = Path(path)
    return SAE.load(sae_dir(path, 0) if (sae_dir(path, 0) / "cfg.json").exists() else path)


def run_config(path: str | Path) -> dict:
    """The settings ``workbench train`` recorded in a run folder's metrics.json ({} if there is none)."""
    metrics = Path(path) / "metrics.json"
    if not metrics.is_file():
        return {}
    try:
        return json.loads(metrics.read_text()).get("config", {})
    except json.JSONDecodeError as err:
        raise ValueError(f"{metrics} is not valid JSON ({err}); re-run `workbench train` or pass the settings") from err
