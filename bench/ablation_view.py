"""Cost of the feature-ablation view against one clean forward pass.

On one 128-token text of the embedded corpus's held-out split, times
:func:`workbench.ablation.feature_ablation` for one feature and for eight at once, both
methods, against one plain forward pass of the Hugging Face model (``model.hf(ids)``, no
nnsight); runs alternate so that machine noise hits all alike, and the median of ``--repeats``
runs is reported, in wall-clock seconds and in the process's CPU seconds (which other jobs on a
shared machine disturb less; with ``--threads 1`` it counts the work itself). The features are the text's most active ones (by total activation). The
acceptance: one feature, method "full", costs at most 2 forward passes. Also checks the
"full" result for the first feature against a brute-force forward with a plain transformers
hook. Prints a table, then one JSON line.

    python bench/ablation_view.py [--sae /tmp/freshD/build/01_quickstart/sae_0] [--repeats 9] [--threads N] [--device cpu]

Without ``--sae`` it takes the quickstart's SAE at the path above if it exists, else a randomly
initialised TopK SAE of the same shape at blocks.15.hook_mlp_out (the timings depend on the
shapes only; its effects mean nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from workbench.ablation import feature_ablation
from workbench.capture import run_to
from workbench.data import EMBEDDED_CORPUS, token_contexts
from workbench.models import load_model
from workbench.sae import SAE, SAEConfig

QUICKSTART_SAE = Path("/tmp/freshD/build/01_quickstart/sae_0")


def brute_force_delta(model, sae, hookpoint: str, ids: torch.Tensor, feature: int) -> torch.Tensor:
    """delta[t] for one feature from two plain forward passes, the ablation in a transformers hook."""
    point = model.hookpoint(hookpoint)

    def ablate(x):
        a = sae.encode(x).feature_acts[..., feature].clone()
        a[:, 0] = 0  # the BOS position stays clean, as in feature_ablation
        return x - a[..., None] * sae.W_dec[feature]

    with torch.inference_mode():
        clean = torch.log_softmax(model.hf(ids[None]).logits[0].float(), -1)
    module = model.hf.get_submodule(point.module)
    if point.io == "input":
        handle = module.register_forward_pre_hook(lambda m, args: (ablate(args[0]), *args[1:]))
    else:
        handle = module.register_forward_hook(
            lambda m, args, out: (ablate(out[0]), *out[1:]) if isinstance(out, tuple) else ablate(out))
    with torch.inference_mode():
        try:
            ablated = torch.log_softmax(model.hf(ids[None]).logits[0].float(), -1)
        finally:
            handle.remove()
    rows = torch.arange(len(ids) - 1, device=ids.device)
    delta = torch.zeros(len(ids), device=ids.device)
    delta[1:] = ablated[rows, ids[1:]] - clean[rows, ids[1:]]
    return delta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sae", default=None, help="SAE folder (default: the quickstart's, else a random SAE)")
    parser.add_argument("--hookpoint", default="blocks.15.hook_mlp_out", help="for the random SAE only")
    parser.add_argument("--ctx-len", type=int, default=128)
    parser.add_argument("--features", type=int, default=8, help="how many features for the multi-feature timing")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, device=args.device)
    sae_path = Path(args.sae) if args.sae else (QUICKSTART_SAE if QUICKSTART_SAE.exists() else None)
    if sae_path is not None:
        sae, source = SAE.load(sae_path, device=args.device), str(sae_path)
    else:
        cfg = SAEConfig("topk", d_in=model.hookpoint(args.hookpoint).width, d_sae=4608, k=32,
                        hook_name=args.hookpoint, device=args.device)
        sae, source = SAE.from_config(cfg), "random topk (timings only)"
    hookpoint = sae.cfg.hook_name
    ids = token_contexts(model.tokenizer, EMBEDDED_CORPUS, n_contexts=1, ctx_len=args.ctx_len, split="test",
                         bos_token_id=model.bos_token_id)[0].to(model.device)
    with torch.inference_mode():
        acts = sae.encode(run_to(model, [hookpoint], ids[None])[hookpoint][0, 1:].float()).feature_acts
    top = acts.sum(0).topk(args.features).indices.tolist()

    def sync():
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    runs = {
        "forward": lambda: model.hf(ids[None]),
        "full_1": lambda: feature_ablation(model, sae, ids, top[:1]),
        "direct_1": lambda: feature_ablation(model, sae, ids, top[:1], method="direct"),
        f"full_{args.features}": lambda: feature_ablation(model, sae, ids, top),
        f"direct_{args.features}": lambda: feature_ablation(model, sae, ids, top, method="direct"),
    }
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    times = {clock: {name: [] for name in runs} for clock in clocks}
    with torch.inference_mode():
        for run in runs.values():  # warm-up
            run()
        for _ in range(args.repeats):
            for name, run in runs.items():
                sync()
                start = {clock: now() for clock, now in clocks.items()}
                run()
                sync()
                for clock, now in clocks.items():
                    times[clock][name].append(now() - start[clock])
    medians = {clock: {name: statistics.median(v) for name, v in by_run.items()} for clock, by_run in times.items()}
    median = medians["wall"]

    full = feature_ablation(model, sae, ids, top[:1])
    brute = brute_force_delta(model, sae, hookpoint, ids, top[0]).cpu()
    max_diff = (full.delta[:, 0] - brute).abs().max().item()

    print(f"model {args.model} on {args.device}, SAE {source} at {hookpoint} (d_sae {sae.cfg.d_sae}), "
          f"{len(ids)} tokens, median of {args.repeats} runs (threads: {torch.get_num_threads()})")
    print(f"{'run':<12} {'wall s':>8} {'x forward':>10} {'cpu s':>8} {'x forward':>10}   wall-clock runs (s)")
    cpu = medians["cpu"]
    for name, value in median.items():
        runs_s = " ".join(f"{t:.3f}" for t in times["wall"][name])
        print(f"{name:<12} {value:>8.4f} {value / median['forward']:>10.2f} {cpu[name]:>8.4f} "
              f"{cpu[name] / cpu['forward']:>10.2f}   {runs_s}")
    print(f"features: {top}; full_1 vs brute force (plain transformers hook): max |delta diff| = {max_diff:.2e}, "
          f"max |delta| = {brute.abs().max().item():.3f}")
    result = {
        "device": args.device,
        "tokens": len(ids),
        "sae": source,
        "hookpoint": hookpoint,
        "threads": torch.get_num_threads(),
        "forward_s": median["forward"],
        **{f"{name}_s": value for name, value in median.items() if name != "forward"},
        **{f"{name}_ratio": value / median["forward"] for name, value in median.items() if name != "forward"},
        **{f"{name}_cpu_ratio": value / cpu["forward"] for name, value in cpu.items() if name != "forward"},
        "full_1_vs_brute_force_max_abs_diff": max_diff,
        "acceptance_full_1_at_most_2_forwards": median["full_1"] <= 2 * median["forward"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
