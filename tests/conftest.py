"""Shared fixtures: seeding, tiny random-config models of three families, no downloads."""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

VOCAB = 64


@pytest.fixture(autouse=True)
def seed_everything():
    random.seed(0)
    torch.manual_seed(0)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over 'w3' .. 'w63' plus bos/eos/pad, built in memory."""
    vocab = {"<bos>": 0, "<eos>": 1, "<pad>": 2, **{f"w{i}": i for i in range(3, VOCAB - 1)}, "[UNK]": VOCAB - 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_hf(family: str) -> torch.nn.Module:
    """A 3-layer random model of ``family`` (llama, gpt2 or gpt_neox) with d_model 32."""
    if family == "llama":
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        return LlamaForCausalLM(config).eval()
    if family == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64)
        return GPT2LMHeadModel(config).eval()
    config = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=80, num_hidden_layers=3,
                           num_attention_heads=4, max_position_embeddings=64)
    return GPTNeoXForCausalLM(config).eval()


def tiny_model(family: str = "llama"):
    """A workbench Model around a tiny random ``family`` model."""
    from nnsight import TransformersModel

    from workbench.models import Model

    hf = tiny_hf(family)
    tokenizer = tiny_tokenizer()
    return Model(name=f"tiny-{family}", hf=hf, nn=TransformersModel(hf, tokenizer=tokenizer), tokenizer=tokenizer, bos_token_id=0)


@pytest.fixture(params=["llama", "gpt2", "gpt_neox"])
def any_tiny_model(request):
    return tiny_model(request.param)


@pytest.fixture
def llama_tiny():
    return tiny_model("llama")


@pytest.fixture
def local_model_dir(tmp_path) -> Path:
    """A tiny Llama saved as a normal Hugging Face folder, loadable by path with no network."""
    folder = tmp_path / "tiny-llama"
    tiny_hf("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def wait_for_checkpoint(child: subprocess.Popen, out_dir: Path, step: int, timeout: float = 120) -> None:
    """Wait until the training run in ``child`` has checkpointed ``step`` (or later) into ``out_dir``.

    Fails with the child's stderr if it ended first: a kill must land mid-run.
    """
    state = out_dir / "checkpoint" / "state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        try:
            if json.loads(state.read_text())["step"] >= step:
                break
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being swapped
            pass
        time.sleep(0.02)
    assert child.poll() is None, child.stderr.read().decode() if child.stderr else "the run ended before the kill"
