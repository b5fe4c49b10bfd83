"""The ``workbench`` command. Each subcommand parses the same dataclass its Python function takes."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys
import textwrap
import types
import typing
from typing import Any, Literal, get_args, get_origin


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, *, positional: tuple[str, ...] = ()) -> None:
    """One option per field of ``cls``: its type, default, choices and help come from the dataclass."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        kwargs: dict[str, Any] = {"help": docs.get(f.name, "").replace("%", "%%")}
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if not required:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kwargs["default"] = default
            kwargs["help"] += f" (default: {default})"
        args = get_args(kind)
        if get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:  # Optional[X]
            kind = next(a for a in args if a is not type(None))
            args = get_args(kind)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(kind) is Literal:
            kwargs["choices"], kwargs["type"] = list(args), type(args[0])
        elif get_origin(kind) is list:
            kwargs["action"], kwargs["type"] = "append", args[0]
            if not required:
                kwargs["default"] = None  # append to an empty list; the dataclass default applies if unset
        else:
            kwargs["type"] = kind
        if f.name in positional:
            kwargs.pop("default", None)
            parser.add_argument(f.name, **kwargs)
        else:
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, required=required, **kwargs)


def build_dataclass(cls: type, namespace: argparse.Namespace):
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)}
    return cls(**{name: value for name, value in values.items() if value is not None})


def _hookpoints(args: argparse.Namespace) -> None:
    from workbench.models import load_model

    model = load_model(args.model)
    print(f"{'hook point':<28} {'width':>6}  module")
    for point in model.hookpoints():
        print(f"{point.name:<28} {point.width:>6}  {point.module}.{point.io}")


def _capture(args: argparse.Namespace) -> None:
    from workbench.capture import CaptureConfig, capture_corpus

    cfg = build_dataclass(CaptureConfig, args)
    store = capture_corpus(cfg)
    print(json.dumps({"out": str(store.path), "rows": store.n_rows, "contexts": store.n_contexts,
                      "hookpoints": store.hookpoints}))


def _train(args: argparse.Namespace) -> None:
    from workbench.pipeline import TrainRunConfig, train_run

    _, metrics = train_run(build_dataclass(TrainRunConfig, args))
    print(json.dumps(metrics, indent=2, default=float))


def _eval(args: argparse.Namespace) -> None:
    from workbench.models import load_model
    from workbench.data import EMBEDDED_CORPUS
    from workbench.pipeline import evaluate_sae, load_run_sae, run_config

    sae = load_run_sae(args.dir)
    run = run_config(args.dir)
    hookpoint = args.hookpoint or sae.cfg.hook_name
    model = load_model(args.model or sae.cfg.model_name, device=args.device)
    metrics = evaluate_sae(model, sae.to(args.device), hookpoint, tokens=args.tokens,
                           corpus=args.corpus or run.get("corpus", EMBEDDED_CORPUS),
                           ctx_len=args.ctx_len or run.get("ctx_len", 128), seed=args.seed,
                           mean=_training_mean(args.dir, run, hookpoint), convention=args.convention, progress=True)
    print(json.dumps(metrics.to_dict(), indent=2, default=float))
    rc, afa = metrics.reconstruction, metrics.afa
    print(f"FVU {rc.fvu:.4f} ({rc.fvu_ci or 'no interval'}), epsilon-LBO {afa.eps_lbo:.4g} "
          f"({afa.eps_lbo_ci or 'no interval'}; median {afa.eps_lbo_median:.4g}) on {rc.n_tokens:,} held-out tokens",
          file=sys.stderr)
    print(metrics.summary, file=sys.stderr)


def _training_mean(run_dir: str, run: dict, hookpoint: str):
    """The hook point's mean over the run's training store (for mean-ablation), or None without a store."""
    from pathlib import Path

    from workbench.features import activation_stats
    from workbench.store import ActivationStore

    folder = Path(run.get("store") or Path(run_dir) / "store")
    if not (folder / "manifest.json").is_file():
        return None
    store = ActivationStore.open(folder)
    return activation_stats(store, hookpoint).mean if hookpoint in store.hookpoints else None


