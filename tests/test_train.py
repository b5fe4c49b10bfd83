"""The trainer on synthetic sparse data: convergence, sweeps, exact resume, divergence, hooks."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from workbench.metrics import reconstruction_metrics
from workbench.sae import SAE, SAEConfig
from workbench.train import (
    Callback,
    TrainConfig,
    TrainingDiverged,
    default_lr,
    geometric_median,
    sae_dir,
    train,
)

from conftest import child_process, wait_for_checkpoint

REPO = Path(__file__).resolve().parents[1]
D_IN, D_SAE, N_TRUE, BATCH = 16, 64, 48, 128
ARCHITECTURES = ["topk", "relu", "batchtopk", "jumprelu", "gated", "topafa"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls run fastest, and steadiest on a shared machine, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sparse_batches(seed: int = 0, *, scale: float = 1.0, n: int | None = None, nan_at: int | None = None):
    """Batches ``x = codes @ D + offset`` with ~4 of 48 true features on per token, times ``scale``."""
    g = torch.Generator().manual_seed(1234)
    D = torch.randn(N_TRUE, D_IN, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    offset = torch.randn(D_IN, generator=g)
    g.manual_seed(seed)
    i = 0
    while n is None or i < n:
        on = torch.rand(BATCH, N_TRUE, generator=g) < 4 / N_TRUE
        codes = on * (0.5 + torch.rand(BATCH, N_TRUE, generator=g))
        x = (codes @ D + offset + 0.01 * torch.randn(BATCH, D_IN, generator=g)) * scale
        if i == nan_at:
            x[3, 5] = math.nan
        yield x
        i += 1


def make_sae(architecture: str = "topk", seed: int = 0, **overrides) -> SAE:
    torch.manual_seed(seed)
    fields = {"architecture": architecture, "d_in": D_IN, "d_sae": D_SAE, "k": 4, "l1_coefficient": 3e-3}
    return SAE.from_config(SAEConfig(**{**fields, **overrides}))


def killed_relu(seed: int = 11) -> SAE:
    """A relu SAE whose first half of features can never fire (dead until resampled)."""
    sae = make_sae("relu", seed)
    with torch.no_grad():
        sae.b_enc[: D_SAE // 2] = -1e3
    return sae


def weights(sae: SAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sae.state_dict().items()}


def assert_same_weights(a: SAE, b: SAE, atol: float = 1e-6) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=0, msg=key)


def fast(**overrides) -> TrainConfig:
    fields = {"steps": 60, "lr": 5e-3, "log_every": 10, "dead_window": 20 * BATCH, "checkpoint_every": 10}
    return TrainConfig(**{**fields, **overrides})


# ---- convergence ------------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_training_reduces_loss(architecture):
    sae = make_sae(architecture)
    held_out = list(sparse_batches(seed=99, n=4))
    before = reconstruction_metrics(sae, held_out).fvu
    result = train(sae, sparse_batches(), fast(steps=120, lr=1e-2, log_every=20), progress=False)
    after = reconstruction_metrics(sae, held_out).fvu
    assert after < 0.5 * min(before, 1.0), (before, after)
    loss = [row["loss"] for row in result.history]  # (top-AFA trades mse for its AFA term early on)
    assert len(result.history) == 6 and result.history[-1]["step"] == 120
    assert loss[-1] < loss[0], loss
    assert all(math.isfinite(row["mse"]) and row["l0"] > 0 for row in result.history)
    assert result.stats[0]["step"] == 120 and result.stats[0]["loss"] == loss[-1]


# ---- one pass, several SAEs --------------------------------------------------------------------
def test_several_saes_from_one_pass_equal_separate_runs():
    cfg = fast(steps=40, resample_every=15)
    builders = [lambda: make_sae("topk", 1), lambda: killed_relu(2), lambda: make_sae("batchtopk", 3, k=8)]
    seen = []

    def counting(batches):
        for x in batches:
            seen.append(1)
            yield x

    multi = train([build() for build in builders], counting(sparse_batches()), cfg, progress=False)
    assert len(seen) == 40  # the data is consumed once, not once per SAE
    for i, build in enumerate(builders):
        alone = train(build(), sparse_batches(), cfg, progress=False)
        assert_same_weights(multi.saes[i], alone.saes[0], atol=0)
        rows = [{k: v for k, v in r.items() if k != "sae"} for r in multi.history if r["sae"] == i]
        assert rows == [{k: v for k, v in r.items() if k != "sae"} for r in alone.history]


# ---- exact resume ------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


def test_resume_in_process_is_exact(tmp_path):
    # log_every does not divide checkpoint_every, so a window is open at the checkpoint.
    schedules = {"lr_warmup_steps": 5, "lr_decay_steps": 10, "sparsity_warmup_steps": 8}
    cfg = fast(steps=50, log_every=7, resample_every=12, **schedules)

    def saes():  # resampling (at steps 24, 36, 48) draws from each SAE's generator
        return [killed_relu(5), make_sae("topk", 6)]

    reference = train(saes(), sparse_batches(), cfg, progress=False)
    assert [row["dead_fraction"] for row in reference.history if row["sae"] == 0][2:4] == [0.5, 0.0]

    def stop_at_37(state):
        if state.step == 37:
            raise Interrupt

    with pytest.raises(Interrupt):
        stop = Callback(on_step_end=stop_at_37)
        train(saes(), sparse_batches(), cfg, out_dir=tmp_path, callbacks=[stop], progress=False)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 30
    assert not sae_dir(tmp_path).exists()

    fresh = saes()
    for sae in fresh:  # different starting weights: they must come from the checkpoint
        torch.nn.init.normal_(sae.W_enc)
    resumed = train(fresh, sparse_batches(), cfg, out_dir=tmp_path, progress=False)
    for a, b in zip(resumed.saes, reference.saes):
        assert_same_weights(a, b)
    assert resumed.history == reference.history
    for i in range(2):
        assert_same_weights(SAE.load(sae_dir(tmp_path, i)), reference.saes[i])

    # A finished run found in out_dir is returned as is, without touching the data.
    again = train(saes(), iter(()), cfg, out_dir=tmp_path, progress=False)
    assert_same_weights(again.saes[1], reference.saes[1])
    assert again.history == reference.history


def test_resume_from_a_store_skips_without_reading(tmp_path, monkeypatch):
    from workbench.store import ActivationStore, ActivationWriter

    with ActivationWriter(tmp_path / "store", hookpoints={"h": D_IN}, dtype=torch.float32, ctx_len=BATCH // 4,
                          meta={}, contexts_per_shard=2) as w:  # fmt: skip
        for i, x in enumerate(sparse_batches(n=24)):  # 24 batches of 128 rows in 48 shards of 64
            n = len(x) // (BATCH // 4)
            w.add({"h": x}, tokens=torch.zeros(len(x), dtype=torch.long),
                  context=torch.arange(4 * i, 4 * i + n).repeat_interleave(BATCH // 4),
                  position=torch.arange(BATCH // 4).repeat(n), context_tokens=torch.zeros(n, BATCH // 4),
                  first_context=4 * i)  # fmt: skip
    store = ActivationStore.open(tmp_path / "store")

    def data():
        return store.batches(batch_size=BATCH, buffer_rows=3 * 64, seed=5)  # buffers of 3 shards, 64 rows carried

    cfg = fast(steps=24, checkpoint_every=8)
    reference = train(make_sae("topk", 8), data(), cfg, progress=False)

    def stop_at_20(state):
        if state.step == 20:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(make_sae("topk", 8), data(), cfg, out_dir=tmp_path / "run", callbacks=[Callback(on_step_end=stop_at_20)],
              progress=False)  # fmt: skip
    rows_read = []  # per read: 64 for a whole shard, fewer for carried rows
    read = ActivationStore._read

    def counting_read(*args):
        tensor = read(*args)
        rows_read.append(len(tensor))
        return tensor

    monkeypatch.setattr(ActivationStore, "_read", counting_read)
    resumed = train(make_sae("topk", 8), data(), cfg, out_dir=tmp_path / "run", progress=False)  # from step 16
    assert_same_weights(resumed.saes[0], reference.saes[0])
    assert resumed.history == reference.history
    # The last 8 batches hold 16 shards' rows, less the (< 128) rows carried into their first
    # buffer, which may start up to a buffer (3 shards) early; the other 29 or more are never read.
    assert 15 <= sum(n == 64 for n in rows_read) <= 16 + 3 and 0 < sum(n for n in rows_read if n < 64) < BATCH


CHILD = """
import sys, torch
from workbench.sae import SAE, SAEConfig
from workbench.train import Callback, TrainConfig, train
sys.path.insert(0, {tests!r})
from test_train import killed_relu, make_sae, sparse_batches

