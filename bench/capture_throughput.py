"""Capture throughput: workbench's nnsight capture vs a plain forward hook with early stop.

Both read the same hook point on the same batches of real text; runs alternate so that
machine noise hits both alike. Prints a table, then one JSON line with ``ratio``
(workbench tokens/s over plain tokens/s) and ``max_abs_diff`` between the two captures.

    python bench/capture_throughput.py [--model smollm2-135m] [--hookpoint blocks.15.hook_mlp_out]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from workbench.capture import run_to
from workbench.data import EMBEDDED_CORPUS, token_contexts
from workbench.models import load_model


class _Stop(Exception):
    pass


def plain_capture(hf, module_path: str, io: str, ids: torch.Tensor) -> torch.Tensor:
    """A plain transformers forward with one hook that keeps the activation and stops the pass."""
    got = []

    def keep(value):
        got.append(value[0] if isinstance(value, tuple) else value)
        raise _Stop

    module = hf.get_submodule(module_path)
    if io == "input":
        handle = module.register_forward_pre_hook(lambda m, args: keep(args[0]))
    else:
        handle = module.register_forward_hook(lambda m, args, out: keep(out))
    try:
        with torch.inference_mode():
            hf(input_ids=ids)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hookpoint", default="blocks.15.hook_mlp_out")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ctx-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model = load_model(args.model, device=args.device)
    point = model.hookpoint(args.hookpoint)
    contexts = token_contexts(model.tokenizer, EMBEDDED_CORPUS, n_contexts=args.batches * args.batch_size,
                              ctx_len=args.ctx_len, bos_token_id=model.bos_token_id)
    batches = [ids.to(model.device) for ids in contexts.split(args.batch_size)]
    n_tokens = contexts.numel()

    def sync():
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    def run_workbench():
        return [run_to(model, [point.name], ids)[point.name] for ids in batches]

    def run_plain():
        return [plain_capture(model.hf, point.module, point.io, ids) for ids in batches]

    run_workbench(), run_plain()  # warm-up
    times = {"workbench": [], "plain": []}
    for _ in range(args.repeats):
        for name, fn in (("workbench", run_workbench), ("plain", run_plain)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    ours, theirs = run_workbench(), run_plain()
    max_abs_diff = max((a - b).abs().max().item() for a, b in zip(ours, theirs))
    speed = {name: n_tokens / statistics.median(t) for name, t in times.items()}
    for name, tokens_per_s in speed.items():
        print(f"{name:>10}: {tokens_per_s:10.0f} tokens/s  (median of {args.repeats} runs of {n_tokens} tokens)")
    print(json.dumps({
        "model": args.model, "hookpoint": args.hookpoint, "device": str(model.device), "tokens": n_tokens,
        "workbench_tokens_per_s": round(speed["workbench"], 1), "plain_tokens_per_s": round(speed["plain"], 1),
        "ratio": round(speed["workbench"] / speed["plain"], 4), "max_abs_diff": max_abs_diff,
    }))


if __name__ == "__main__":
    main()