def _features(args: argparse.Namespace) -> None:
    import time
    from pathlib import Path

    from workbench.features import STATS_DIRNAME, FeatureStatsConfig, feature_stats
    from workbench.pipeline import load_run_sae, run_config
    from workbench.store import ActivationStore
    from workbench.train import sae_dir

    folder = Path(args.dir)
    sae_folder = sae_dir(folder, 0) if (sae_dir(folder, 0) / "cfg.json").exists() else folder
    sae = load_run_sae(folder).to(args.device)
    store_path = Path(args.store or run_config(folder).get("store") or folder / "store")
    if not (store_path / "manifest.json").is_file():
        raise ValueError(f"no activation store at {store_path}; pass --store STORE (a store of {sae.cfg.hook_name}, "
                         "e.g. from `workbench capture`)")
    model = None
    if args.logits:
        from workbench.models import load_model

        model = load_model(args.model or sae.cfg.model_name, device=args.device)
    out = Path(args.out) if args.out else sae_folder / STATS_DIRNAME
    start = time.perf_counter()
    stats = feature_stats(sae, ActivationStore.open(store_path), model=model, config=build_dataclass(FeatureStatsConfig, args),
                          out=out, progress=True)
    density = stats.density
    print(json.dumps({"out": str(out), "features": stats.n_features, "tokens": stats.n_tokens,
                      "dead": int((density == 0).sum()), "median_density": float(density.median()),
                      "logit_effects": bool(stats.meta.get("has_logits")), "seconds": round(time.perf_counter() - start, 1)}))


def _export(args: argparse.Namespace) -> None:
    from workbench.features import FeatureStats, stats_folder

    folder = stats_folder(args.dir)
    stats = FeatureStats.load(folder)
    if args.format == "html":
        from workbench.site import write_site

        write_site(stats, args.out)
        print(f"feature browser of {stats.n_features:,} features: open {args.out}/index.html (no server needed)")
    else:
        from workbench.neuronpedia import write_neuronpedia

        decoder = None
        if (folder.parent / "cfg.json").is_file():  # statistics saved next to their SAE: its decoder
            from workbench.sae import SAE   # gives SAEDashboard's unit-norm scale and neuron alignment

            decoder = SAE.load(folder.parent).W_dec.detach()
        write_neuronpedia(stats, args.out, decoder=decoder)
        print(f"Neuronpedia batches of {stats.n_features:,} features in {args.out}")


def _prepare(args: argparse.Namespace) -> None:
    from workbench import corpus
    from workbench.models import load_model

    model = load_model(args.model)
    print(f"{model.name}: {model.n_layers} layers, d_model {model.d_model}, ready")
    path = corpus.prepare(args.corpus_sdist)
    print(f"{corpus.NAME}: {corpus.N_DOCUMENTS} documents, sha256 {corpus.TEXT_SHA256[:12]}..., at {path}")


def _report(args: argparse.Namespace) -> int:
    from workbench import report

    if args.params:
        path = report.find_notebook(args.notebook)
        print(report.describe_parameters(path, report.notebook_parameters(path)))
        return 0
    runs = report.run_report(args.notebook, args.parameter, args.out, headline_keys=args.headline or (),
                             force=args.force, kernel_name=args.kernel)
    return 1 if any(run.status != "done" for run in runs) else 0


