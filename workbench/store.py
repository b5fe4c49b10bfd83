"""The activation store: activations on disk as sharded safetensors plus a JSON manifest.

The capture layer feeds :class:`ActivationWriter` tensors, context batch by context batch;
training and analysis read them back through :class:`ActivationStore`. The store knows
nothing about models or SAEs: it keeps rows of activations with their token id and
(context, position), and the full token ids of every context.

On-disk layout
--------------
A store is a folder::

    DIR/manifest.json
    DIR/shard_00000.safetensors
    DIR/shard_00001.safetensors
    ...

Every shard holds exactly ``contexts_per_shard`` consecutive contexts (the last one of a
completed store may hold fewer), whatever batch size the capture used. Its tensors:

=========================  ==================  ==========================================
key                        dtype, shape        meaning
=========================  ==================  ==========================================
``acts.<hookpoint>``       store dtype [r, d]  one per hookpoint, e.g. ``acts.blocks.3.hook_mlp_out``
``tokens``                 int32 [r]           token id of each row
``context``                int64 [r]           context index of each row (non-decreasing)
``position``               int32 [r]           position of each row inside its context
``context_tokens``         int32 [c, ctx_len]  full token ids of the shard's contexts
``context_ids``            int64 [c]           the shard's context indices, ``start..stop-1``
=========================  ==================  ==========================================

A context may contribute fewer than ``ctx_len`` rows (the caller drops BOS or padding).
``manifest.json`` (written with sorted keys and an indent, so equal stores have equal bytes)::

    {"format": "workbench.activation_store", "version": 1,
     "hookpoints": {"blocks.3.hook_mlp_out": 576}, "dtype": "float32",
     "ctx_len": 128, "contexts_per_shard": 256,
     "meta": {...the caller's: model, corpus, seed, ...},
     "shards": [{"file": "shard_00000.safetensors", "rows": 32512,
                 "contexts": [0, 256], "bytes": 75171064}, ...],
     "n_rows": ..., "n_contexts": ..., "complete": false}

Atomicity and resume
--------------------
A shard is written to ``shard_XXXXX.safetensors.tmp``, flushed and fsynced, then
``os.replace``\\d into place; only then is the manifest rewritten the same way. The manifest
therefore only ever lists complete shards, whenever the process dies. Reopening the folder
with the same settings resumes at :attr:`ActivationWriter.contexts_done`; leftover ``.tmp``
files and shard files the manifest does not list are deleted. Re-adding the contexts from
there produces a store byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import bisect
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["ActivationStore", "ActivationWriter", "StoreError"]

FORMAT = "workbench.activation_store"
VERSION = 1
MANIFEST = "manifest.json"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
# Safetensors' dtype codes, to check shard headers without loading any data.
_ST_CODES: dict[str, str] = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
_SETTINGS = ("hookpoints", "dtype", "ctx_len", "contexts_per_shard", "meta")
_REDO = "delete the folder and capture again"


class StoreError(ValueError):
    """A store that cannot be created, resumed or read; the message says what to do."""


# --------------------------------------------------------------------------- files


def _shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def _fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, sort_keys=True, indent=2) + "\n").encode()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via `path.tmp`, fsync, rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _read_manifest(path: Path) -> dict:
    """Load and sanity-check `path/manifest.json`."""
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{file} is not valid JSON ({e}); {_REDO}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{file} is not a workbench activation store manifest; pass the folder of a store")
    if manifest.get("version") != VERSION:
        raise StoreError(
            f"{file} has format version {manifest.get('version')!r}; this workbench reads version {VERSION}"
        )
    required = (*_SETTINGS, "shards", "n_rows", "n_contexts", "complete")
    missing = [k for k in required if k not in manifest]
    if missing:
        raise StoreError(f"{file} lacks {', '.join(missing)}; {_REDO}")
    if manifest["dtype"] not in _DTYPES:
        raise StoreError(f"{file} has unknown dtype {manifest['dtype']!r}; {_REDO}")
    start = rows = 0
    for entry in manifest["shards"]:
        if not isinstance(entry, dict) or not {"file", "rows", "contexts", "bytes"} <= set(entry):
            raise StoreError(f"{file}: malformed shard entry {entry!r}; {_REDO}")
        lo, hi = entry["contexts"]
        if lo != start or hi <= lo:
            raise StoreError(f"{file}: shard {entry['file']} covers contexts {lo}..{hi}, expected start {start}")
        start, rows = hi, rows + entry["rows"]
    if (start, rows) != (manifest["n_contexts"], manifest["n_rows"]):
        raise StoreError(f"{file}: shard totals disagree with n_contexts/n_rows; {_REDO}")
    return manifest


def _check_shard(path: Path, entry: dict, manifest: dict) -> None:
    """Check a shard's size and safetensors header against its manifest entry, reading no data."""
    file = path / entry["file"]
    if not file.is_file():
        raise StoreError(f"shard {file} listed in the manifest is missing; {_REDO}")
    size = file.stat().st_size
    if size != entry["bytes"]:
        raise StoreError(
            f"shard {file} is {size} bytes but the manifest says {entry['bytes']} (truncated or overwritten); {_REDO}"
        )
    with open(file, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else size
        try:
            if 8 + n > size:
                raise ValueError("header longer than file")
            header = json.loads(f.read(n))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError) as e:
            raise StoreError(f"shard {file} has a corrupt safetensors header ({e}); {_REDO}") from None
    r, c, ctx_len = entry["rows"], entry["contexts"][1] - entry["contexts"][0], manifest["ctx_len"]
    expected = {
        "tokens": ("I32", [r]),
        "context": ("I64", [r]),
        "position": ("I32", [r]),
        "context_tokens": ("I32", [c, ctx_len]),
        "context_ids": ("I64", [c]),
    }
    code = _ST_CODES[manifest["dtype"]]
    for hookpoint, d in manifest["hookpoints"].items():
        expected[f"acts.{hookpoint}"] = (code, [r, d])
    for key, (dtype, shape) in expected.items():
        info = header.get(key)
        if not isinstance(info, dict) or (info.get("dtype"), info.get("shape")) != (dtype, shape):
            raise StoreError(f"shard {file}: tensor {key!r} is {info!r}, expected {dtype} {shape}; {_REDO}")
    if 8 + n + end != size:
        raise StoreError(f"shard {file}: header describes {8 + n + end} bytes, file has {size}; {_REDO}")


