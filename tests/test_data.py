"""Tests for workbench.data: sources, splits and packed token contexts (no network)."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import types
from itertools import count
from pathlib import Path

import pytest
import torch

from workbench import corpus
from workbench.data import (
    EMBEDDED_CORPUS,
    CorpusError,
    Document,
    describe_source,
    iter_documents,
    token_contexts,
)

_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "def main():\n    return sum(range(10))\n",
    "Sparse autoencoders decompose activations into features.",
]


def _held_out(key: str) -> bool:
    """The documented split rule, written out independently of the module."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:16], 16) % 10 == 0


def make_tiny_tokenizer():
    """A real byte-level BPE ``PreTrainedTokenizerFast`` trained in-process (milliseconds).

    BOS is ``<bos>`` (id 0), EOS ``<eos>`` (id 1); ``model_max_length`` is 16 so that any
    real document is "too long" for it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_TRAINING_TEXT, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", model_max_length=16
    )
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """One shared :func:`make_tiny_tokenizer` for the tests that only read from it."""
    return make_tiny_tokenizer()


class StubTokenizer:
    """One token per character (its code point + 10); counts calls. BOS/EOS are settable."""

    def __init__(self, bos_token_id: int | None = 2, eos_token_id: int | None = 3):
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.calls = 0

    def __call__(self, text: str, add_special_tokens: bool = True, verbose: bool = True):
        assert not add_special_tokens
        self.calls += 1
        return {"input_ids": [ord(c) + 10 for c in text]}


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """A folder of 60 small .txt documents, distinct enough to tell orders apart."""
    root = tmp_path / "corpus"
    for i in range(60):
        _write(root / f"doc{i:03d}.txt", f"Document number {i}. " + "word " * (5 + i % 7))
    return root


def _train_name() -> str:
    return next(f"doc{i}.txt" for i in count() if not _held_out(f"doc{i}.txt"))


# ---------------------------------------------------------------- local sources


def test_txt_file_is_one_document(tmp_path):
    text = "First paragraph.\n\nSecond paragraph,\nstill the same document.\n"
    path = _write(tmp_path / _train_name(), text)
    assert list(iter_documents(str(path))) == [Document(text=text, source=str(path))]
    assert list(iter_documents(str(path), split="all")) == list(iter_documents(str(path)))


def test_jsonl_file_is_one_document_per_line(tmp_path):
    rows = [{"text": "alpha", "id": 1}, {"text": "beta"}, {"text": "  "}, {"text": "gamma"}]
    lines = [json.dumps(row) for row in rows]
    path = _write(tmp_path / "rows.jsonl", "\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]))
    documents = sorted(iter_documents(str(path), split="all"), key=lambda d: d.source)
    # blank line 3 and whitespace-only line 4 are skipped; line numbers stay those of the file
    assert documents == [
        Document("alpha", f"{path}#1"),
        Document("beta", f"{path}#2"),
        Document("gamma", f"{path}#5"),
    ]


def test_folder_reads_txt_and_jsonl_recursively(tmp_path):
    root = tmp_path / "data"
    _write(root / "b.txt", "bee")
    _write(root / "sub" / "a.txt", "ay")
    _write(root / "sub" / "deeper" / "rows.jsonl", '{"text": "row one"}\n{"text": "row two"}\n')
    _write(root / "notes.md", "ignored: not .txt/.jsonl")
    _write(root / ".hidden" / "x.txt", "ignored: hidden folder")
    _write(root / "empty.txt", "")
    documents = list(iter_documents(str(root), split="all"))
    assert sorted(d.text for d in documents) == ["ay", "bee", "row one", "row two"]
    assert {d.source for d in documents} == {
        str(root / "b.txt"),
        str(root / "sub" / "a.txt"),
        f"{root / 'sub' / 'deeper' / 'rows.jsonl'}#1",
        f"{root / 'sub' / 'deeper' / 'rows.jsonl'}#2",
    }

    info = describe_source(str(root))
    assert info["kind"] == "local" and info["source"] == str(root)
    assert info["n_documents"] == 4 and info["n_files"] == 4
    assert [f["path"] for f in info["files"]] == [
        "b.txt", "empty.txt", "sub/a.txt", "sub/deeper/rows.jsonl"
    ]
    assert info["files"][0] == {
        "path": "b.txt", "bytes": 3, "sha256": hashlib.sha256(b"bee").hexdigest()
    }
    json.dumps(info)
    assert describe_source(str(root))["version"] == info["version"]
    _write(root / "b.txt", "bees")
    assert describe_source(str(root))["version"] != info["version"]


def test_jsonl_line_without_text_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.jsonl", '{"text": "fine"}\n{"content": "no text"}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl, line 2: no string 'text' field"):
        iter_documents(str(path))
    path = _write(tmp_path / "broken.jsonl", '{"text": "fine"}\n{"text": \n')
    with pytest.raises(CorpusError, match=r"broken\.jsonl, line 2: not valid JSON"):
        iter_documents(str(path))


def test_empty_file_and_empty_corpus(tmp_path):
    path = _write(tmp_path / "empty.txt", "")
    with pytest.raises(CorpusError, match="empty.txt is empty: give a file with text"):
        iter_documents(str(path))
    root = tmp_path / "blank"
    _write(root / "a.txt", "  \n\n")
    _write(root / "b.jsonl", '{"text": ""}\n')
    with pytest.raises(CorpusError, match="is empty: give a file with text"):
        iter_documents(str(root))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(CorpusError, match="no usable files"):
        iter_documents(str(tmp_path / "nothing"))


def test_non_utf8_file_names_file_and_offset(tmp_path):
    root = tmp_path / "mixed"
    _write(root / "good.txt", "fine")
    _write(root / "latin.txt", "caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(CorpusError) as error:
        iter_documents(str(root))
    message = str(error.value)
    assert "latin.txt" in message and "byte offset 3" in message and "iconv" in message


def test_unsupported_extension_and_missing_path(tmp_path):
    path = _write(tmp_path / "table.csv", "a,b\n1,2\n")
    with pytest.raises(CorpusError, match=r"unsupported extension '\.csv'"):
        iter_documents(str(path))
    with pytest.raises(CorpusError, match="does not exist"):
        iter_documents(str(tmp_path / "missing.txt"))


def test_bad_arguments_raise_corpus_error(tmp_path, tiny_tokenizer):
    path = _write(tmp_path / _train_name(), "some text")
    with pytest.raises(CorpusError, match="split must be one of"):
        iter_documents(str(path), split="validation")
    with pytest.raises(CorpusError, match="n_contexts"):
        token_contexts(tiny_tokenizer, str(path), n_contexts=0)
    with pytest.raises(CorpusError, match="ctx_len"):
        token_contexts(tiny_tokenizer, str(path), n_contexts=1, ctx_len=1)


# ---------------------------------------------------------------- splits and order


def test_train_and_test_are_disjoint_and_cover_the_corpus(tmp_path):
    root = tmp_path / "many"
    for i in range(300):
        _write(root / f"d{i}.txt", f"text {i}")
    sources = {
        split: [d.source for d in iter_documents(str(root), split=split, seed=seed)]
        for split, seed in [("train", 0), ("test", 1), ("all", 2)]
    }
    train, test, everything = (set(sources[s]) for s in ("train", "test", "all"))
    assert train.isdisjoint(test) and train | test == everything and len(everything) == 300
    assert test == {str(root / f"d{i}.txt") for i in range(300) if _held_out(f"d{i}.txt")}
    assert 15 <= len(test) <= 45  # about 10%
    reordered = [d.source for d in iter_documents(str(root), split="train", seed=5)]
    assert set(reordered) == train and reordered != sources["train"]


def test_single_document_outside_the_split_says_so(tmp_path):
    name = next(f"doc{i}.txt" for i in count() if _held_out(f"doc{i}.txt"))
    path = _write(tmp_path / name, "held-out text")
    assert [d.text for d in iter_documents(str(path), split="test")] == ["held-out text"]
    with pytest.raises(CorpusError, match="none in the 'train' split.*split='all'"):
        iter_documents(str(path), split="train")


def test_document_order_is_seeded(corpus_dir):
    def order(seed):
        return [d.source for d in iter_documents(str(corpus_dir), seed=seed)]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(0)) == sorted(order(1))


# ---------------------------------------------------------------- embedded corpus


def test_embedded_corpus_is_the_pinned_django_docs():
    documents = list(iter_documents(EMBEDDED_CORPUS, split="all"))
    sources = [d.source for d in documents]
    assert len(documents) == corpus.N_DOCUMENTS == len(set(sources))
    assert f"{EMBEDDED_CORPUS}:topics/db/models.txt" in sources
    train = {d.source for d in iter_documents(EMBEDDED_CORPUS, split="train")}
    test = {d.source for d in iter_documents(EMBEDDED_CORPUS, split="test")}
    assert train.isdisjoint(test) and train | test == set(sources)
    assert len(test) == 62  # the held-out split: many documents, 127k SmolLM2 tokens

    info = describe_source(EMBEDDED_CORPUS)
    assert info["kind"] == "embedded" and info["sha256"] == corpus.TEXT_SHA256
    assert info["sdist_sha256"] == corpus.SDIST_SHA256 and info["n_bytes"] > 5_000_000
    json.dumps(info)


def test_a_changed_or_missing_corpus_is_refused(tmp_path, monkeypatch):
    text = corpus.corpus_path().read_text(encoding="utf-8")
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    with pytest.raises(CorpusError, match="is not prepared .* run `workbench prepare`"):
        list(iter_documents(EMBEDDED_CORPUS))
    corpus.corpus_path().parent.mkdir(parents=True)
    corpus.corpus_path().write_text(text.replace("Django", "Djang0", 1), encoding="utf-8")
    with pytest.raises(CorpusError, match="is not the pinned corpus .* delete it and run `workbench prepare`"):
        list(iter_documents(EMBEDDED_CORPUS))
    corpus.corpus_path().write_text(text[: len(text) // 2], encoding="utf-8")  # truncated mid-line
    with pytest.raises(CorpusError, match="damaged|not the pinned corpus"):
        describe_source(EMBEDDED_CORPUS)


def test_an_sdist_with_another_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    fake = tmp_path / corpus.SDIST
    fake.write_bytes(b"not django")
    with pytest.raises(CorpusError, match="has sha256 .* use the Django-5.1.4.tar.gz published on PyPI"):
        corpus.prepare(fake, quiet=True)


def test_embedded_contexts_tokenize_lazily():
    tokenizer = StubTokenizer()
    contexts = token_contexts(tokenizer, EMBEDDED_CORPUS, n_contexts=4, ctx_len=64)
    assert contexts.shape == (4, 64) and contexts.dtype == torch.int64
    assert tokenizer.calls < 5  # a few documents of 605, not the whole corpus


# ---------------------------------------------------------------- token contexts


def _expected_stream(tokenizer, source, seed=0):
    stream = []
    for document in iter_documents(source, seed=seed):
        stream += tokenizer(document.text, add_special_tokens=False, verbose=False)["input_ids"]
        stream.append(tokenizer.eos_token_id)
    return stream


def test_contexts_are_deterministic_and_seeded(corpus_dir, tiny_tokenizer):
    def contexts(seed):
        return token_contexts(tiny_tokenizer, str(corpus_dir), n_contexts=6, ctx_len=32, seed=seed)

    first = contexts(0)
    assert first.shape == (6, 32) and first.dtype == torch.int64
    assert torch.equal(first, contexts(0))
    assert not torch.equal(first, contexts(1))


def test_prepend_bos_packs_the_stream(corpus_dir, tiny_tokenizer):
    source = str(corpus_dir)
    stream = torch.tensor(_expected_stream(tiny_tokenizer, source))
    with_bos = token_contexts(tiny_tokenizer, source, n_contexts=5, ctx_len=20)
    assert (with_bos[:, 0] == tiny_tokenizer.bos_token_id).all()
    assert torch.equal(with_bos[:, 1:].flatten(), stream[: 5 * 19])
    without = token_contexts(tiny_tokenizer, source, n_contexts=5, ctx_len=20, prepend_bos=False)
    assert torch.equal(without.flatten(), stream[: 5 * 20])
    assert (without == tiny_tokenizer.eos_token_id).any()  # documents are separated by EOS
    assert not (without == tiny_tokenizer.bos_token_id).any()
    explicit = token_contexts(tiny_tokenizer, source, n_contexts=5, ctx_len=20, bos_token_id=7)
    assert (explicit[:, 0] == 7).all() and torch.equal(explicit[:, 1:], with_bos[:, 1:])


def test_bos_falls_back_to_eos_and_eos_is_required(corpus_dir):
    contexts = token_contexts(StubTokenizer(bos_token_id=None), str(corpus_dir), n_contexts=2)
    assert (contexts[:, 0] == 3).all()
    with pytest.raises(CorpusError, match="no eos_token_id"):
        token_contexts(StubTokenizer(None, None), str(corpus_dir), n_contexts=2)


def test_running_out_of_text_says_how_much_there_was(tmp_path, tiny_tokenizer):
    path = _write(tmp_path / _train_name(), "A short document. " * 20)
    n_tokens = len(_expected_stream(tiny_tokenizer, str(path)))
    available = n_tokens // 15
    contexts = token_contexts(tiny_tokenizer, str(path), n_contexts=available, ctx_len=16)
    assert contexts.shape == (available, 16)
    with pytest.raises(CorpusError, match=rf"after {n_tokens} tokens.*{available} contexts"):
        token_contexts(tiny_tokenizer, str(path), n_contexts=available + 1, ctx_len=16)


def test_long_documents_do_not_warn_and_progress_runs(corpus_dir, capfd):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    transformers_logger = logging.getLogger("transformers")  # does not propagate to caplog
    transformers_logger.addHandler(handler)
    try:
        # a fresh tokenizer, as transformers warns once per instance; model_max_length is 16
        tokenizer = make_tiny_tokenizer()
        token_contexts(tokenizer, str(corpus_dir), n_contexts=3, ctx_len=64, progress=True)
    finally:
        transformers_logger.removeHandler(handler)
    assert not [r for r in records if "longer than the specified maximum" in r.getMessage()]
    assert "token contexts" in capfd.readouterr().err  # the tqdm bar


# ---------------------------------------------------------------- Hugging Face (faked)


class FakeStream:
    """Stands in for a streamed ``datasets.IterableDataset``: rows, and a seeded shuffle."""

    def __init__(self, rows):
        self.rows = list(rows)
        self.shuffled_with = None

    def shuffle(self, *, seed, buffer_size):
        import random

        rows = list(self.rows)
        random.Random(seed).shuffle(rows)
        shuffled = FakeStream(rows)
        shuffled.shuffled_with = (seed, buffer_size)
        return shuffled

    def __iter__(self):
        return iter(self.rows)


def _fake_datasets(monkeypatch, load_dataset):
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_unknown_hub_dataset_explains_all_three_lookups(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise FileNotFoundError("Dataset 'nobody/nothing' doesn't exist on the Hub")

    _fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(CorpusError) as error:
        iter_documents("nobody/nothing")
    message = str(error.value)
    assert "not a local path" in message and repr(EMBEDDED_CORPUS) in message
    assert "doesn't exist on the Hub" in message
    assert isinstance(error.value.__cause__, FileNotFoundError)


def test_fake_hub_dataset_streams_shuffles_and_splits(monkeypatch, tiny_tokenizer):
    rows = [{"text": f"row {i} " + "text " * (i % 5), "meta": i} for i in range(400)]
    rows[3]["text"] = ""
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return FakeStream(rows)

    _fake_datasets(monkeypatch, load_dataset)
    source = "someone/corpus:small@validation"
    train = list(iter_documents(source, seed=0))
    assert calls[0] == (("someone/corpus", "small"), {"split": "validation", "streaming": True})
    assert all(d.source.startswith(f"hf:{source}#") for d in train)
    test_texts = {d.text for d in iter_documents(source, seed=1, split="test")}
    train_texts = {d.text for d in train}
    assert train_texts.isdisjoint(test_texts)
    assert len(train_texts) + len(test_texts) == 399 and 5 <= len(test_texts) <= 45
    assert [d.text for d in iter_documents(source, seed=0)] == [d.text for d in train]
    assert [d.text for d in iter_documents(source, seed=2)] != [d.text for d in train]

    def contexts():
        return token_contexts(tiny_tokenizer, "someone/corpus", n_contexts=4, ctx_len=16)

    first = contexts()
    assert calls[-1] == (("someone/corpus", None), {"split": "train", "streaming": True})
    assert torch.equal(first, contexts())

    info = describe_source(source)
    assert info == {**info, "kind": "huggingface", "name": "someone/corpus", "config": "small",
                    "split": "validation", "version": None}


def test_hub_rows_without_text_column(monkeypatch):
    _fake_datasets(monkeypatch, lambda *a, **k: FakeStream([{"content": "x"}]))
    with pytest.raises(CorpusError, match="no string 'text' column"):
        list(iter_documents("someone/other", split="all"))
