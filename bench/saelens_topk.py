"""Train a TopK SAE with SAELens's own trainer on a workbench store and save it as a SAELens folder.

A peer's SAE on the same data, for comparisons that need one (``bench/afa_compare.py``,
``workbench eval``): SAELens 6's ``TopKTrainingSAE`` and ``SAETrainer.fit()`` on the first
``--rows`` rows of the store at ``--hookpoint``, inputs scaled to ``E ||x|| = sqrt(d_in)`` as
SAELens's activation store does, the scale folded back into the weights before
``save_model`` writes the folder (so the folder reads raw activations). Learning rate, warm-up,
steps and batch size follow workbench's default recipe (``pipeline.train_config``) unless given,
so the two trainers differ only in their own code.

    python bench/saelens_topk.py --store runs/topk/store --out runs/saelens_topk
    workbench eval runs/saelens_topk --model smollm2-135m     # held-out figures, epsilon-LBO included

SAELens is about 5x slower per step than workbench on CPU (``bench/train_throughput.py``): the
default 1,168 steps take about 25 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import types
from pathlib import Path

import torch

from workbench.pipeline import TrainRunConfig, train_config
from workbench.store import ActivationStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="activation store (a workbench capture)")
    parser.add_argument("--out", required=True, help="folder SAELens writes (save_model)")
    parser.add_argument("--hookpoint", default=TrainRunConfig.hookpoint)
    parser.add_argument("--model", default=TrainRunConfig.model, help="model name recorded in the folder's metadata")
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument("--d-sae", type=int, default=TrainRunConfig.d_sae)
    parser.add_argument("--k", type=int, default=TrainRunConfig.k)
    parser.add_argument("--epochs", type=int, default=TrainRunConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=TrainRunConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainRunConfig.lr)
    parser.add_argument("--seed", type=int, default=TrainRunConfig.seed)
    args = parser.parse_args()

    import sae_lens.training.sae_trainer as sae_trainer
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    store = ActivationStore.open(args.store)
    if args.hookpoint not in store.hookpoints:
        raise SystemExit(f"hook point {args.hookpoint!r} is not in {store.path} (it holds {', '.join(store.hookpoints)})")
    x = store.rows(args.hookpoint, 0, min(args.rows, store.n_rows)).float()
    scale = math.sqrt(x.shape[1]) / float(x.norm(dim=1).mean())
    run = TrainRunConfig(out="", hookpoint=args.hookpoint, d_sae=args.d_sae, k=args.k, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    schedule = train_config(run, len(x))

    def batches():
        generator = torch.Generator().manual_seed(args.seed)
        while True:  # SAETrainer stops itself after total_training_samples
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x) - args.batch_size + 1, args.batch_size):
                yield x[order[start:start + args.batch_size]] * scale

    torch.manual_seed(args.seed)
    sae_trainer.wandb = types.SimpleNamespace(log=lambda *a, **k: None, Histogram=lambda *a, **k: None)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=args.d_sae, k=args.k,
                                                aux_loss_coefficient=1 / 32))  # fmt: skip
    sae.cfg.metadata.hook_name = args.hookpoint
    sae.cfg.metadata.model_name = args.model
    logger = LoggingConfig(log_to_wandb=False)
    cfg = SAETrainerConfig(total_training_samples=schedule.steps * args.batch_size,
                           train_batch_size_samples=args.batch_size, lr=args.lr, lr_scheduler_name="constant",
                           lr_warm_up_steps=schedule.lr_warmup_steps, lr_decay_steps=schedule.lr_decay_steps,
                           lr_end=0.0, dead_feature_window=max(1, schedule.dead_window // args.batch_size),
                           logger=logger)  # fmt: skip
    sae_trainer.SAETrainer(cfg, sae, batches()).fit()
    sae.fold_activation_norm_scaling_factor(scale)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sae.save_model(out)
    print(json.dumps({"out": str(out), "steps": schedule.steps, "rows": len(x), "scale": scale}))


if __name__ == "__main__":
    main()
