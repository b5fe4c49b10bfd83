"""Whole-step training throughput of a TopK SAE: workbench's train() vs sparsify's and SAELens's trainers.

Each library runs its trainer's whole step on the same in-memory batches, from the same initial
weights, with a share of latents that can never fire, so AuxK has dead latents every step:

- workbench: the real ``workbench.train.train()`` (dead-feature counters, finite checks, lr
  schedule, window sums, a log row every ``--log-every`` steps; no progress bar or checkpoints).
- sparsify: the per-step work of ``sparsify.Trainer.fit`` for ``loss_fn="fvu"`` with Adam (its
  default optimizer is signum) and ``auxk_alpha=1/32`` (its default is 0: AuxK off), copied from
  its fit loop and hook: decoder renormalised before the forward, the dead mask and total
  variance, ``did_fire`` marking, ``float()`` of the FVU and AuxK every step, the
  parallel-gradient removal, Adam, the linear warm-up/decay schedule, the dead counters, and
  the dead fraction read every ``--log-every`` steps (its ``wandb_log_frequency``).
- SAELens: the real ``SAETrainer.fit`` for a ``TopKTrainingSAE`` (its defaults), with the
  train-step log dict built every ``--log-every`` steps (its ``wandb_log_frequency``) and sent
  to a stand-in for wandb, evaluations and checkpoints off.

Steps are interleaved: each trainer runs in its own thread and takes its batches from a feed
that hands out one batch per turn, the libraries taking turns step by step, so all see the same
machine load. A step's time runs from its batch leaving the feed to the trainer asking for the
next one, so it covers everything the trainer does per step. The first ``--warmup`` steps are
dropped. Prints one JSON line per library and, last, one with the ratios (workbench / peer).

    python bench/train_throughput.py                       # TopK 576 x 9216, k 32, batch 4096, CPU
    python bench/train_throughput.py --device cuda --d-in 2304 --d-sae 65536 --k 64

Peers come from the ``bench`` extra (``pip install -e ".[bench]"``); a missing one is reported
as not installed and left out of the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator

import torch

from workbench.sae import SAE, SAEConfig
from workbench.train import TrainConfig, train

Runner = Callable[[Iterator[torch.Tensor], dict[str, torch.Tensor], argparse.Namespace], None]


# ---- the trainers -----------------------------------------------------------------------------
def run_workbench(batches: Iterator[torch.Tensor], init: dict[str, torch.Tensor], args: argparse.Namespace) -> None:
    sae = SAE.from_config(SAEConfig("topk", d_in=args.d_in, d_sae=args.d_sae, k=args.k, device=args.device,
                                    dtype=args.dtype))  # fmt: skip
    sae.load_state_dict(init)
    cfg = TrainConfig(steps=args.n_steps, lr_warmup_steps=args.lr_warmup_steps, log_every=args.log_every,
                      dead_window=args.dead_steps * args.batch_size)  # fmt: skip
    train(sae, batches, cfg, progress=False)


def run_sparsify(batches: Iterator[torch.Tensor], init: dict[str, torch.Tensor], args: argparse.Namespace) -> None:
    from sparsify import SparseCoder, SparseCoderConfig
    from torch.optim.lr_scheduler import LambdaLR

    device, n_steps, warmup = args.device, args.n_steps, args.lr_warmup_steps
    sae = SparseCoder(args.d_in, SparseCoderConfig(num_latents=args.d_sae, k=args.k), device,
                      dtype=getattr(torch, args.dtype))  # fmt: skip
    with torch.no_grad():
        sae.encoder.weight.copy_(init["W_enc"].T)
        sae.encoder.bias.copy_(init["b_enc"])
        sae.W_dec.copy_(init["W_dec"])
        sae.b_dec.copy_(init["b_dec"])
    auxk_alpha, threshold = 1 / 32, args.dead_steps * args.batch_size
    adam = torch.optim.Adam([dict(params=sae.parameters(), lr=2e-4 / (args.d_sae / 2**14) ** 0.5)])

    def linear_schedule_with_warmup(step: int) -> float:  # transformers' get_linear_schedule_with_warmup
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (n_steps - step) / max(1, n_steps - warmup))

    scheduler = LambdaLR(adam, linear_schedule_with_warmup)
    num_tokens_since_fired = torch.zeros(args.d_sae, device=device, dtype=torch.long)
    did_fire = torch.zeros(args.d_sae, device=device, dtype=torch.bool)
    avg_fvu = avg_auxk = 0.0
    num_tokens_in_step = 0
    for step, x in enumerate(batches):
        num_tokens_in_step += x.shape[0]
        # the forward hook
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = num_tokens_since_fired > threshold
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        avg_fvu += float(out.fvu.detach() / args.log_every)
        avg_auxk += float(out.auxk_loss.detach() / args.log_every)
        loss = out.fvu + auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.div(1).backward()
        # the optimizer step
        sae.remove_gradient_parallel_to_decoder_directions()
        adam.step()
        adam.zero_grad()
        scheduler.step()
        with torch.no_grad():
            num_tokens_since_fired += num_tokens_in_step
            num_tokens_since_fired[did_fire] = 0
            num_tokens_in_step = 0
            did_fire.zero_()
        if (step + 1) % args.log_every == 0:  # its wandb log: the dead share read, the averages reset
            mask = num_tokens_since_fired > threshold
            mask.mean(dtype=torch.float32).item()
            avg_fvu = avg_auxk = 0.0


def run_saelens(batches: Iterator[torch.Tensor], init: dict[str, torch.Tensor], args: argparse.Namespace) -> None:
    import sae_lens.training.sae_trainer as sae_trainer
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    # The log dicts are built as in a run with wandb, and sent nowhere.
    sae_trainer.wandb = types.SimpleNamespace(log=lambda *a, **k: None, Histogram=lambda *a, **k: None)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k, device=args.device,
                                                dtype=args.dtype, aux_loss_coefficient=1 / 32))  # fmt: skip
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(init[name])
    logger = LoggingConfig(log_to_wandb=True, wandb_log_frequency=args.log_every, eval_every_n_wandb_logs=10**9)
    cfg = SAETrainerConfig(total_training_samples=args.n_steps * args.batch_size,
                           train_batch_size_samples=args.batch_size, lr=2e-4, lr_end=2e-5,
                           lr_warm_up_steps=args.lr_warmup_steps, device=args.device,
                           dead_feature_window=args.dead_steps, logger=logger)  # fmt: skip
    sae_trainer.SAETrainer(cfg, sae, batches).fit()


LIBRARIES: dict[str, Runner] = {"workbench": run_workbench, "sparsify": run_sparsify, "saelens": run_saelens}


# ---- interleaving -----------------------------------------------------------------------------
class Lane:
    """One trainer in its thread, fed one batch per turn; records each step's time."""

    def __init__(self, name: str, runner: Runner, data: list[torch.Tensor], init: dict[str, torch.Tensor],
                 args: argparse.Namespace):  # fmt: skip
        self.name, self.times, self.error = name, [], None
        self.turn, self.done = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, args=(runner, data, init, args), daemon=True)

    def _feed(self, data: list[torch.Tensor], n: int) -> Iterator[torch.Tensor]:
        for i in range(n):
            self.turn.wait()
            self.turn.clear()
            start = time.perf_counter()
            yield data[i % len(data)]
            self.times.append(time.perf_counter() - start)  # the trainer asks for the next batch
            self.done.set()

    def _run(self, runner: Runner, data: list[torch.Tensor], init: dict[str, torch.Tensor],
             args: argparse.Namespace) -> None:  # fmt: skip
        try:
            runner(self._feed(data, args.n_steps), init, args)
        except BaseException as exc:  # reported, not raised: the other lanes go on
            self.error = exc
        finally:
            self.done.set()

    def step(self) -> None:
        """Let the trainer take one batch, and wait until it asks for the next (or stops)."""
        self.done.clear()
        self.turn.set()
        while not self.done.wait(0.05):
            if not self.thread.is_alive():
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=9216)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--dead-fraction", type=float, default=0.1,
                        help="share of latents that can never fire (encoder bias -1e3), dead after --dead-steps")
    parser.add_argument("--dead-steps", type=int, default=2, help="steps without firing after which a latent is dead")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per library")
    parser.add_argument("--warmup", type=int, default=4, help="untimed first steps (init, allocator, Adam state)")
    parser.add_argument("--log-every", type=int, default=10, help="each trainer's logging interval, in steps")
    parser.add_argument("--lr-warmup-steps", type=int, default=1000)
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=list(LIBRARIES))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # The last step is not timed (no trainer asks for a batch after it).
    args.n_steps = args.warmup + args.steps + 1

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    data = [torch.randn(args.batch_size, args.d_in, device=args.device, dtype=dtype) for _ in range(4)]
    reference = SAE.from_config(SAEConfig("topk", d_in=args.d_in, d_sae=args.d_sae, k=args.k, device=args.device,
                                          dtype=args.dtype))  # fmt: skip
    with torch.no_grad():
        reference.b_enc[torch.randperm(args.d_sae)[: round(args.dead_fraction * args.d_sae)]] = -1e3
    init = {k: v.detach().clone() for k, v in reference.state_dict().items()}

    lanes = []
    for name in args.libraries:
        try:
            __import__({"workbench": "workbench", "sparsify": "sparsify", "saelens": "sae_lens"}[name])
        except ImportError as exc:
            print(json.dumps({"library": name, "error": f"not installed ({exc}); pip install -e '.[bench]'"}))
            continue
        lanes.append(Lane(name, LIBRARIES[name], data, init, args))
    for lane in lanes:
        lane.thread.start()
    for turn in range(args.n_steps):
        for lane in lanes if turn % 2 == 0 else lanes[::-1]:
            lane.step()
    for lane in lanes:
        lane.thread.join()

    setting = {"d_in": args.d_in, "d_sae": args.d_sae, "k": args.k, "batch_size": args.batch_size,
               "device": args.device, "dtype": args.dtype, "dead_fraction": args.dead_fraction,
               "log_every": args.log_every, "threads": torch.get_num_threads()}  # fmt: skip
    rate = {}
    for lane in lanes:
        times = lane.times[args.warmup : args.warmup + args.steps]
        if lane.error is not None or len(times) < args.steps:
            print(json.dumps({"library": lane.name, "error": repr(lane.error) or "ran short", **setting}))
            continue
        rate[lane.name] = 1 / statistics.median(times)
        print(json.dumps({"library": lane.name, "steps_per_s": round(rate[lane.name], 3),
                          "activations_per_s": round(rate[lane.name] * args.batch_size),
                          "median_step_ms": round(1e3 * statistics.median(times), 1),
                          "mean_step_ms": round(1e3 * statistics.fmean(times), 1), **setting}))  # fmt: skip
    ratios = {f"workbench/{peer}": round(rate["workbench"] / rate[peer], 3)
              for peer in rate if peer != "workbench" and "workbench" in rate}  # fmt: skip
    print(json.dumps({"ratios": ratios, **setting}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
