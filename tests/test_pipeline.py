"""``workbench train`` and ``workbench eval`` end to end on a tiny local model: outputs, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from workbench.cli import main as cli_main
from workbench.pipeline import TrainRunConfig, load_run_sae
from workbench.sae import SAE

from conftest import child_process, wait_for_checkpoint

REPO = Path(__file__).resolve().parent.parent

# Runs the CLI with every training step slowed down, so that a kill lands mid-run.
SLOW_CLI = """
import sys, time
import workbench.pipeline as pipeline
from workbench.train import Callback

plain_train = pipeline.train

def slow_train(*args, callbacks=None, **kwargs):
    slow = Callback(on_step_end=lambda state: time.sleep(0.02))
    return plain_train(*args, callbacks=[*(callbacks or []), slow], **kwargs)

pipeline.train = slow_train
from workbench.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def corpus(tmp_path) -> Path:
    """Forty files; doc10 and doc18 fall in the held-out test split (a hash of the relative path)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(40):
        words = " ".join(f"w{3 + (j * (7 + i)) % 59}" for j in range(400))
        (folder / f"doc{i:02d}.txt").write_text(words, encoding="utf-8")
    return folder


def train_args(model_dir: Path, corpus: Path, out: Path, arch: str = "topk") -> list[str]:
    return ["train", "--model", str(model_dir), "--hookpoint", "blocks.1.hook_mlp_out", "--arch", arch,
            "--d-sae", "64", "--k", "4", "--tokens", "2400", "--corpus", str(corpus), "--ctx-len", "16",
            "--epochs", "3", "--batch-size", "32", "--eval-tokens", "120", "--out", str(out)]


def test_cli_train_writes_the_sae_and_metrics_and_eval_reads_them(tmp_path, local_model_dir, corpus, capsys):
    out = tmp_path / "run"
    assert cli_main(train_args(local_model_dir, corpus, out)) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed == metrics
    assert metrics["train"]["steps"] == 3 * (2400 // 32)
    assert metrics["reconstruction"]["l0_mean"] == pytest.approx(4.0)
    recovered = metrics["loss_recovered"]
    assert recovered["ce_zero"] > 0 and recovered["ce_clean"] > 0 and recovered["loss_recovered_mean"] is not None
    assert "zero-ablating the MLP" in metrics["summary"] and "held-out tokens in" in metrics["summary"]
    for name in ("loss_recovered", "ce_increase", "kl", "loss_recovered_mean"):
        low, high = recovered["ci"][name]
        assert low <= recovered[name] <= high, name
    low, high = metrics["reconstruction"]["ci"]["fvu"]
    assert low <= metrics["reconstruction"]["fvu"] <= high
    afa = metrics["afa"]  # epsilon-LBO on the same held-out activations as the FVU
    assert afa["n_tokens"] == metrics["reconstruction"]["n_tokens"] and afa["n_contexts"] == metrics["heldout"]["contexts"]
    low, high = afa["ci"]["eps_lbo"]
    assert 0 < low <= afa["eps_lbo"] <= high

    sae = load_run_sae(out)
    assert isinstance(sae, SAE) and sae.cfg.architecture == "topk" and sae.cfg.hook_name == "blocks.1.hook_mlp_out"
    assert sae.cfg.model_name == str(local_model_dir)

    assert cli_main(["eval", str(out), "--tokens", "120"]) == 0
    printed = capsys.readouterr()
    evaluated = json.loads(printed.out)
    assert evaluated["reconstruction"]["fvu"] == pytest.approx(metrics["reconstruction"]["fvu"], rel=1e-5)
    # the run's store gives the mean-ablation baseline; the sentence goes to stderr
    assert evaluated["loss_recovered"]["ce_mean"] is not None and "zero-ablating" in printed.err
    assert evaluated["afa"]["eps_lbo"] == pytest.approx(afa["eps_lbo"], rel=1e-4) and "epsilon-LBO" in printed.err


@pytest.mark.parametrize("arch", ["relu", "batchtopk", "jumprelu", "gated", "topafa"])
def test_cli_trains_every_architecture(tmp_path, local_model_dir, corpus, arch, capsys):
    store = tmp_path / "store"
    args = ["capture", "--model", str(local_model_dir), "--hookpoint", "blocks.1.hook_mlp_out", "--tokens", "600",
            "--corpus", str(corpus), "--ctx-len", "16", "--out", str(store)]
    assert cli_main(args) == 0
    out = tmp_path / arch
    assert cli_main(train_args(local_model_dir, corpus, out, arch) + ["--store", str(store), "--eval-tokens", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 3 * (600 // 32) and "loss_recovered" not in metrics
    assert load_run_sae(out).cfg.architecture == arch


def test_each_architecture_gets_its_measured_defaults():
    from workbench.pipeline import DEFAULT_L1, new_sae, train_config

    def recipe(arch, **kw):
        cfg = TrainRunConfig(out="", arch=arch, d_sae=64, k=4, **kw)
        return new_sae(cfg, 16).cfg, train_config(cfg, 150_000)

    for arch, l1 in DEFAULT_L1.items():
        assert recipe(arch)[0].l1_coefficient == l1
    assert recipe("relu", l1=0.5)[0].l1_coefficient == 0.5
    sae, train = recipe("relu")  # the April update, as published: gradient clipping, L1 warm-up, resampling
    assert sae.relu_variant == "april_update" and train.max_grad_norm == 1.0
    assert train.sparsity_warmup_steps == train.steps // 20 and train.resample_every == train.steps // 8
    sae, train = recipe("relu", relu_variant="towards_monosemanticity")
    assert sae.relu_variant == "towards_monosemanticity" and train.max_grad_norm is None
    assert recipe("topk")[1].sparsity_warmup_steps == 0 and recipe("topk")[1].resample_every is None


def test_bad_train_settings_are_refused(tmp_path, local_model_dir, corpus, capsys):
    with pytest.raises(ValueError, match="d_sae must be positive"):
        TrainRunConfig(out=str(tmp_path), d_sae=0)
    code = cli_main(train_args(local_model_dir, corpus, tmp_path / "r") + ["--batch-size", "100000"])
    assert code == 2 and "fewer than one batch" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse's own usage error
        cli_main(["train", "--out", str(tmp_path / "r2"), "--arch", "nope"])
    assert exited.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_kill_9_mid_training_then_the_same_command_resumes_to_the_same_weights(tmp_path, local_model_dir, corpus):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert cli_main(train_args(local_model_dir, corpus, reference) + ["--eval-tokens", "0"]) == 0

    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    args = train_args(local_model_dir, corpus, resumed) + ["--eval-tokens", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with child_process([sys.executable, str(script), *args], tmp_path / "child.log", env=env) as child:
        wait_for_checkpoint(child, resumed, step=50)
        child.kill()
        assert child.wait() == -signal.SIGKILL
    assert not (resumed / "metrics.json").exists()  # killed mid-run

    assert cli_main(args) == 0  # the same command, now resuming
    a, b = load_run_sae(reference), load_run_sae(resumed)
    for name, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], value, atol=1e-6, rtol=0)
