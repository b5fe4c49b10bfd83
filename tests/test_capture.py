"""Capture into a store: rows, provenance, several hook points, resume after kill -9, the CLI."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from workbench.capture import capture, run_to
from workbench.cli import main as cli_main
from workbench.models import ModelError, load_model
from workbench.store import ActivationStore

from conftest import child_process, wait_until


def _contexts(n: int, ctx_len: int = 12) -> torch.Tensor:
    ids = torch.randint(3, 60, (n, ctx_len), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = 0  # BOS
    return ids


def test_capture_rows_match_a_direct_forward_and_keep_provenance(tmp_path, llama_tiny):
    contexts = _contexts(10)
    names = ["blocks.2.hook_resid_post", "blocks.0.mlp.hook_post"]
    store = capture(llama_tiny, names, contexts, tmp_path / "s", batch_size=4, contexts_per_shard=4, progress=False)
    assert store.complete and store.n_contexts == 10
    assert store.n_rows == 10 * 11  # BOS dropped
    assert store.hookpoints == {"blocks.0.mlp.hook_post": 48, "blocks.2.hook_resid_post": 32}
    direct = run_to(llama_tiny, names, contexts)
    locations = store.locations()
    for name in names:
        expected = direct[name][locations[:, 0], locations[:, 1]]
        assert torch.equal(store.rows(name, 0, store.n_rows), expected)
    assert torch.equal(store.tokens(), contexts[locations[:, 0], locations[:, 1]])
    assert torch.equal(store.context_tokens([3, 7]), contexts[[3, 7]])
    assert (locations[:, 1] > 0).all()


def test_keep_bos_and_padding_mask(tmp_path, llama_tiny):
    contexts = _contexts(4)
    mask = torch.ones_like(contexts)
    mask[1, 8:] = 0
    store = capture(llama_tiny, ["blocks.1.hook_mlp_out"], contexts, tmp_path / "s", batch_size=2,
                    contexts_per_shard=2, drop_bos=False, attention_mask=mask, progress=False)
    assert store.n_rows == 4 * 12 - 4
    assert not ((store.locations()[:, 0] == 1) & (store.locations()[:, 1] >= 8)).any()


def test_bad_inputs(tmp_path, llama_tiny):
    with pytest.raises(ValueError, match="multiple of batch_size"):
        capture(llama_tiny, ["blocks.1.hook_mlp_out"], _contexts(4), tmp_path / "a", batch_size=3, contexts_per_shard=4)
    with pytest.raises(ValueError, match="non-empty"):
        capture(llama_tiny, ["blocks.1.hook_mlp_out"], torch.zeros(0, 8, dtype=torch.long), tmp_path / "b")
    with pytest.raises(KeyError, match="unknown hook point"):
        capture(llama_tiny, ["blocks.9.hook_mlp_out"], _contexts(4), tmp_path / "c")


def test_unknown_model_lists_available(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="Available here: smollm2-135m"):
        load_model("no-such-model-anywhere")


def _write_corpus(folder: Path) -> Path:
    corpus = folder / "corpus.txt"
    words = " ".join(f"w{3 + (i * 7) % 59}" for i in range(4000))
    corpus.write_text(words, encoding="utf-8")
    return corpus


def _capture_args(model_dir: Path, corpus: Path, out: Path, tokens: int) -> list[str]:
    return ["capture", "--model", str(model_dir), "--hookpoint", "blocks.1.hook_mlp_out", "--hookpoint",
            "blocks.0.hook_resid_pre", "--tokens", str(tokens), "--corpus", str(corpus), "--split", "all",
            "--ctx-len", "16", "--batch-size", "2", "--contexts-per-shard", "4"]


def test_cli_capture_from_a_local_model_folder(tmp_path, local_model_dir, capsys):
    corpus = _write_corpus(tmp_path)
    assert cli_main(_capture_args(local_model_dir, corpus, tmp_path / "store", 150) + ["--out", str(tmp_path / "store")]) == 0
    store = ActivationStore.open(tmp_path / "store")
    assert store.n_rows == 150 + (-150) % 15 and store.meta["corpus"]["kind"] == "local"
    assert cli_main(["hookpoints", "--model", str(local_model_dir)]) == 0
    assert "blocks.2.hook_resid_post" in capsys.readouterr().out


def test_cli_reports_bad_input_without_traceback(tmp_path, local_model_dir, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = cli_main(_capture_args(local_model_dir, empty, tmp_path / "s", 50) + ["--out", str(tmp_path / "s")])
    assert code == 2 and "empty" in capsys.readouterr().err


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_kill_9_mid_capture_resumes_to_an_identical_store(tmp_path, local_model_dir):
    corpus = _write_corpus(tmp_path)
    tokens = 40 * 15
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert cli_main(_capture_args(local_model_dir, corpus, reference, tokens) + ["--out", str(reference)]) == 0

    env = {**os.environ, "WORKBENCH_CAPTURE_DELAY": "0.2"}  # slow the child down so the kill lands mid-run
    command = [sys.executable, "-m", "workbench.cli", *_capture_args(local_model_dir, corpus, resumed, tokens),
               "--out", str(resumed)]
    with child_process(command, tmp_path / "child.log", env=env) as child:
        wait_until(child, (resumed / "shard_00002.safetensors").exists, "third shard")
        child.kill()
        assert child.wait() == -signal.SIGKILL
    partial = ActivationStore.open(resumed)
    assert not partial.complete and 0 < partial.n_contexts < 40

    assert cli_main(_capture_args(local_model_dir, corpus, resumed, tokens) + ["--out", str(resumed)]) == 0
    assert _files(resumed) == _files(reference)
