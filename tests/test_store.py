"""Tests of the activation store: layout, reading, shuffling, memory bound, crash-safe resume."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from workbench.store import ActivationStore, ActivationWriter, StoreError

from conftest import child_process, wait_until

CTX_LEN = 8
HOOKPOINTS = {"blocks.0.hook_resid_post": 6, "blocks.1.hook_mlp_out": 4}
META = {"model": "tiny", "corpus": "fake", "seed": 0}


def fake_batch(first: int, c: int) -> dict:
    """Rows of contexts ``first .. first + c - 1`` for ``ActivationWriter.add``.

    Each context's data depends only on its index (never on the batching). Position 0 (BOS)
    is dropped, and context k also drops its last ``k % 3`` positions.
    """
    acts = {name: [] for name in HOOKPOINTS}
    tokens, context, position, context_tokens = [], [], [], []
    for k in range(first, first + c):
        g = torch.Generator().manual_seed(1000 + k)
        ids = torch.randint(0, 50_000, (CTX_LEN,), generator=g)
        pos = torch.arange(1, CTX_LEN - k % 3)
        for name, d in HOOKPOINTS.items():
            acts[name].append(torch.randn(len(pos), d, generator=g))
        tokens.append(ids[pos])
        context.append(torch.full((len(pos),), k))
        position.append(pos)
        context_tokens.append(ids)
    return dict(
        acts={name: torch.cat(a) for name, a in acts.items()},
        tokens=torch.cat(tokens),
        context=torch.cat(context),
        position=torch.cat(position),
        context_tokens=torch.stack(context_tokens),
        first_context=first,
    )


def capture(path, n_contexts: int, batch: int, *, cps: int = 3, delay: float = 0.0, abandon_at: int | None = None):
    """Run (or resume) a fake capture; returns the open store, or the writer if abandoned."""
    w = ActivationWriter(
        path, hookpoints=HOOKPOINTS, dtype=torch.float32, ctx_len=CTX_LEN, meta=META, contexts_per_shard=cps
    )
    for first in range(w.contexts_done, n_contexts, batch):
        if abandon_at is not None and first >= abandon_at:
            return w
        w.add(**fake_batch(first, min(batch, n_contexts - first)))
        time.sleep(delay)
    return w.close()


def folder_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def id_store(path: Path, n_contexts: int = 20, cps: int = 2) -> ActivationStore:
    """A one-hookpoint store whose activation row i is ``[i, i, i]``, to check orders exactly."""
    with ActivationWriter(
        path, hookpoints={"h": 3}, dtype=torch.float32, ctx_len=CTX_LEN, meta={}, contexts_per_shard=cps
    ) as w:
        for k in range(n_contexts):
            row0 = k * CTX_LEN
            w.add(
                {"h": torch.arange(row0, row0 + CTX_LEN, dtype=torch.float32)[:, None].repeat(1, 3)},
                tokens=torch.zeros(CTX_LEN, dtype=torch.long),
                context=torch.full((CTX_LEN,), k),
                position=torch.arange(CTX_LEN),
                context_tokens=torch.zeros(1, CTX_LEN, dtype=torch.long),
                first_context=k,
            )
    return ActivationStore.open(path)


# --------------------------------------------------------------------------- layout and reading


def test_roundtrip_and_layout(tmp_path):
    store = capture(tmp_path / "s", 10, batch=4, cps=3)
    expected = fake_batch(0, 10)
    n = len(expected["tokens"])

    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["format"] == "workbench.activation_store" and manifest["version"] == 1
    assert manifest["complete"] and store.complete
    assert [s["contexts"] for s in manifest["shards"]] == [[0, 3], [3, 6], [6, 9], [9, 10]]
    assert sum(s["rows"] for s in manifest["shards"]) == manifest["n_rows"] == n == len(store)
    assert (tmp_path / "s" / "manifest.json").read_text() == json.dumps(manifest, sort_keys=True, indent=2) + "\n"
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["manifest.json"] + [
        f"shard_0000{i}.safetensors" for i in range(4)
    ]
    assert store.meta == META and store.hookpoints == HOOKPOINTS and store.n_contexts == 10
    assert store.d("blocks.1.hook_mlp_out") == 4

    with safe_open(tmp_path / "s" / "shard_00001.safetensors", framework="pt") as f:
        assert sorted(f.keys()) == sorted(
            ["acts.blocks.0.hook_resid_post", "acts.blocks.1.hook_mlp_out", "tokens", "context", "position",
             "context_tokens", "context_ids"]
        )
        assert f.get_tensor("tokens").dtype == torch.int32
        assert f.get_tensor("context").dtype == torch.int64
        assert f.get_tensor("position").dtype == torch.int32
        assert f.get_tensor("context_tokens").shape == (3, CTX_LEN)
        assert f.get_tensor("context_ids").tolist() == [3, 4, 5]

    for name in HOOKPOINTS:
        assert torch.equal(store.rows(name, 0, n), expected["acts"][name])
        assert torch.equal(store.rows(name, 5, n - 3), expected["acts"][name][5 : n - 3])
        assert store.rows(name, 4, 4).shape == (0, HOOKPOINTS[name])
    assert torch.equal(store.tokens(), expected["tokens"])
    assert torch.equal(store.locations(), torch.stack([expected["context"], expected["position"]], 1))
    assert torch.equal(store.context_tokens([9, 0, 4, 4]), expected["context_tokens"][[9, 0, 4, 4]])
    with pytest.raises(IndexError):
        store.context_tokens([10])
    with pytest.raises(IndexError):
        store.rows("blocks.1.hook_mlp_out", 0, n + 1)


def test_shards_do_not_depend_on_batch_size(tmp_path):
    ref = folder_bytes(capture(tmp_path / "b4", 11, batch=4).path)
    for batch in (1, 3, 7, 11, 20):
        assert folder_bytes(capture(tmp_path / f"b{batch}", 11, batch=batch).path) == ref


def test_store_dtype_and_batch_dtype(tmp_path):
    w = ActivationWriter(tmp_path, hookpoints=HOOKPOINTS, dtype=torch.bfloat16, ctx_len=CTX_LEN, meta=META)
    w.add(**fake_batch(0, 2))
    store = w.close()
    name = "blocks.1.hook_mlp_out"
    assert store.dtype == torch.bfloat16 and store.manifest["dtype"] == "bfloat16"
    assert store.rows(name, 0, 3).dtype == torch.bfloat16
    (batch,) = store.batches(name, batch_size=100, dtype=torch.float64)
    assert batch.dtype == torch.float64
    assert torch.equal(batch.sort(0).values, fake_batch(0, 2)["acts"][name].bfloat16().double().sort(0).values)


# --------------------------------------------------------------------------- batches


def test_batches_in_order_and_shuffled(tmp_path):
    store = id_store(tmp_path)  # 160 rows in 10 shards of 16
    ids = torch.arange(160.0)

    ordered = list(store.batches(batch_size=32 + 5, shuffle=False))
    assert [len(b) for b in ordered] == [37] * 4 + [12]
    assert torch.equal(torch.cat(ordered)[:, 0], ids)
    assert [len(b) for b in store.batches(batch_size=37, shuffle=False, drop_last=True)] == [37] * 4

    def run(**kw):
        return torch.cat(list(store.batches("h", batch_size=10, buffer_rows=40, **kw)))[:, 0]

    first = run(seed=1)
    assert torch.equal(first.sort().values, ids) and not torch.equal(first, ids)
    assert torch.equal(run(seed=1), first)
    assert not torch.equal(run(seed=2), first)
    two = run(seed=1, epochs=2)
    assert torch.equal(two[:160], first)  # epoch 0 is seeded seed + 0
    assert torch.equal(two[160:].sort().values, ids) and not torch.equal(two[160:], first)
    assert list(store.batches(epochs=0)) == []


def test_batches_hookpoint_choice(tmp_path):
    store = capture(tmp_path / "s", 3, batch=3)
    with pytest.raises(StoreError, match="several hookpoints"):
        store.batches()
    with pytest.raises(StoreError, match="available: \\['blocks.0.hook_resid_post', 'blocks.1.hook_mlp_out'\\]"):
        store.batches("blocks.9.hook_mlp_out")
    with pytest.raises(StoreError, match="not in the store"):
        store.d("nope")


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_memory_stays_within_buffer(tmp_path, monkeypatch, shuffle):
    store = id_store(tmp_path, n_contexts=40)  # 320 rows in 20 shards of 16
    buffer_rows, batch_size = 50, 7
    loaded, yielded, resident = 0, 0, []
    read = ActivationStore._read

    def counting_read(self, shard, key, *args):
        nonlocal loaded
        t = read(self, shard, key, *args)
        loaded += len(t)
        resident.append(loaded - yielded)  # rows read but not yet handed out
        return t

    monkeypatch.setattr(ActivationStore, "_read", counting_read)
    seen = []
    for batch in store.batches(batch_size=batch_size, buffer_rows=buffer_rows, shuffle=shuffle):
        yielded += len(batch)
        seen.append(batch[:, 0])
    assert loaded == 320 and len(resident) == 20  # every shard read exactly once
    assert max(resident) <= buffer_rows + batch_size
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(320.0))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_skip_yields_what_an_uninterrupted_iterator_does(tmp_path, shuffle, drop_last):
    store = id_store(tmp_path)  # 160 rows in 10 shards of 16: buffers of 2 shards, 3 rows carried over
    kw = dict(batch_size=10 + 3, buffer_rows=40, seed=3, epochs=2, shuffle=shuffle, drop_last=drop_last)
    whole = list(store.batches(**kw))
    for n in range(len(whole) + 2):  # every position: mid-buffer, buffer and epoch ends, past the end
        rest = list(store.batches(**kw).skip(n))
        assert len(rest) == max(len(whole) - n, 0)
        assert all(torch.equal(a, b) for a, b in zip(rest, whole[n:])), n
    it = store.batches(**kw)
    head = [next(it), next(it)]
    assert all(torch.equal(a, b) for a, b in zip([*head, *it.skip(3)], whole[:2] + whole[5:]))
    with pytest.raises(ValueError, match="negative"):
        store.batches(**kw).skip(-1)


def test_skip_reads_no_skipped_shard(tmp_path, monkeypatch):
    store = id_store(tmp_path, n_contexts=40)  # 320 rows in 20 shards of 16
    kw = dict(batch_size=7, buffer_rows=32, seed=1)  # buffers of 2 shards (32 rows + the carry)
    whole = list(store.batches(**kw))
    reads = []
    read = ActivationStore._read

    def counting_read(self, shard, key, *args):
        t = read(self, shard, key, *args)
        reads.append((shard, len(t)))
        return t

    monkeypatch.setattr(ActivationStore, "_read", counting_read)
    it = store.batches(**kw).skip(30)  # into buffer 7 of 10 (buffers yield 4, 5, 4, 5, 4, 5, 5, ... batches)
    assert reads == []
    assert torch.equal(next(it), whole[30])
    whole_shards = [shard for shard, n in reads if n == 16]
    carried = sum(n for _, n in reads if n < 16)
    assert len(whole_shards) == 2 and 0 < carried < 7  # the landing buffer's shards and its carry
    assert all(torch.equal(a, b) for a, b in zip(it, whole[31:]))
    assert sum(n == 16 for _, n in reads) == 8  # the shards of buffers 7 to 10; 1 to 6 were never read


# --------------------------------------------------------------------------- resume and crashes


def test_resume_after_abandoned_writer_is_byte_identical(tmp_path):
    ref = folder_bytes(capture(tmp_path / "ref", 17, batch=4).path)

    w = capture(tmp_path / "run", 17, batch=5, abandon_at=10)  # 10 contexts added, 9 committed
    assert w.contexts_done == 9 and w.rows_done == sum(len(fake_batch(k, 1)["tokens"]) for k in range(9))
    del w
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert not manifest["complete"] and manifest["n_contexts"] == 9
    assert not ActivationStore.open(tmp_path / "run").complete
    # Debris of a crash mid-write: a half-written tmp and a shard the manifest never listed.
    (tmp_path / "run" / "shard_00003.safetensors.tmp").write_bytes(b"half a shard")
    (tmp_path / "run" / "shard_00005.safetensors").write_bytes(b"never committed")
    (tmp_path / "run" / "manifest.json.tmp").write_bytes(b"{")

    store = capture(tmp_path / "run", 17, batch=2)
    assert store.complete and folder_bytes(store.path) == ref


def test_exception_in_context_manager_keeps_committed_shards(tmp_path):
    ref = folder_bytes(capture(tmp_path / "ref", 8, batch=4).path)
    with pytest.raises(RuntimeError):
        with ActivationWriter(
            tmp_path / "run", hookpoints=HOOKPOINTS, dtype=torch.float32, ctx_len=CTX_LEN, meta=META,
            contexts_per_shard=3,
        ) as w:
            w.add(**fake_batch(0, 4))
            raise RuntimeError("capture died")
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["n_contexts"] == 3
    assert folder_bytes(capture(tmp_path / "run", 8, batch=1).path) == ref


def test_crash_at_every_rename_resumes_identically(tmp_path, monkeypatch):
    ref = folder_bytes(capture(tmp_path / "ref", 7, batch=2).path)
    real_replace = os.replace
    calls = 0

    class Crash(Exception):
        pass

    def crashing_replace(src, dst):
        nonlocal calls
        if Path(src).parent.parent == tmp_path:
            calls += 1
            if calls == crash_at:
                raise Crash
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    crash_at = None
    capture(tmp_path / "count", 7, batch=2)
    n_renames = calls  # 1 initial manifest + 3 shards x 2 + the closing manifest
    assert n_renames == 8
    for crash_at in range(1, n_renames + 1):
        calls = 0
        with pytest.raises(Crash):
            capture(tmp_path / f"crash{crash_at}", 7, batch=2)
    crash_at = None
    for k in range(1, n_renames + 1):
        assert folder_bytes(capture(tmp_path / f"crash{k}", 7, batch=3).path) == ref


def test_sigkill_mid_capture_then_resume_is_byte_identical(tmp_path):
    """A real capture process killed with SIGKILL right after its 2nd shard file appears."""
    n_contexts, cps = 24, 3
    ref = folder_bytes(capture(tmp_path / "ref", n_contexts, batch=2, cps=cps).path)
    run = tmp_path / "run"
    child = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_store; "
        f"test_store.capture({str(run)!r}, {n_contexts}, batch=2, cps={cps}, delay=0.05)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    with child_process([sys.executable, "-c", child], tmp_path / "child.log", env=env) as proc:
        wait_until(proc, (run / "shard_00001.safetensors").exists, "2nd shard", timeout=60)
        proc.kill()
        assert proc.wait(timeout=10) == -signal.SIGKILL

    resumed = ActivationWriter(
        run, hookpoints=HOOKPOINTS, dtype=torch.float32, ctx_len=CTX_LEN, meta=META, contexts_per_shard=cps
    )
    assert resumed.contexts_done in (3, 6) and not resumed.complete
    store = capture(run, n_contexts, batch=5, cps=cps)
    assert folder_bytes(store.path) == ref


# --------------------------------------------------------------------------- errors


def test_open_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        ActivationStore.open(tmp_path / "nowhere")
    with pytest.raises(StoreError, match="manifest.json is missing"):
        ActivationStore.open(tmp_path)

    path = capture(tmp_path / "s", 7, batch=4).path
    shard = path / "shard_00001.safetensors"
    good = shard.read_bytes()

    shard.write_bytes(good[:-10])
    with pytest.raises(StoreError, match="shard_00001.safetensors is .* bytes but the manifest says"):
        ActivationStore.open(path)
    shard.write_bytes(b"\xff" * len(good))  # right size, garbage header
    with pytest.raises(StoreError, match="shard_00001.safetensors has a corrupt safetensors header"):
        ActivationStore.open(path)
    shard.unlink()
    with pytest.raises(StoreError, match="shard_00001.safetensors listed in the manifest is missing"):
        ActivationStore.open(path)
    with pytest.raises(StoreError, match="shard_00001.safetensors listed in the manifest is missing"):
        capture(path, 7, batch=4)  # a resume checks the shards too
    shard.write_bytes(good)
    ActivationStore.open(path)

    manifest = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(manifest[:-20])
    with pytest.raises(StoreError, match="not valid JSON"):
        ActivationStore.open(path)
    (path / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(StoreError, match="not a workbench activation store"):
        ActivationStore.open(path)


def test_resume_with_other_settings_is_refused(tmp_path):
    capture(tmp_path, 4, batch=4, abandon_at=4)
    with pytest.raises(StoreError) as err:
        ActivationWriter(
            tmp_path, hookpoints=HOOKPOINTS, dtype=torch.float16, ctx_len=CTX_LEN,
            meta={**META, "seed": 1, "extra": True}, contexts_per_shard=3,
        )
    msg = str(err.value)
    assert "dtype (stored 'float32', given 'float16')" in msg
    assert "meta.seed (stored 0, given 1)" in msg and "meta.extra" in msg
    assert "ctx_len" not in msg and "Delete the folder or pass the same settings" in msg
    capture(tmp_path, 4, batch=1)  # the same settings still resume


def test_folder_must_be_new_empty_or_a_store(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty \\(notes.txt\\) and has no manifest.json"):
        capture(tmp_path, 2, batch=2)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "manifest.json.tmp").write_text("{")  # killed before the first manifest landed
    assert len(capture(fresh, 2, batch=2)) > 0
    assert not (fresh / "manifest.json.tmp").exists()


def test_add_checks_its_input(tmp_path):
    w = ActivationWriter(tmp_path, hookpoints=HOOKPOINTS, dtype=torch.float32, ctx_len=CTX_LEN, meta=META)
    with pytest.raises(StoreError, match="out of order: got first_context=1, expected 0"):
        w.add(**{**fake_batch(0, 2), "first_context": 1})
    b = fake_batch(0, 2)
    with pytest.raises(StoreError, match="must be \\[.*, 4\\]"):
        w.add(**{**b, "acts": {**b["acts"], "blocks.1.hook_mlp_out": torch.zeros(len(b["tokens"]), 5)}})
    with pytest.raises(StoreError, match="pass exactly the store's"):
        w.add(**{**b, "acts": {"blocks.1.hook_mlp_out": b["acts"]["blocks.1.hook_mlp_out"]}})
    with pytest.raises(StoreError, match="order without repeats"):
        w.add(**{**b, "context": b["context"].flip(0)})
    with pytest.raises(StoreError, match="order without repeats"):
        w.add(**{**b, "position": torch.zeros_like(b["position"])})
    with pytest.raises(StoreError, match="position must lie in"):
        w.add(**{**b, "position": b["position"] + CTX_LEN})
    with pytest.raises(StoreError, match="context_tokens must be"):
        w.add(**{**b, "context_tokens": b["context_tokens"][:, :3]})
    w.add(**b)
    with pytest.raises(StoreError, match="expected 2"):
        w.add(**fake_batch(0, 2))
    w.close()
    with pytest.raises(StoreError, match="complete"):
        w.add(**fake_batch(2, 1))
    resumed = ActivationWriter(tmp_path, hookpoints=HOOKPOINTS, dtype=torch.float32, ctx_len=CTX_LEN, meta=META)
    assert resumed.complete and resumed.contexts_done == 2
    with pytest.raises(StoreError, match="complete"):
        resumed.add(**fake_batch(2, 1))
    assert len(resumed.close()) == len(b["tokens"])
