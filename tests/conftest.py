"""Shared fixtures: seeding, tiny random-config models of three families (no downloads), the
quickstart notebook executed once per session, and headless Chromium for the browser tests."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
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

# sparsify decodes with a Triton kernel whenever triton is importable (it comes with CUDA builds of
# torch), which fails without a GPU driver; its eager decoder is the CPU path these tests compare.
os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

VOCAB = 64
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


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


@contextmanager
def child_process(command: list[str], log: Path, **popen) -> Iterator[subprocess.Popen]:
    """Run ``command`` in a session of its own, its output to ``log``. On the way out, pass or fail,
    SIGKILL its whole process group, so that nothing it started outlives the test; on a failure,
    print the end of ``log`` (pytest shows it with the failure)."""
    with open(log, "wb") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        yield child
    except BaseException:
        print(f"--- end of the child's output ({log}) ---\n{log.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        with suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def wait_until(child: subprocess.Popen, reached: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Poll ``reached()`` until it holds, so that a kill that follows lands mid-run at a known point.
    Fails if ``child`` ends first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not reached():
        assert child.poll() is None, f"the child ended (code {child.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def wait_for_checkpoint(child: subprocess.Popen, out_dir: Path, step: int, timeout: float = 120) -> None:
    """Wait until the training run in ``child`` has checkpointed ``step`` (or later) into ``out_dir``."""
    state = out_dir / "checkpoint" / "state.json"

    def reached() -> bool:
        try:
            return json.loads(state.read_text())["step"] >= step
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being swapped
            return False

    wait_until(child, reached, f"checkpoint of step {step} in {out_dir}", timeout)


QUICKSTART_SMALL = dict(tokens=3000, ctx_len=64, d_sae=256, k=8, epochs=2, batch_size=256, eval_tokens=504,
                        n_features_shown=2)
"""Parameters that run notebooks/01_quickstart.ipynb on the real model in about a minute on CPU."""


@dataclass
class ExecutedNotebook:
    """A notebook run by :func:`workbench.report.execute_notebook`."""

    path: Path
    """The executed copy (.ipynb)."""
    results: dict
    """The JSON the notebook wrote to its ``results_path``."""


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory) -> ExecutedNotebook:
    """The quickstart notebook executed once per session with :data:`QUICKSTART_SMALL`
    (shared by tests/test_notebooks.py and the browser tests of its HTML export)."""
    from workbench.report import execute_notebook

    folder = tmp_path_factory.mktemp("quickstart")
    results = folder / "results.json"
    execute_notebook(NOTEBOOKS / "01_quickstart.ipynb", folder / "01_quickstart.ipynb",
                     {"out_dir": str(folder / "out"), "results_path": str(results), **QUICKSTART_SMALL},
                     cwd=folder)
    return ExecutedNotebook(folder / "01_quickstart.ipynb", json.loads(results.read_text()))


FEATURES_SMALL = dict(train_tokens=3000, ctx_len=64, d_sae=256, k=8, epochs=2, n_top=5, n_intervals=3, per_interval=2,
                      n_quantiles=3, per_quantile=1, n_cards=2, compare_tokens=1024)
"""Parameters that run notebooks/02_features.ipynb (training its own small SAE) in under a minute on CPU."""


def _run_notebook(tmp_path_factory, name: str, parameters: dict) -> ExecutedNotebook:
    """``notebooks/{name}.ipynb`` executed in a fresh folder, training its own SAE under ``run/``."""
    from workbench.report import execute_notebook

    folder = tmp_path_factory.mktemp(name)
    results = folder / "results.json"
    execute_notebook(NOTEBOOKS / f"{name}.ipynb", folder / f"{name}.ipynb",
                     {"run_dir": str(folder / "run"), "out_dir": str(folder / "out"), "results_path": str(results),
                      **parameters}, cwd=folder)
    return ExecutedNotebook(folder / f"{name}.ipynb", json.loads(results.read_text()))


@pytest.fixture(scope="session")
def features_notebook(tmp_path_factory) -> ExecutedNotebook:
    """notebooks/02_features.ipynb executed once per session with :data:`FEATURES_SMALL`."""
    return _run_notebook(tmp_path_factory, "02_features", FEATURES_SMALL)


INTERVENTIONS_SMALL = dict(train_tokens=3000, ctx_len=64, d_sae=256, k=8, epochs=2, n_ablation_features=2,
                           n_steer_candidates=3, max_new_tokens=5, chat_prompts=["Name a colour."])
"""Parameters that run notebooks/03_interventions.ipynb (training its own small SAE) in about a minute on CPU."""


@pytest.fixture(scope="session")
def interventions_notebook(tmp_path_factory) -> ExecutedNotebook:
    """notebooks/03_interventions.ipynb executed once per session with :data:`INTERVENTIONS_SMALL`."""
    return _run_notebook(tmp_path_factory, "03_interventions", INTERVENTIONS_SMALL)


# ---- headless Chromium for tests/browser: skipped where missing, except in CI (CI set), where they
# fail, since .ci/run installs Chromium from the Debian packages and a skip would hide a broken set-up.

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)

OFFLINE_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no network: CDNs fail at once
)
"""Flags of every run: headless, as root, reproducible pixels, and no network but localhost."""


@dataclass
class Chromium:
    """A Chromium executable, run headless and offline."""

    path: str

    def run(self, profile: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run with a throwaway profile folder and ``args`` (e.g. ``--dump-dom URL``); returns
        the finished process (stdout: the dumped DOM, if asked)."""
        return subprocess.run(
            [self.path, *OFFLINE_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    """Headless Chromium; skips (fails under CI) where there is none."""
    if CHROMIUM is None:
        message = "no chromium on PATH (Debian: apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the browser tests (.ci/run installs it)", pytrace=False)
        pytest.skip(message)
    return Chromium(CHROMIUM)


# (name, config overrides): every architecture, both relu variants; shared by the SAE and AFA tests.
SPECS = {
    "relu": {"architecture": "relu"},
    "relu_april": {"architecture": "relu", "relu_variant": "april_update"},
    "topk": {"architecture": "topk", "k": 3},
    "batchtopk": {"architecture": "batchtopk", "k": 3},
    "jumprelu": {"architecture": "jumprelu"},
    "gated": {"architecture": "gated"},
    "topafa": {"architecture": "topafa"},
}