# --------------------------------------------------------------------------- writer


def _settings(hookpoints: dict, dtype: torch.dtype, ctx_len: int, meta: dict, contexts_per_shard: int) -> dict:
    """Validate the writer's settings and normalise them to what the manifest stores."""
    names = {v: k for k, v in _DTYPES.items()}
    if dtype not in names:
        raise StoreError(f"dtype {dtype} is not supported; use one of {', '.join(_DTYPES)}")
    if not hookpoints or not all(isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in hookpoints.items()):
        raise StoreError(f"hookpoints must be a non-empty dict of name -> width d > 0, got {hookpoints!r}")
    if ctx_len < 1 or contexts_per_shard < 1:
        raise StoreError(f"ctx_len ({ctx_len}) and contexts_per_shard ({contexts_per_shard}) must be >= 1")
    try:
        meta = json.loads(json.dumps(meta, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise StoreError(f"meta must be JSON-serialisable: {e}") from None
    if not isinstance(meta, dict):
        raise StoreError(f"meta must be a dict, got {type(meta).__name__}")
    return {
        "hookpoints": dict(hookpoints),
        "dtype": names[dtype],
        "ctx_len": int(ctx_len),
        "contexts_per_shard": int(contexts_per_shard),
        "meta": meta,
    }


def _setting_diffs(stored: dict, given: dict) -> list[str]:
    absent = "<absent>"
    diffs = [
        f"{k} (stored {stored[k]!r}, given {given[k]!r})" for k in _SETTINGS if k != "meta" and stored[k] != given[k]
    ]
    for k in sorted(set(stored["meta"]) | set(given["meta"])):
        old, new = stored["meta"].get(k, absent), given["meta"].get(k, absent)
        if old != new:
            diffs.append(f"meta.{k} (stored {old!r}, given {new!r})")
    return diffs


class ActivationWriter:
    """Create or resume a store at `path`, fed context batches in order by the capture layer.

    If `path` holds a manifest the writer resumes: the settings must equal the stored ones, and
    the caller continues from :attr:`contexts_done`. Rows are copied into a buffer of one shard
    (`contexts_per_shard` contexts) and written when it fills, so the writer holds one shard's
    rows. Use as a context manager to close on success; on an exception the committed shards
    stay and the buffered rows are dropped, ready for a resume. A writer whose add or close
    raised is closed: open a new one on the folder to resume.

    Args:
        path: The store folder (created if missing).
        hookpoints: Hookpoint name -> activation width d, e.g. ``{"blocks.3.hook_mlp_out": 576}``.
        dtype: On-disk dtype of activations (float32, float16, bfloat16 or float64).
        ctx_len: Tokens per context.
        meta: JSON-serialisable provenance (model, corpus, seed, ...), stored verbatim.
        contexts_per_shard: Contexts per shard file.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        hookpoints: dict[str, int],
        dtype: torch.dtype,
        ctx_len: int,
        meta: dict,
        contexts_per_shard: int = 256,
    ) -> None:
        self.path = Path(path)
        settings = _settings(hookpoints, dtype, ctx_len, meta, contexts_per_shard)
        self._dtype = dtype
        self._buffer: dict[str, Tensor] = {}  # key -> one shard's worth, filled up to the counts below
        self._buffered_rows = 0
        self._buffered_contexts = 0
        self._closed = False
        if (self.path / MANIFEST).exists():
            manifest = _read_manifest(self.path)
            diffs = _setting_diffs(manifest, settings)
            if diffs:
                raise StoreError(
                    f"cannot resume the store at {self.path}: it was written with different settings: "
                    f"{'; '.join(diffs)}. Delete the folder or pass the same settings."
                )
            for entry in manifest["shards"]:
                _check_shard(self.path, entry, manifest)
            self._manifest = manifest
            listed = {entry["file"] for entry in manifest["shards"]}
            for file in self.path.iterdir():
                leftover = file.name == MANIFEST + ".tmp" or (
                    file.name.startswith("shard_") and file.name.endswith((".safetensors", ".safetensors.tmp"))
                )
                if leftover and file.name not in listed:
                    file.unlink()
            return
        if self.path.exists():
            if not self.path.is_dir():
                raise StoreError(f"{self.path} is a file, not a folder; pass a folder for the store")
            others = sorted(p.name for p in self.path.iterdir() if not p.name.endswith(".tmp"))
            if others:
                shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
                raise StoreError(
                    f"{self.path} is not empty ({shown}) and has no {MANIFEST}; pass an empty or new folder"
                )
            for file in self.path.glob("*.tmp"):
                if file.name == MANIFEST + ".tmp" or file.name.startswith("shard_"):
                    file.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        # A manifest exists before any shard does, so a crash never leaves shards without one.
        self._manifest = {
            "format": FORMAT,
            "version": VERSION,
            **settings,
            "shards": [],
            "n_rows": 0,
            "n_contexts": 0,
            "complete": False,
        }
        _write_atomic(self.path / MANIFEST, _manifest_bytes(self._manifest))

    @property
    def contexts_done(self) -> int:
        """Contexts committed to disk; a resumed capture continues from this context index."""
        return self._manifest["n_contexts"]

    @property
    def rows_done(self) -> int:
        """Rows committed to disk."""
        return self._manifest["n_rows"]

    @property
    def complete(self) -> bool:
        """Whether the store was closed; a complete store takes no more rows."""
        return self._manifest["complete"]

    @property
    def hookpoints(self) -> dict[str, int]:
        """Hookpoint name -> width d."""
        return dict(self._manifest["hookpoints"])

    def add(
        self,
        acts: dict[str, Float[Tensor, "n d"]],
        tokens: Int[Tensor, " n"],
        context: Int[Tensor, " n"],
        position: Int[Tensor, " n"],
        context_tokens: Int[Tensor, "c ctx_len"],
        first_context: int,
    ) -> None:
        """Add the rows of contexts ``first_context .. first_context + c - 1``.

        `first_context` must be :attr:`contexts_done` plus the contexts already added since.
        Rows must be in (context, position) order without repeats, and may be fewer than
        ``c * ctx_len``. Tensors are copied (to CPU, in the store dtype), so the caller may reuse
        its buffers. A batch that crosses a shard boundary is split there.

        Args:
            acts: Hookpoint name -> activations [n, d], one entry per hookpoint of the store.
            tokens: Token id of each row.
            context: Context index of each row, within ``[first_context, first_context + c)``.
            position: Position of each row inside its context, in ``[0, ctx_len)``.
            context_tokens: Full token ids of the batch's c contexts.
            first_context: Index of the batch's first context.
        """
        if self._closed or self.complete:
            raise StoreError(
                f"this writer of {self.path} is closed or the store is complete; it takes no more rows "
                "(open a new ActivationWriter on the folder to resume an incomplete store)"
            )
        expected = self.contexts_done + self._buffered_contexts
        if first_context != expected:
            raise StoreError(
                f"contexts added out of order: got first_context={first_context}, expected {expected} "
                f"(contexts_done={self.contexts_done} plus {self._buffered_contexts} buffered); "
                "a resumed capture must continue from contexts_done"
            )
        ctx_len = self._manifest["ctx_len"]
        if context_tokens.ndim != 2 or context_tokens.shape[1] != ctx_len:
            raise StoreError(f"context_tokens must be [c, {ctx_len}], got {list(context_tokens.shape)}")
        c, n = context_tokens.shape[0], tokens.shape[0]
        for name, t in (("tokens", tokens), ("context", context), ("position", position)):
            if t.shape != (n,):
                raise StoreError(f"{name} must be [n={n}], got {list(t.shape)}")
        hookpoints = self._manifest["hookpoints"]
        if set(acts) != set(hookpoints):
            raise StoreError(
                f"acts has hookpoints {sorted(acts)}, the store has {sorted(hookpoints)}; pass exactly the store's"
            )
        for name, d in hookpoints.items():
            if acts[name].shape != (n, d):
                raise StoreError(f"acts[{name!r}] must be [{n}, {d}], got {list(acts[name].shape)}")
        context = context.detach().to("cpu", torch.int64)
        position = position.detach().to("cpu", torch.int64)
        if n and (context.min() < first_context or context.max() >= first_context + c):
            raise StoreError(f"context must lie in [{first_context}, {first_context + c})")
        if n and (position.min() < 0 or position.max() >= ctx_len):
            raise StoreError(f"position must lie in [0, {ctx_len})")
        if n and ((context * ctx_len + position).diff() <= 0).any():
            raise StoreError("rows must be in (context, position) order without repeats")

        sources = {f"acts.{name}": acts[name].detach() for name in hookpoints}
        sources |= {"tokens": tokens.detach(), "context": context, "position": position}
        try:
            cps = self._manifest["contexts_per_shard"]
            done_rows = done_contexts = 0  # of this batch
            while done_contexts < c:
                take = min(c - done_contexts, cps - self._buffered_contexts)
                stop = int(torch.searchsorted(context, first_context + done_contexts + take))
                self._append(sources, done_rows, stop, context_tokens[done_contexts : done_contexts + take])
                done_rows, done_contexts = stop, done_contexts + take
                if self._buffered_contexts == cps:
                    self._write_shard()
        except BaseException:
            self._closed = True
            raise

    def _append(self, sources: dict[str, Tensor], start: int, stop: int, context_tokens: Tensor) -> None:
        """Copy rows ``start:stop`` of `sources` and the contexts of `context_tokens` into the buffer."""
        if not self._buffer:  # allocated on first use; untouched pages of it cost no memory
            cps, ctx_len = self._manifest["contexts_per_shard"], self._manifest["ctx_len"]
            rows = cps * ctx_len
            self._buffer = {f"acts.{h}": torch.empty(rows, d, dtype=self._dtype) for h, d in self.hookpoints.items()}
            self._buffer |= {
                "tokens": torch.empty(rows, dtype=torch.int32),
                "context": torch.empty(rows, dtype=torch.int64),
                "position": torch.empty(rows, dtype=torch.int32),
                "context_tokens": torch.empty(cps, ctx_len, dtype=torch.int32),
                "context_ids": torch.empty(cps, dtype=torch.int64),
            }
        r, k, c = self._buffered_rows, self._buffered_contexts, len(context_tokens)
        for key, src in sources.items():
            self._buffer[key][r : r + stop - start].copy_(src[start:stop])
        self._buffer["context_tokens"][k : k + c].copy_(context_tokens)
        first = self.contexts_done + k
        torch.arange(first, first + c, out=self._buffer["context_ids"][k : k + c])
        self._buffered_rows += stop - start
        self._buffered_contexts += c

    def _write_shard(self) -> None:
        """Commit the buffered contexts as the next shard, then the manifest."""
        n_rows, n_contexts = self._buffered_rows, self._buffered_contexts
        per_context = ("context_tokens", "context_ids")
        shard = {k: v[: n_contexts if k in per_context else n_rows] for k, v in self._buffer.items()}
        start = self.contexts_done
        stop = start + n_contexts

        name = _shard_name(len(self._manifest["shards"]))
        file = self.path / name
        tmp = file.with_name(name + ".tmp")
        from safetensors.torch import save_file

        save_file(shard, tmp)
        _fsync_file(tmp)
        os.replace(tmp, file)
        _fsync_dir(self.path)

        entry = {"file": name, "rows": n_rows, "contexts": [start, stop], "bytes": file.stat().st_size}
        manifest = {
            **self._manifest,
            "shards": [*self._manifest["shards"], entry],
            "n_rows": self.rows_done + n_rows,
            "n_contexts": stop,
        }
        _write_atomic(self.path / MANIFEST, _manifest_bytes(manifest))
        self._manifest = manifest
        self._buffered_rows = self._buffered_contexts = 0

    def close(self) -> ActivationStore:
        """Write the buffered contexts as a last (possibly short) shard, mark the store complete, open it."""
        if not self._closed and not self.complete:
            self._closed = True  # also when the writes below fail
            if self._buffered_contexts:
                self._write_shard()
            manifest = {**self._manifest, "complete": True}
            _write_atomic(self.path / MANIFEST, _manifest_bytes(manifest))
            self._manifest = manifest
        self._buffer = {}
        return ActivationStore.open(self.path)

    def __enter__(self) -> ActivationWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # keep committed shards, drop the buffer: a resume redoes those contexts
            self._closed = True
            self._buffer = {}

    def __repr__(self) -> str:
        return (
            f"ActivationWriter({str(self.path)!r}, contexts_done={self.contexts_done}, "
            f"buffered_contexts={self._buffered_contexts})"
        )


# --------------------------------------------------------------------------- reader


class ActivationStore:
    """A store on disk, read lazily shard by shard. Build one with :meth:`open`.

    Attributes:
        path: The store folder.
        manifest: The parsed ``manifest.json``.
        meta: The capture's provenance, as given to the writer.
        hookpoints: Hookpoint name -> width d.
        n_rows: Rows per hookpoint.
        n_contexts: Contexts covered.
        complete: Whether the writer was closed (an interrupted capture gives False).
        ctx_len: Tokens per context.
        dtype: On-disk activation dtype.
    """

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self.manifest = manifest
        self.meta: dict = manifest["meta"]
        self.hookpoints: dict[str, int] = dict(manifest["hookpoints"])
        self.n_rows: int = manifest["n_rows"]
        self.n_contexts: int = manifest["n_contexts"]
        self.complete: bool = manifest["complete"]
        self.ctx_len: int = manifest["ctx_len"]
        self.dtype: torch.dtype = _DTYPES[manifest["dtype"]]
        self._shards: list[dict] = manifest["shards"]
        self._row_starts = [0]
        for entry in self._shards:
            self._row_starts.append(self._row_starts[-1] + entry["rows"])
        self._context_starts = [entry["contexts"][0] for entry in self._shards]

    @classmethod
    def open(cls, path: str | Path) -> ActivationStore:
        """Open the store at `path`, checking the manifest and every shard's size and header."""
        path = Path(path)
        if not path.is_dir():
            what = "is a file, not a store folder" if path.exists() else "does not exist"
            raise StoreError(f"no activation store at {path}: the folder {what}; capture activations first")
        if not (path / MANIFEST).is_file():
            raise StoreError(
                f"no activation store at {path}: {MANIFEST} is missing; pass a store folder or capture again"
            )
        manifest = _read_manifest(path)
        for entry in manifest["shards"]:
            _check_shard(path, entry, manifest)
        return cls(path, manifest)

    def d(self, hookpoint: str) -> int:
        """Width of `hookpoint`'s activations."""
        return self.hookpoints[self._hookpoint(hookpoint)]

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, hookpoints={self.hookpoints}, n_rows={self.n_rows}, "
            f"n_contexts={self.n_contexts}, dtype={self.manifest['dtype']}, complete={self.complete})"
        )

    def _hookpoint(self, hookpoint: str | None) -> str:
        if hookpoint is None:
            if len(self.hookpoints) != 1:
                raise StoreError(f"the store holds several hookpoints; name one of {sorted(self.hookpoints)}")
            return next(iter(self.hookpoints))
        if hookpoint not in self.hookpoints:
            raise StoreError(
                f"hookpoint {hookpoint!r} is not in the store at {self.path}; available: {sorted(self.hookpoints)}"
            )
        return hookpoint

    def _read(self, shard: int, key: str, start: int | None = None, stop: int | None = None) -> Tensor:
        """Read one tensor (or its rows ``start:stop``) of one shard; every read goes through here."""
        from safetensors import safe_open

        with safe_open(self.path / self._shards[shard]["file"], framework="pt") as f:
            if start is None:
                return f.get_tensor(key)
            return f.get_slice(key)[start:stop]

    def batches(
        self,
        hookpoint: str | None = None,
        *,
        batch_size: int = 4096,
        seed: int = 0,
        shuffle: bool = True,
        buffer_rows: int = 2**18,
        drop_last: bool = False,
        epochs: int = 1,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> BatchIterator:
        """Iterate over `hookpoint`'s activations in batches, with memory bounded by `buffer_rows`.

        Shuffling is two-level and deterministic for a seed: each epoch (seeded ``seed + epoch``)
        permutes the shard order, loads whole shards into a buffer of up to `buffer_rows` rows,
        permutes the buffer's rows, yields full batches, and carries the remainder into the next
        buffer. At most ``buffer_rows + batch_size`` rows are held (a single shard larger than
        `buffer_rows` is still loaded whole). ``shuffle=False`` yields rows in store order.

        The iterator's ``skip(n)`` jumps over ``n`` batches without reading them (training
        resumes with it): see :class:`BatchIterator`.

        Args:
            hookpoint: Which activations; may be omitted when the store has one hookpoint.
            batch_size: Rows per batch.
            seed: Shuffling seed.
            shuffle: Shuffle shards and rows, or keep store order.
            buffer_rows: Rows to shuffle together.
            drop_last: Drop each epoch's last, short batch.
            epochs: Passes over the store.
            device: Where batches go.
            dtype: Dtype of batches.
        """
        key = "acts." + self._hookpoint(hookpoint)
        if batch_size < 1 or buffer_rows < 1 or epochs < 0:
            raise ValueError(
                f"need batch_size >= 1, buffer_rows >= 1, epochs >= 0; got {batch_size}, {buffer_rows}, {epochs}"
            )
        return BatchIterator(self, key, batch_size, seed, shuffle, buffer_rows, drop_last, epochs, device, dtype)

    def _batches(
        self,
        key: str,
        batch_size: int,
        seed: int,
        shuffle: bool,
        buffer_rows: int,
        drop_last: bool,
        epochs: int,
        device: str | torch.device,
        dtype: torch.dtype,
        start: int = 0,
    ) -> Iterator[Tensor]:
        """The batches from the ``start``-th on (0-based, over all epochs).

        Batches before ``start`` are planned, not read: the shard orders and the buffers'
        permutations are drawn as when reading, so the generator stays in step, and the rows
        carried from buffer to buffer are followed by their store index. The first buffer that
        yields a batch is read whole, plus the carried rows it starts with, read alone.
        """
        d = self.hookpoints[key.removeprefix("acts.")]
        storage = torch.empty(0, d, dtype=self.dtype)
        skip = start
        for epoch in range(epochs):
            gen = torch.Generator().manual_seed(seed + epoch)
            if shuffle:
                order = torch.randperm(len(self._shards), generator=gen).tolist()
            else:
                order = list(range(len(self._shards)))
            # Group the shard order into buffers of whole shards of at most buffer_rows rows.
            groups: list[list[int]] = []
            rows = 0
            for i in order:
                if not groups or rows + self._shards[i]["rows"] > buffer_rows:
                    groups.append([])
                    rows = 0
                groups[-1].append(i)
                rows += self._shards[i]["rows"]

            carry = torch.empty(0, d, dtype=self.dtype)  # (k < batch_size, d), already shuffled
            # While skipping, the carry is known by its rows' store indices only.
            carry_ids: Tensor | None = torch.empty(0, dtype=torch.long) if skip else None
            need = max((sum(self._shards[i]["rows"] for i in g) for g in groups), default=0) + batch_size - 1
            if len(storage) < need:  # one buffer, reused: no page faults from fresh allocations
                del storage  # before allocating the bigger one
                storage = torch.empty(need, d, dtype=self.dtype)
            for group in groups:
                n_carry = len(carry) if carry_ids is None else len(carry_ids)
                total = n_carry + sum(self._shards[i]["rows"] for i in group)
                n_full = total // batch_size * batch_size
                perm = torch.randperm(total, generator=gen) if shuffle else None
                if carry_ids is not None:
                    if skip * batch_size >= n_full:  # the whole buffer is skipped: read nothing
                        skip -= n_full // batch_size
                        shard_ids = [torch.arange(self._row_starts[i], self._row_starts[i + 1]) for i in group]
                        ids = torch.cat([carry_ids, *shard_ids])
                        carry_ids = ids[perm[n_full:]] if perm is not None else ids[n_full:]
                        continue
                    carry, carry_ids = self._rows_at(key, carry_ids), None
                buf = storage[:total]  # (R, d)
                buf[: len(carry)] = carry
                at = len(carry)
                for i in group:
                    part = self._read(i, key)
                    buf[at : at + len(part)] = part
                    at += len(part)
                    del part
                first, skip = skip * batch_size, 0
                # Batches and the carry are copies, so the buffer can be refilled under them.
                if perm is not None:
                    for s in range(first, n_full, batch_size):
                        yield buf.index_select(0, perm[s : s + batch_size]).to(device=device, dtype=dtype)
                    carry = buf.index_select(0, perm[n_full:])
                else:
                    for s in range(first, n_full, batch_size):
                        yield buf[s : s + batch_size].to(device=device, dtype=dtype, copy=True)
                    carry = buf[n_full:].clone()
            if carry_ids is not None:  # still skipping at the end of the epoch
                if len(carry_ids) == 0 or drop_last:
                    continue
                if skip:
                    skip -= 1
                    continue
                carry = self._rows_at(key, carry_ids)
            if len(carry) and not drop_last:
                yield carry.to(device=device, dtype=dtype)

    def _rows_at(self, key: str, ids: Int[Tensor, " n"]) -> Tensor:
        """Rows ``ids`` (indices in store order) of ``key``, in that order: each run of consecutive
        rows in one shard is one read, so only these rows are read."""
        d = self.hookpoints[key.removeprefix("acts.")]
        out = torch.empty(len(ids), d, dtype=self.dtype)
        if len(ids) == 0:
            return out
        order = ids.argsort()
        wanted = ids[order].tolist()
        parts = []
        i = 0
        while i < len(wanted):
            shard = bisect.bisect_right(self._row_starts, wanted[i]) - 1
            lo, hi = self._row_starts[shard], self._row_starts[shard + 1]
            j = i + 1
            while j < len(wanted) and wanted[j] == wanted[j - 1] + 1 and wanted[j] < hi:
                j += 1
            parts.append(self._read(shard, key, wanted[i] - lo, wanted[j - 1] + 1 - lo))
            i = j
        out[order] = torch.cat(parts)
        return out

    def rows(self, hookpoint: str | None, start: int, stop: int) -> Float[Tensor, "n d"]:
        """Activations of rows ``start:stop`` in store order, in the store's dtype."""
        key = "acts." + self._hookpoint(hookpoint)
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"rows {start}:{stop} out of range for a store of {self.n_rows} rows")
        parts = [torch.empty(0, self.hookpoints[key[5:]], dtype=self.dtype)]
        shard = max(bisect.bisect_right(self._row_starts, start) - 1, 0)
        while shard < len(self._shards) and self._row_starts[shard] < stop:
            lo = self._row_starts[shard]
            a, b = max(start - lo, 0), min(stop - lo, self._shards[shard]["rows"])
            if b > a:
                parts.append(self._read(shard, key, a, b))
            shard += 1
        return torch.cat(parts)

    def tokens(self) -> Int[Tensor, " n_rows"]:
        """Token id of every row, in store order (int64)."""
        parts = [self._read(i, "tokens").long() for i in range(len(self._shards))]
        return torch.cat([torch.empty(0, dtype=torch.int64), *parts])

    def locations(self) -> Int[Tensor, "n_rows 2"]:
        """(context, position) of every row, in store order (int64)."""
        parts = [torch.empty(0, 2, dtype=torch.int64)]
        for i in range(len(self._shards)):
            parts.append(torch.stack([self._read(i, "context"), self._read(i, "position").long()], dim=1))
        return torch.cat(parts)

    def context_tokens(self, contexts: Int[Tensor, " m"] | list[int]) -> Int[Tensor, "m ctx_len"]:
        """Full token ids of the given contexts (int64), in the order asked."""
        ids = torch.as_tensor(contexts, dtype=torch.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.n_contexts):
            raise IndexError(f"contexts must lie in [0, {self.n_contexts}), got {ids.min()}..{ids.max()}")
        out = torch.empty(len(ids), self.ctx_len, dtype=torch.int64)
        shard_of = torch.tensor(
            [bisect.bisect_right(self._context_starts, c) - 1 for c in ids.tolist()], dtype=torch.int64
        )
        for shard in shard_of.unique().tolist():
            where = (shard_of == shard).nonzero().squeeze(1)
            local = ids[where] - self._shards[shard]["contexts"][0]
            out[where] = self._read(shard, "context_tokens")[local].long()
        return out


class BatchIterator:
    """What :meth:`ActivationStore.batches` returns: an iterator over the batches that can also
    jump ahead without reading what it jumps over, for resuming training (``train`` calls
    ``skip``)."""

    def __init__(self, store: ActivationStore, *args: Any) -> None:
        self._store = store
        self._args = args  # key, batch_size, seed, shuffle, buffer_rows, drop_last, epochs, device, dtype
        self._position = 0
        self._batches = store._batches(*args)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Float[Tensor, "batch d"]:
        batch = next(self._batches)
        self._position += 1
        return batch

    def skip(self, n: int) -> BatchIterator:
        """Jump over the next ``n`` batches and return this iterator, which then yields exactly
        what an uninterrupted one would. Nothing is read to skip: the shard orders and buffer
        permutations are recomputed from the seed, and reading starts with the buffer that holds
        the next batch (its shards, plus the fewer than ``batch_size`` rows carried into it)."""
        if n < 0:
            raise ValueError(f"cannot skip a negative number of batches ({n})")
        self._position += n
        self._batches = self._store._batches(*self._args, start=self._position)
        return self