CFG = TrainConfig(steps=40, lr=5e-3, log_every=10, checkpoint_every=10, dead_window=1280, resample_every=15)

def saes():
    return [killed_relu(7), make_sae("topk", 8)]

if __name__ == "__main__":
    torch.set_num_threads(1)
    slow = Callback(on_step_end=lambda state: __import__("time").sleep(0.03))
    train(saes(), sparse_batches(), CFG, out_dir=sys.argv[1], callbacks=[slow], progress=False)
"""


def test_resume_after_sigkill_is_exact(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).parent)))
    out = tmp_path / "run"
    command = [sys.executable, str(script), str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with child_process(command, tmp_path / "child.log", env=env) as child:
        wait_for_checkpoint(child, out, step=10)
        child.kill()
        assert child.wait() == -signal.SIGKILL
    assert not sae_dir(out).exists()  # killed mid-run

    finished = subprocess.run(command, env=env, capture_output=True, timeout=300)
    assert finished.returncode == 0, finished.stderr.decode()

    sys.path.insert(0, str(tmp_path))
    try:
        import child as child_module
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("child", None)
    reference = train(child_module.saes(), sparse_batches(), child_module.CFG, progress=False)
    for i, sae in enumerate(reference.saes):
        assert_same_weights(SAE.load(sae_dir(out, i)), sae)


def test_checkpoint_swap_is_atomic(tmp_path):
    cfg = fast(steps=20)
    train(make_sae(), sparse_batches(), cfg, out_dir=tmp_path, progress=False)
    # A crash between the two renames leaves only checkpoint.old, plus a half-written tmp.
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    (tmp_path / "checkpoint.tmp").mkdir()
    (tmp_path / "checkpoint.tmp" / "sae_0.safetensors").write_bytes(b"garbage")
    longer = train(make_sae(), sparse_batches(), fast(steps=30), out_dir=tmp_path, progress=False)
    reference = train(make_sae(), sparse_batches(), fast(steps=30), progress=False)
    assert_same_weights(longer.saes[0], reference.saes[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "sae_0"]


def test_resume_refuses_other_saes(tmp_path):
    train(make_sae(), sparse_batches(), fast(steps=10), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="config differs"):
        train(make_sae(k=8), sparse_batches(), fast(steps=20), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="holds 1 SAEs but 2"):
        train([make_sae(), make_sae()], sparse_batches(), fast(steps=20), out_dir=tmp_path, progress=False)


# ---- divergence ----------------------------------------------------------------------------
def test_nan_batch_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = fast(steps=60, log_every=5, checkpoint_every=10)
    with pytest.raises(TrainingDiverged) as caught:
        train(make_sae(), sparse_batches(nan_at=24), cfg, out_dir=tmp_path, progress=False)
    message = str(caught.value)
    assert "SAE 0" in message and "step 25 of 60" in message
    assert "mse" in message and "lower lr" in message and "NaN" in message
    saved = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert saved["step"] == 20
    assert not (tmp_path / "checkpoint.tmp").exists() and not sae_dir(tmp_path).exists()
    # The surviving checkpoint is sound: resuming on clean data reproduces a clean run.
    resumed = train(make_sae(), sparse_batches(), fast(steps=30), out_dir=tmp_path, progress=False)
    clean = train(make_sae(), sparse_batches(), fast(steps=30), progress=False)
    assert_same_weights(resumed.saes[0], clean.saes[0])


# ---- callbacks -----------------------------------------------------------------------------
def test_callbacks_fire_with_state(tmp_path):
    class Recorder(Callback):
        def __init__(self):
            self.events = []

        def on_train_start(self, state):
            self.events.append(("start", state.step))

        def on_step_end(self, state):
            self.events.append(("step", state.step))
            if state.step == 3:
                self.first = (state.losses, state.l0, state.dead_fraction, state.lr)

        def on_checkpoint(self, state):
            self.events.append(("checkpoint", state.step))

        def on_train_end(self, state):
            self.events.append(("end", state.step))

    class DuckTyped:  # not a Callback subclass
        logs = []

        def on_log(self, state):
            self.logs.append([dict(row) for row in state.log])

    recorder, duck, ticks = Recorder(), DuckTyped(), []
    cfg = fast(steps=20, log_every=5, checkpoint_every=10)
    result = train(
        [make_sae(), make_sae("relu")],
        sparse_batches(),
        cfg,
        out_dir=tmp_path,
        callbacks=[recorder, duck, Callback(on_step_end=lambda s: ticks.append(s.n_tokens))],
        progress=False,
    )
    assert recorder.events[0] == ("start", 0) and recorder.events[-1] == ("end", 20)
    assert [e for e in recorder.events if e[0] == "step"] == [("step", s) for s in range(1, 21)]
    assert [e for e in recorder.events if e[0] == "checkpoint"] == [("checkpoint", 10), ("checkpoint", 20)]
    assert ticks == [BATCH * s for s in range(1, 21)]
    losses, l0, dead, lr = recorder.first
    assert len(losses) == 2 and "mse" in losses[0] and "loss" in losses[1]
    assert 0 < l0[0] <= 4 and dead == [0.0, 0.0] and lr == [5e-3, 5e-3]
    assert [rows[0]["step"] for rows in duck.logs] == [5, 10, 15, 20]
    assert [row for rows in duck.logs for row in rows] == result.history
    assert {"step", "n_tokens", "sae", "lr", "loss", "mse", "l0", "dead_fraction"} <= set(result.history[0])
    with pytest.raises(ValueError, match="unknown callback event"):
        Callback(on_batch_end=print)
    with pytest.raises(TypeError, match="Callback\\(on_step_end=fn\\)"):
        train(make_sae(), sparse_batches(), cfg, callbacks=[print], progress=False)


def test_progress_bar_runs(capsys):
    train([make_sae(), make_sae("relu")], sparse_batches(), fast(steps=10, log_every=5), progress=True)
    assert "train" in capsys.readouterr().err


# ---- normalisation, b_dec, schedules -----------------------------------------------------
def test_activation_scale_is_folded_into_the_weights(tmp_path):
    raw_scale = 300.0
    cfg = fast(steps=100, lr=1e-2)
    result = train(make_sae(), sparse_batches(scale=raw_scale), cfg, out_dir=tmp_path, progress=False)
    scale = result.stats[0]["activation_scale"]
    first = next(sparse_batches(scale=raw_scale))
    assert scale == pytest.approx(math.sqrt(D_IN) / first.norm(dim=-1).mean().item(), rel=1e-5)
    assert_same_weights(SAE.load(sae_dir(tmp_path)), result.saes[0])

    # The same training, fed the scaled inputs itself, gives the unfolded SAE.
    prescaled = (x * scale for x in sparse_batches(scale=raw_scale))
    unfolded = train(make_sae(), prescaled, replace(cfg, normalize_activations=False), progress=False)
    assert unfolded.stats[0]["activation_scale"] == 1.0
    x = next(sparse_batches(seed=99, scale=raw_scale))
    with torch.no_grad():
        x_hat_raw, x_hat_scaled = result.saes[0](x).x_hat, unfolded.saes[0](x * scale).x_hat
    torch.testing.assert_close(x_hat_raw, x_hat_scaled / scale, rtol=1e-4, atol=1e-3)
    held_out = list(sparse_batches(seed=99, scale=raw_scale, n=4))
    raw = reconstruction_metrics(result.saes[0], held_out)
    normalised = reconstruction_metrics(unfolded.saes[0], [x * scale for x in held_out])
    assert raw.fvu == pytest.approx(normalised.fvu, rel=1e-3) and raw.fvu < 0.3


@pytest.mark.parametrize("init", ["geometric_median", "mean", "zeros"])
def test_b_dec_initialisation(init):
    result = train(make_sae(), sparse_batches(), fast(steps=1, lr=1e-12, init_b_dec=init), progress=False)
    scale = result.stats[0]["activation_scale"]
    x = next(sparse_batches()) * scale  # the first batch, as the SAE saw it
    expected = {"geometric_median": geometric_median(x), "mean": x.mean(0), "zeros": torch.zeros(D_IN)}[init]
    # b_dec barely moved (lr ~ 0) and was then divided by the folded scale.
    torch.testing.assert_close(result.saes[0].b_dec.detach() * scale, expected, atol=1e-4, rtol=1e-4)


def test_geometric_median_of_known_points():
    # Collinear points: the geometric median is the ordinary median.
    line = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 0.0], [100.0, 0.0]])
    torch.testing.assert_close(geometric_median(line), torch.tensor([2.0, 0.0]), atol=1e-3, rtol=0)
    # Corners of a square plus a far outlier: the median stays inside the square (the mean does not).
    square = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0], [50.0, 50.0]])
    assert geometric_median(square).abs().max() < 1 < square.mean(0).abs().min()
    # Generic points: at the median the unit vectors towards the points sum to zero.
    points = torch.randn(200, 5, dtype=torch.float64) * torch.tensor([1.0, 2, 3, 4, 5], dtype=torch.float64) + 3
    median = geometric_median(points, max_iter=1000)
    units = (points - median) / (points - median).norm(dim=1, keepdim=True)
    assert units.sum(0).norm() < 1e-4 * len(points)
    assert median.dtype == torch.float64


def test_schedules_and_config_validation():
    cfg = TrainConfig(steps=100, lr_warmup_steps=10, lr_decay_steps=20, sparsity_warmup_steps=4)
    steps = (1, 5, 10, 50, 81, 90, 100)
    assert [cfg.lr_multiplier(s) for s in steps] == pytest.approx([0.1, 0.5, 1, 1, 1, 0.55, 0.05])
    assert [cfg.sparsity_scale(s) for s in (1, 2, 4, 100)] == [0.25, 0.5, 1.0, 1.0]
    assert default_lr(2**14) == pytest.approx(2e-4) and default_lr(2**16) == pytest.approx(1e-4)
    bad_fields = {"steps": 0, "lr": -1.0, "init_b_dec": "median", "resample_every": 0, "adam_betas": (0.9, 1)}
    for name, value in bad_fields.items():
        with pytest.raises(ValueError, match=name):
            TrainConfig(**{"steps": 10, name: value})


def test_default_lr_follows_width():
    saes = [make_sae(), make_sae(d_sae=4 * D_SAE)]
    result = train(saes, sparse_batches(), fast(steps=2, lr=None), progress=False)
    assert [row["lr"] for row in result.history[-2:]] == pytest.approx([default_lr(D_SAE), default_lr(4 * D_SAE)])


def test_short_data_stops_with_a_warning():
    with pytest.warns(UserWarning, match="ran out after 7"):
        result = train(make_sae(), sparse_batches(n=7), fast(steps=20), progress=False)
    assert result.history[-1]["step"] == 7 and result.history[-1]["n_tokens"] == 7 * BATCH


# ---- resampling ------------------------------------------------------------------------------
def test_relu_resampling_revives_dead_features():
    cfg = fast(steps=90, dead_window=10 * BATCH, log_every=10)
    without = train(killed_relu(), sparse_batches(), cfg, progress=False)
    assert without.stats[0]["dead_fraction"] >= 0.5
    resampled = train(killed_relu(), sparse_batches(), replace(cfg, resample_every=30), progress=False)
    assert resampled.history[1]["step"] == 20 and resampled.history[1]["dead_fraction"] >= 0.5
    revived = reconstruction_metrics(resampled.saes[0], sparse_batches(seed=5, n=4)).dead_fraction
    assert revived < 0.2 and resampled.stats[0]["dead_fraction"] < 0.2
    # Other architectures are left alone.
    topk = train(make_sae("topk"), sparse_batches(), replace(cfg, resample_every=30), progress=False)
    assert topk.stats[0]["step"] == 90


# ---- fine-tuning a trained SAE -----------------------------------------------------------------
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_fine_tuning_a_saved_sae_continues_from_it(architecture, tmp_path):
    """One step at lr 1e-12 on a trained, saved and re-loaded SAE leaves it as it was: b_dec is
    not re-initialised, the decoder not re-normalised and the scale not folded twice."""
    sae = make_sae(architecture)
    train(sae, sparse_batches(scale=30.0), fast(steps=60), progress=False)
    sae.save(tmp_path / "sae")
    loaded = SAE.load(tmp_path / "sae")
    assert sae.trained and loaded.trained and not make_sae(architecture).trained
    held_out = list(sparse_batches(seed=99, scale=30.0, n=4))
    before = reconstruction_metrics(loaded, held_out).fvu
    old = weights(loaded)
    if architecture == "batchtopk":  # its inference threshold is a running mean, not a weight: freeze it too
        loaded.cfg.batchtopk_threshold_lr = 1e-12
    # different data statistics (scale 20 vs 30): the scale un-folded and folded back must cancel
    train(loaded, sparse_batches(seed=3, scale=20.0), fast(steps=1, lr=1e-12), progress=False)
    after = reconstruction_metrics(loaded, held_out).fvu
    assert abs(after - before) < 1e-4, (before, after)
    for key, value in weights(loaded).items():
        torch.testing.assert_close(value, old[key], rtol=1e-4, atol=1e-5, msg=key)


def test_fine_tuning_keeps_learning_and_resumes_exactly(tmp_path):
    """A trained SAE fine-tuned for real improves on new data, and a killed fine-tuning run
    resumes from its checkpoint to the same weights (the held decoder norms travel with it)."""
    base = make_sae("topk")
    train(base, sparse_batches(n=5), fast(steps=5), progress=False)
    base.save(tmp_path / "base")
    held_out = list(sparse_batches(seed=99, n=4))
    before = reconstruction_metrics(base, held_out).fvu
    whole = SAE.load(tmp_path / "base")
    train(whole, sparse_batches(seed=1), fast(steps=40), progress=False)
    assert reconstruction_metrics(whole, held_out).fvu < before

    class Stop(Exception):
        pass

    def stop_at_20(state):
        if state.step == 20:
            raise Stop

    part = SAE.load(tmp_path / "base")
    with pytest.raises(Stop):
        train(part, sparse_batches(seed=1), fast(steps=40), out_dir=tmp_path / "run",
              callbacks=[Callback(on_step_end=stop_at_20)], progress=False)
    resumed = SAE.load(tmp_path / "base")
    train(resumed, sparse_batches(seed=1), fast(steps=40), out_dir=tmp_path / "run", progress=False)
    assert_same_weights(resumed, whole, atol=1e-5)


def test_fine_tuning_refuses_non_finite_weights():
    sae = make_sae("topk")
    sae.trained = True
    with torch.no_grad():
        sae.W_enc[0, 0] = math.nan
    with pytest.raises(ValueError, match="cannot be fine-tuned"):
        train(sae, sparse_batches(), fast(steps=2), progress=False)


def test_fine_tuning_a_saelens_folder(tmp_path):
    """A SAELens-format folder written by SAELens itself, loaded and trained one step at lr 1e-12."""
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    held_out = list(sparse_batches(seed=99, scale=30.0, n=4))
    for sae_cls, cfg_cls, extra in ((TopKSAE, TopKSAEConfig, {"k": 4}), (StandardSAE, StandardSAEConfig, {})):
        torch.manual_seed(0)
        theirs = sae_cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **extra))
        with torch.no_grad():
            theirs.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)  # row norms far from 1, as a trained SAELens SAE's
            theirs.b_dec.copy_(torch.randn(D_IN) * 5)
        folder = tmp_path / sae_cls.__name__
        theirs.save_model(folder)
        ours = SAE.load(folder)
        before = reconstruction_metrics(ours, held_out).fvu
        train(ours, sparse_batches(seed=3, scale=20.0), fast(steps=1, lr=1e-12), progress=False)
        after = reconstruction_metrics(ours, held_out).fvu  # an untrained SAE: FVU ~30, so relative
        assert abs(after - before) < 1e-4 * max(before, 1.0), (sae_cls.__name__, before, after)


# ---- no host synchronisation per step -------------------------------------------------------
class SyncRecorder:
    """Records the aten ops that make a CUDA host wait for the device (item/bool/int/float,
    nonzero, bincount, boolean indexing, ...) while ``active``, as ``(step, op)`` pairs."""

    OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::bincount", "aten::masked_select",
           "aten::multinomial", "aten::_unique", "aten::_unique2", "aten::unique_dim",
           "aten::unique_consecutive", "aten::unique_dim_consecutive"}  # fmt: skip

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        recorder = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if recorder.active and recorder.syncs(func, args, kwargs):
                    recorder.seen.append((recorder.step, str(func)))
                return func(*args, **kwargs)

        self.mode = Mode()
        self.active, self.step, self.seen = False, 0, []

    @classmethod
    def syncs(cls, func, args, kwargs) -> bool:
        name = func._schema.name
        if name in cls.OPS:
            return True
        if name == "aten::repeat_interleave" and func._overloadname == "Tensor":
            return kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None)
        if name in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"):
            return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1])
        return False


class _FusedAdam(torch.optim.Adam):
    """What the trainer gets on CUDA (fused Adam, no ``step.item()``), here on CPU."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **{**kwargs, "fused": True})


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_training_steps_never_wait_for_the_device(architecture, monkeypatch):
    """Steps 4 to 12 of train(), with dead latents (AuxK runs) and batchtopk's threshold set,
    issue no op that syncs on CUDA when the sync-free path is forced (as on CUDA) and Adam is
    fused (as on CUDA). Logging (after step 12 here) may sync."""
    import workbench.sae

    monkeypatch.setattr(workbench.sae, "_SYNC_FREE", True)
    monkeypatch.setattr(torch.optim, "Adam", _FusedAdam)
    sae = make_sae(architecture, 7)
    with torch.no_grad():  # half the latents can never fire: dead after dead_window tokens
        if architecture == "topafa":  # no encoder bias
            sae.W_enc[:, : D_SAE // 2] = 0
        else:
            (sae.b_gate if architecture == "gated" else sae.b_enc)[: D_SAE // 2] = -1e3
    recorder, dead = SyncRecorder(), []

    def on_step_end(state):
        if state.step == 3:
            dead.append(state.dead_fraction[0])  # reads the device: before recording starts
        recorder.step = state.step
        recorder.active = 3 <= state.step < 12

    cfg = fast(steps=12, log_every=100, dead_window=2 * BATCH, max_grad_norm=1.0, sparsity_warmup_steps=5,
               lr_warmup_steps=3, lr_decay_steps=4, resample_every=100)  # fmt: skip
    with recorder.mode:
        result = train(sae, list(sparse_batches(n=12)), cfg, callbacks=[Callback(on_step_end=on_step_end)],
                       progress=False)  # fmt: skip
    assert recorder.seen == []
    assert dead[0] >= 0.5 and result.history[-1]["step"] == 12  # AuxK had dead latents to work on
    assert recorder.syncs(torch.ops.aten.nonzero.default, (torch.ones(2),), {})  # the recorder does see syncs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_training_steps_never_wait_for_the_gpu(architecture):
    """The same on a GPU, where CUDA itself reports every synchronising call (kernels' own too)."""
    sae = make_sae(architecture, 7, device="cuda")

    def on_step_end(state):
        torch.cuda.set_sync_debug_mode("error" if 3 <= state.step < 12 else "default")

    cfg = fast(steps=12, log_every=100, dead_window=2 * BATCH, max_grad_norm=1.0)
    try:
        train(sae, [x.cuda() for x in sparse_batches(n=12)], cfg, callbacks=[Callback(on_step_end=on_step_end)],
              progress=False)  # fmt: skip
    finally:
        torch.cuda.set_sync_debug_mode("default")
