"""Quality of SAEs trained on the embedded model with the default budget, one JSON line per run.

Trains each requested (hook point, architecture) on the first ``--rows`` rows of one store and
measures it on held-out text (the corpus's test split): FVU, L0, dead fraction, CE clean / with the
SAE / zero-ablated, CE increase in nats, KL and loss recovered, each with its 95% interval
(bootstrap over held-out contexts). The same recipe as
``workbench train`` (``pipeline.train_config``), with the data held in memory.

    workbench capture --hookpoint blocks.15.hook_mlp_out --hookpoint blocks.15.hook_resid_post \\
        --tokens 150000 --out runs/l15
    python bench/sae_quality.py --store runs/l15 --run blocks.15.hook_mlp_out:topk \\
        --run blocks.15.hook_resid_post:topk --run blocks.15.hook_mlp_out:relu --run blocks.15.hook_mlp_out:topafa

Each run takes minutes on a 2-core CPU (relu and topafa several: their encoders are dense).
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from workbench.models import load_model
from workbench.pipeline import TrainRunConfig, evaluate_sae, sae_config, train_config
from workbench.sae import SAE, SAEConfig
from workbench.store import ActivationStore
from workbench.train import train


def in_memory_batches(x: torch.Tensor, batch_size: int, epochs: int, seed: int):
    """Shuffled batches of ``x`` for ``epochs`` passes (drop_last)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - batch_size + 1, batch_size):
            yield x[order[start:start + batch_size]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="activation store holding the hook points of the runs")
    parser.add_argument("--run", action="append", required=True,
                        help="HOOKPOINT:ARCH or HOOKPOINT:ARCH:L1 (a sparsity coefficient for that run), repeatable")
    parser.add_argument("--rows", type=int, default=150_000, help="training rows (the first ones of the store)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--eval-tokens", type=int, default=TrainRunConfig.eval_tokens)
    parser.add_argument("--l1", type=float, default=TrainRunConfig.l1)
    parser.add_argument("--relu-variant", default=TrainRunConfig.relu_variant,
                        choices=["april_update", "towards_monosemanticity"])
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override an SAEConfig field of every run, e.g. jumprelu_init_threshold=0.04 (repeatable)")
    parser.add_argument("--save", help="save each trained SAE under SAVE/HOOKPOINT-ARCH (for bench/afa_compare.py)")
    for name in ("d_sae", "k", "epochs", "batch_size", "lr", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float if name == "lr" else int,
                            default=getattr(TrainRunConfig, name))
    args = parser.parse_args()

    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or name not in {f.name for f in fields(SAEConfig)}:
            parser.error(f"--set {item!r}: expected FIELD=VALUE with FIELD an SAEConfig field")
        try:  # a Python literal (0.04, 256, True, None), else the string itself (april_update)
            overrides[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[name] = value
    store = ActivationStore.open(args.store)
    model = load_model(args.model)
    for run_spec in args.run:
        hookpoint, arch, *l1 = run_spec.split(":")  # HOOKPOINT:ARCH or HOOKPOINT:ARCH:L1
        l1 = float(l1[0]) if l1 else args.l1
        cfg = TrainRunConfig(out="", model=args.model, hookpoint=hookpoint, arch=arch, d_sae=args.d_sae, k=args.k,
                             l1=l1, relu_variant=args.relu_variant, epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr, seed=args.seed)
        x = store.rows(hookpoint, 0, min(args.rows, store.n_rows)).float()
        torch.manual_seed(cfg.seed)
        sae = SAE.from_config(replace(sae_config(cfg, x.shape[1]), **overrides))
        train_cfg = train_config(cfg, len(x))  # no out_dir: nothing is checkpointed
        started = time.perf_counter()
        result = train(sae, in_memory_batches(x, cfg.batch_size, cfg.epochs, cfg.seed), train_cfg, progress=False)
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        evaluation = evaluate_sae(model, result.saes[0], hookpoint, tokens=args.eval_tokens, mean=x.mean(0))
        lr, rc = evaluation.loss_recovered, evaluation.reconstruction
        if args.save:
            result.saes[0].save(Path(args.save) / f"{hookpoint}-{arch}")
        print(json.dumps({
            "hookpoint": hookpoint, "arch": arch, "rows": len(x), "epochs": cfg.epochs, "lr": cfg.lr,
            "d_sae": cfg.d_sae, "k": cfg.k if arch in ("topk", "batchtopk") else None,
            "l1": sae.cfg.l1_coefficient if arch in ("relu", "gated", "jumprelu") else None,
            "train_s": round(train_s, 1), "eval_s": round(time.perf_counter() - started, 1),
            "heldout_tokens": lr.n_tokens, "fvu": round(rc.fvu, 4), "l0_mean": round(rc.l0_mean, 2),
            "l0_quantiles": rc.l0_quantiles, "dead_fraction": round(rc.dead_fraction, 4),
            "ce_clean": round(lr.ce_clean, 4), "ce_sae": round(lr.ce_sae, 4), "ce_zero": round(lr.ce_zero, 4),
            "ce_increase": round(lr.ce_increase, 4), "kl": round(lr.kl, 4),
            "loss_recovered": round(lr.loss_recovered, 4),
            "loss_recovered_skip": None if lr.loss_recovered_skip is None else round(lr.loss_recovered_skip, 4),
            "ci95": {**{name: [round(v, 4) for v in ci] for name, ci in lr.ci.items()},
                     "fvu": None if rc.fvu_ci is None else [round(v, 4) for v in rc.fvu_ci]},
            "overrides": overrides, "eps_lbo": None if evaluation.afa is None else round(evaluation.afa.eps_lbo, 4),
            "summary": evaluation.summary,
        }, default=float), flush=True)


if __name__ == "__main__":
    main()