def parser() -> argparse.ArgumentParser:
    from workbench.capture import CaptureConfig
    from workbench.pipeline import TrainRunConfig

    main = argparse.ArgumentParser(prog="workbench", description="Sparse-autoencoder workbench for language models.")
    commands = main.add_subparsers(dest="command", required=True)

    sub = commands.add_parser("prepare", help="set up offline use: de-quantise and cache the embedded model, "
                                                "fetch and check the embedded corpus")
    sub.add_argument("--model", default="smollm2-135m")
    sub.add_argument("--corpus-sdist", default=None,
                     help="a local Django-5.1.4.tar.gz to read the corpus from instead of downloading it")
    sub.set_defaults(run=_prepare)

    sub = commands.add_parser("hookpoints", help="list a model's hook points with their widths")
    sub.add_argument("--model", default="smollm2-135m")
    sub.set_defaults(run=_hookpoints)

    sub = commands.add_parser("capture", help="capture activations into a store", description=CaptureConfig.__doc__)
    add_dataclass_arguments(sub, CaptureConfig)
    sub.set_defaults(run=_capture)

    sub = commands.add_parser("train", help="capture if needed, train an SAE, evaluate it on held-out text",
                              description=TrainRunConfig.__doc__)
    add_dataclass_arguments(sub, TrainRunConfig)
    sub.set_defaults(run=_train)

    sub = commands.add_parser("eval", help="held-out metrics of an SAE (JSON): FVU, epsilon-LBO, loss recovered")
    sub.add_argument("dir", help="run folder of `workbench train`, or an SAE folder (cfg.json + sae_weights.safetensors)")
    sub.add_argument("--tokens", type=int, default=TrainRunConfig.eval_tokens,
                     help=f"held-out tokens (default: {TrainRunConfig.eval_tokens}, as `workbench train`)")
    sub.add_argument("--model", default=None, help="model (default: the one in the SAE's cfg.json)")
    sub.add_argument("--hookpoint", default=None, help="hook point (default: the one in the SAE's cfg.json)")
    sub.add_argument("--corpus", default=None,
                     help="text, whose held-out test split is used (default: the run's corpus, else django-docs)")
    sub.add_argument("--ctx-len", type=int, default=None, help="tokens per context (default: the run's, else 128)")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--convention", choices=["workbench", "saelens"], default="workbench",
                     help="loss-recovered baselines: workbench leaves BOS clean in every variant; saelens "
                          "zero-ablates BOS too, as SAELens's ce_loss_score (default: workbench)")
    sub.add_argument("--device", default="cpu")
    sub.set_defaults(run=_eval)

    from workbench.features import FeatureStatsConfig

    sub = commands.add_parser("features", help="statistics of every feature of an SAE over a store (saved next to the SAE; resumable)",
                              description=FeatureStatsConfig.__doc__)
    sub.add_argument("dir", help="run folder of `workbench train`, or an SAE folder (then pass --store)")
    sub.add_argument("--store", default=None, help="activation store (default: the run's)")
    sub.add_argument("--out", default=None, help="where to save (default: SAE_FOLDER/feature_stats)")
    sub.add_argument("--model", default=None, help="model for logit effects and token strings (default: the SAE's)")
    sub.add_argument("--logits", action=argparse.BooleanOptionalAction, default=True,
                     help="load the model for logit effects and token strings (default: yes)")
    sub.add_argument("--device", default="cpu")
    add_dataclass_arguments(sub, FeatureStatsConfig)
    sub.set_defaults(run=_features)

    sub = commands.add_parser("export", help="export feature statistics: a static HTML feature browser, or Neuronpedia's JSON batches")
    sub.add_argument("format", choices=["html", "neuronpedia"])
    sub.add_argument("dir", help="run folder, SAE folder or feature_stats folder (after `workbench features`)")
    sub.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    sub.set_defaults(run=_export)

    sub = commands.add_parser(
        "report", help="run a notebook (or a grid of parameter values) through papermill into an executed copy, "
                       "a self-contained HTML report and its headline figures",
        description="Run NOTEBOOK with papermill (no widget state stored), export it to HTML that opens offline, "
                    "and print the headline figures of its results JSON: its 'headline' entry if it has one, else "
                    "its top-level numbers and short strings, or the --headline keys. A VALUE with commas is a grid "
                    "axis (-p k 16,32,64): every combination runs in its own folder under --out, a finished one "
                    "is skipped when run again, a failed one is recorded and the grid goes on, and "
                    "--out/index.html compares them. Quote a string that has a comma: -p text \"'a, b'\".")
    sub.add_argument("notebook", help="short name (quickstart, features, interventions, ...: a notebook's file name "
                                      "under notebooks/ or notebooks/learn/ without its number) or a path to an .ipynb")
    sub.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="set a parameter (repeat for several): a Python literal or a string; A,B,C runs a grid")
    sub.add_argument("--out", default=None, help="folder for the executed notebook, its HTML, results and outputs "
                                                 "(default: build/reports/NAME)")
    sub.add_argument("--params", action="store_true", help="list the notebook's parameters with defaults and comments")
    sub.add_argument("--headline", action="append", default=None, metavar="KEY",
                     help="a figure of the results JSON to report, as a dotted path (reconstruction.fvu); repeatable")
    sub.add_argument("--force", action="store_true", help="run again even what finished before with the same parameters")
    sub.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    sub.set_defaults(run=_report)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code = args.run(args)
    except (ValueError, KeyError, OSError) as error:  # our errors say what to do; no traceback for them
        print(f"workbench {args.command}: error: {error}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
