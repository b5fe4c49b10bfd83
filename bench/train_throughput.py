"""Training throughput of a TopK SAE: workbench vs SAELens vs sparsify, on the same random activations.

One full training step each (forward, backward, the library's gradient/weight constraints,
Adam step, dead-latent bookkeeping as its own trainer does it), timed interleaved so that
all libraries see the same machine load. Prints one JSON line per library and, last, one
JSON line with the ratios (workbench / peer).

    python bench/train_throughput.py                       # TopK 576 x 9216, k 32, batch 4096, CPU
    python bench/train_throughput.py --device cuda --d-in 2304 --d-sae 65536 --k 64

Peers come from the ``bench`` extra (``pip install -e ".[bench]"``); a missing one is reported
as not installed and left out of the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch

from workbench.sae import SAE, SAEConfig


def workbench_step(x: torch.Tensor, args: argparse.Namespace, dead: torch.Tensor | None) -> Callable[[], None]:
    """One step of workbench's trainer for a TopK SAE with AuxK."""
    sae = SAE.from_config(SAEConfig("topk", d_in=args.d_in, d_sae=args.d_sae, k=args.k, device=args.device,
                                    dtype=args.dtype))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=args.device.startswith("cuda") or None)
    since_fired = torch.zeros(args.d_sae, dtype=torch.long, device=args.device)

    def step() -> None:
        out = sae.training_forward(x, dead_mask=dead)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.constrain_gradients()
        opt.step()
        sae.constrain_weights()
        since_fired.add_(x.shape[0]).masked_fill_(out.fire_counts > 0, 0)

    return step


def sparsify_step(x: torch.Tensor, args: argparse.Namespace, dead: torch.Tensor | None) -> Callable[[], None]:
    """One step as sparsify's trainer does it: FVU + AuxK/32, parallel-gradient removal, unit-norm decoder."""
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(args.d_in, SparseCoderConfig(num_latents=args.d_sae, k=args.k), device=args.device,
                      dtype=getattr(torch, args.dtype))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    fired = torch.zeros(args.d_sae, dtype=torch.bool, device=args.device)

    def step() -> None:
        out = sae(x, dead_mask=dead)
        (out.fvu + out.auxk_loss / 32).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.set_decoder_norm_to_unit_norm()
        fired[out.latent_indices.flatten()] = True

    return step


def saelens_step(x: torch.Tensor, args: argparse.Namespace, dead: torch.Tensor | None) -> Callable[[], None]:
    """One step as SAELens's ``SAETrainer._train_step`` does it for a ``TopKTrainingSAE``."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    cfg = TopKTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k, device=args.device, dtype=args.dtype)
    sae = TopKTrainingSAE(cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    since_fired = torch.zeros(args.d_sae, device=args.device)
    freq = torch.zeros(args.d_sae, device=args.device)
    mask = dead if dead is not None else torch.zeros(args.d_sae, dtype=torch.bool, device=args.device)

    def step() -> None:
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=mask,
                                                       n_training_steps=0, is_logging_step=False))
        with torch.no_grad():
            firing = out.feature_acts.bool().float()
            since_fired.add_(1)
            since_fired[firing.sum(-2).bool()] = 0
            freq.add_(firing.sum(0))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return step


LIBRARIES = {"workbench": workbench_step, "saelens": saelens_step, "sparsify": sparsify_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=9216)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--dead-fraction", type=float, default=0.0,
                        help="fraction of latents marked dead, so that AuxK runs (0: no AuxK work)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per library (after 2 warm-up steps)")
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=list(LIBRARIES))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    x = torch.randn(args.batch_size, args.d_in, device=args.device, dtype=getattr(torch, args.dtype))
    dead = None
    if args.dead_fraction > 0:
        dead = torch.rand(args.d_sae, device=args.device) < args.dead_fraction
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    steps: dict[str, Callable[[], None]] = {}
    for name in args.libraries:
        try:
            steps[name] = LIBRARIES[name](x, args, dead)
        except ImportError as exc:
            print(json.dumps({"library": name, "error": f"not installed ({exc}); pip install -e '.[bench]'"}))
    for step in steps.values():  # warm-up: allocator, kernels, Adam state
        for _ in range(2):
            step()
    sync()

    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for rep in range(args.steps):
        for name in names if rep % 2 == 0 else names[::-1]:
            sync()
            start = time.perf_counter()
            steps[name]()
            sync()
            times[name].append(time.perf_counter() - start)

    setting = {"d_in": args.d_in, "d_sae": args.d_sae, "k": args.k, "batch_size": args.batch_size,
               "device": args.device, "dtype": args.dtype, "dead_fraction": args.dead_fraction,
               "threads": torch.get_num_threads()}
    rate = {}
    for name, values in times.items():
        rate[name] = args.batch_size / statistics.median(values)
        print(json.dumps({"library": name, "activations_per_s": round(rate[name]),
                          "median_step_ms": round(1e3 * statistics.median(values), 1), **setting}))
    ratios = {f"workbench/{peer}": round(rate["workbench"] / rate[peer], 3)
              for peer in rate if peer != "workbench" and "workbench" in rate}
    print(json.dumps({"ratios": ratios, **setting}))


if __name__ == "__main__":
    main()
