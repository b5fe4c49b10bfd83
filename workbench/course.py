"""The beginners' course in ``notebooks/learn/``: exercise checks, a toy model of superposition, a few charts.

Every ``check_*`` function takes the learner's answer (usually a function they wrote), tries it on
data whose right answer is known, and *prints* what it found: congratulations, or what is wrong
and a hint (wrong shape, wrong sign, a factor of ``d_in`` off, ...). It never raises, so a notebook
with unanswered exercises still runs to its end, and it returns ``True`` only for a right answer,
which the notebooks record in their results JSON. An answer left as ``None`` (or a function that
returns ``None``) is reported as not answered yet.

The answers are in :mod:`workbench.course_solutions`, apart, so the course can be handed out
without them. The toy model is Anthropic's *Toy Models of Superposition* (Elhage et al. 2022):
``n_features`` sparse features squeezed into ``d_hidden < n_features`` dimensions and read back
through ``ReLU(W^T W x + b)``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from workbench.charts import Chart

__all__ = [
    "ToyModel",
    "ToySAE",
    "bar_chart",
    "check_density",
    "check_encoder",
    "check_fvu",
    "check_l0",
    "check_logit_diff",
    "check_loss",
    "check_patch",
    "check_top_token",
    "check_topk",
    "cosine_matrix",
    "course_sae",
    "directions_chart",
    "matrix_chart",
    "sparse_features",
    "train_toy_model",
    "train_toy_sae",
]

RIGHT, WRONG, TODO = "✅", "❌", "✏️"


# ---- how a check speaks -----------------------------------------------------------------------
def _right(what: str, message: str = "") -> bool:
    print(f"{RIGHT} {what}: right! {message}".rstrip())
    return True


def _wrong(what: str, message: str) -> bool:
    print(f"{WRONG} {what}: {message}")
    return False


def _todo(what: str, where: str) -> bool:
    print(f"{TODO} {what}: not answered yet: fill in {where} in the cell above, then run this cell again.")
    return False


def _call(what: str, where: str, answer: Any, *args: Any) -> tuple[bool, Any]:
    """Call the learner's function; ``(False, None)`` after printing why when it is missing or raises."""
    if answer is None:
        return False, _todo(what, where)
    if not callable(answer):
        return False, _wrong(what, f"expected a function, got {type(answer).__name__}: define `{where}` with `def`.")
    try:
        result = answer(*args)
    except Exception as err:  # the learner's code: report it, never stop the notebook
        return False, _wrong(what, f"your `{where}` raised {type(err).__name__}: {err}")
    if result is None:
        return False, _todo(what, where)
    return True, result


def _tensor(what: str, value: Any, shape: tuple[int, ...], meaning: str) -> Tensor | None:
    """``value`` as a float tensor of ``shape``, or None after saying what was expected."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value))
    if not isinstance(value, Tensor):
        _wrong(what, f"expected a tensor {meaning}, got {type(value).__name__}.")
        return None
    if tuple(value.shape) != shape:
        hint = " (transposed?)" if tuple(value.shape) == shape[::-1] and len(shape) == 2 else ""
        _wrong(what, f"wrong shape: expected {shape} {meaning}, got {tuple(value.shape)}{hint}.")
        return None
    return value.detach().double()


def _close(a: Tensor | float, b: Tensor | float, tol: float = 1e-4) -> bool:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        return False
    scale = 1 + float(b.abs().max()) if b.numel() else 1.0
    return bool(torch.allclose(a, b, rtol=tol, atol=tol * scale))


def _number(what: str, value: Any, meaning: str) -> float | None:
    """A scalar answer as a float, or None after saying what was expected."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            _wrong(what, f"expected one number ({meaning}), got a tensor of shape {tuple(value.shape)}: "
                         "average (or sum) it down to a single value.")
            return None
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _wrong(what, f"expected a number ({meaning}), got {type(value).__name__}.")
        return None
    return float(value)


# ---- notebook 1: the SAE's three pieces ----------------------------------------------------------
def _encoder_case(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, generator=g)
    W_enc = torch.randn(3, 5, generator=g)
    b_enc = torch.randn(5, generator=g)
    b_dec = torch.randn(3, generator=g)
    return x, W_enc, b_enc, b_dec


def check_encoder(encode: Callable | None) -> bool:
    """``encode(x, W_enc, b_enc, b_dec)`` should return the pre-activations ``(x - b_dec) @ W_enc + b_enc``."""
    what = "encoder"
    x, W_enc, b_enc, b_dec = _encoder_case()
    ok, out = _call(what, "`encode`", encode, x, W_enc, b_enc, b_dec)
    if not ok:
        return False
    got = _tensor(what, out, (6, 5), "[batch, d_sae] (6 inputs, 5 features)")
    if got is None:
        return False
    right = (x - b_dec) @ W_enc + b_enc
    if _close(got, right):
        return _right(what, "The encoder turns an input into one pre-activation per feature.")
    hints = [
        (x @ W_enc + b_enc, "you forgot to subtract the decoder bias b_dec from x before multiplying by W_enc."),
        ((x - b_dec) @ W_enc, "you forgot to add the encoder bias b_enc."),
        (x @ W_enc, "you forgot both biases: subtract b_dec from x first, add b_enc at the end."),
        ((x + b_dec) @ W_enc + b_enc, "wrong sign: subtract b_dec from x (x - b_dec), do not add it."),
        (torch.relu(right), "this is ReLU(pre-activations); return the pre-activations themselves: "
                            "the TopK step (exercise 3) decides which features fire."),
    ]
    for value, hint in hints:
        if _close(got, value):
            return _wrong(what, hint)
    return _wrong(what, f"the values differ from (x - b_dec) @ W_enc + b_enc (largest difference "
                        f"{float((got - right).abs().max()):.3g}).")


def _topk_case() -> tuple[Tensor, int]:
    pre = torch.tensor([[0.5, -1.0, 2.0, 0.1, 1.5, -0.3],
                        [-2.0, -0.5, -1.0, 0.2, -3.0, -0.1],  # only one positive: ReLU matters
                        [3.0, 2.0, 1.0, 0.0, -1.0, 4.0]], dtype=torch.float32)
    return pre, 3


def check_topk(topk: Callable | None) -> bool:
    """``topk(pre, k)`` should keep each row's ``k`` largest pre-activations, ReLU them, and zero the rest,
    returning a dense ``[batch, d_sae]`` tensor through which gradients flow."""
    what = "TopK"
    pre, k = _topk_case()
    pre = pre.clone().requires_grad_()
    ok, out = _call(what, "`topk`", topk, pre, k)
    if not ok:
        return False
    if isinstance(out, tuple):
        return _wrong(what, "you returned a tuple (torch.topk gives (values, indices)): put the values back "
                            "into a [batch, d_sae] tensor of zeros at their indices, e.g. with scatter.")
    if isinstance(out, Tensor) and tuple(out.shape) == (3, k):
        return _wrong(what, f"you returned only the k={k} kept values, shape {tuple(out.shape)}: put them back into "
                            "a [batch, d_sae] tensor of zeros at their indices (torch.zeros_like(pre).scatter(...)).")
    got = _tensor(what, out, tuple(pre.shape), "[batch, d_sae], the same shape as pre")
    if got is None:
        return False
    p = pre.detach()
    vals, idx = p.topk(k, dim=1)
    right = torch.zeros_like(p).scatter(1, idx, vals.clamp_min(0)).double()
    if _close(got, right):
        if not (isinstance(out, Tensor) and out.requires_grad):
            return _wrong(what, "the values are right, but no gradient flows back to pre: avoid .detach(), "
                                "torch.no_grad(), .tolist() or new tensors built from numbers.")
        return _right(what, f"Each input keeps its {k} strongest features, none negative.")
    no_relu = torch.zeros_like(p).scatter(1, idx, vals).double()
    low_vals, low_idx = p.topk(k, dim=1, largest=False)
    smallest = torch.zeros_like(p).scatter(1, low_idx, low_vals.clamp_min(0)).double()
    if _close(got, no_relu):
        return _wrong(what, "a negative value was kept (row 2 has only one positive pre-activation): "
                            "apply ReLU (.clamp_min(0) or torch.relu) to the kept values.")
    if _close(got, smallest) or _close(got, torch.zeros_like(p).scatter(1, low_idx, low_vals).double()):
        return _wrong(what, "you kept the k smallest pre-activations: use the largest (torch.topk's default).")
    per_row = (got != 0).sum(1)
    if bool((per_row > k).any()):
        return _wrong(what, f"a row keeps {int(per_row.max())} non-zero features; TopK keeps at most k={k} per row "
                            "(along dim=1, the feature axis).")
    cols_vals, cols_idx = p.topk(min(k, p.shape[0]), dim=0)
    if _close(got, torch.zeros_like(p).scatter(0, cols_idx, cols_vals.clamp_min(0)).double()):
        return _wrong(what, "you took the top k along dim=0 (over inputs); take it along dim=1, over features.")
    return _wrong(what, f"the values differ from the expected ones (largest difference "
                        f"{float((got - right).abs().max()):.3g}); expected\n{right.numpy()}")


def check_loss(loss: Callable | None) -> bool:
    """``loss(x, x_hat)`` should be the squared error summed over ``d_in`` and averaged over the batch
    (workbench's convention, :mod:`workbench.sae`)."""
    what = "loss"
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, generator=g)
    x_hat = (x + 0.5 * torch.randn(8, 4, generator=g)).requires_grad_()
    ok, out = _call(what, "`loss`", loss, x, x_hat)
    if not ok:
        return False
    value = _number(what, out, "the loss of the batch")
    if value is None:
        return False
    right = float(((x_hat.detach() - x) ** 2).sum(-1).mean())
    batch, d_in = x.shape
    if math.isclose(value, right, rel_tol=1e-4):
        if not (isinstance(out, Tensor) and out.requires_grad):
            return _wrong(what, "the value is right, but it carries no gradient: compute it with torch operations "
                                "on x_hat (no .item(), .detach() or float()).")
        return _right(what, "Squared error, summed over the d_in dimensions, averaged over the batch.")
    hints = [
        (right / d_in, f"your loss is {d_in}x too small (d_in = {d_in}): you averaged over the dimensions too; "
                       "sum over d_in (.sum(-1)), then average over the batch (.mean())."),
        (right * batch, f"your loss is {batch}x too large (the batch size): did you sum instead of mean over "
                        "the batch?"),
        (-right, "wrong sign: a loss is >= 0 and training makes it smaller."),
        (float((x_hat.detach() - x).norm(dim=-1).mean()), "you averaged the error's length ||x - x_hat||; square it."),
        (float((x_hat.detach() - x).sum(-1).pow(2).mean()), "square each element before summing over d_in, not after."),
        (float((x_hat.detach() - x).abs().sum(-1).mean()), "that is the absolute error (L1); square the differences."),
    ]
    for candidate, hint in hints:
        if math.isclose(value, candidate, rel_tol=1e-4):
            return _wrong(what, hint)
    return _wrong(what, f"your loss is {value:.4g}, expected {right:.4g} (ratio {value / right:.3g}).")


# ---- notebook 2: reconstruction and sparsity, by hand ----------------------------------------------
def check_fvu(fvu: Callable | None, x: Tensor, x_hat: Tensor, library: float) -> bool:
    """``fvu(x, x_hat)``: total squared error over the total squared deviation of ``x`` from its mean;
    ``library`` is :func:`workbench.metrics.reconstruction_metrics`'s FVU on the same rows."""
    what = "FVU"
    ok, out = _call(what, "`fvu`", fvu, x, x_hat)
    if not ok:
        return False
    value = _number(what, out, "the fraction of variance unexplained")
    if value is None:
        return False
    x64, xh = x.double(), x_hat.double()
    err = (x64 - xh).pow(2)
    if math.isclose(value, library, rel_tol=1e-3):
        return _right(what, f"{value:.4f}, the same as the library's reconstruction_metrics ({library:.4f}).")
    hints = [
        (1 - library, "that is the explained variance (1 - FVU); FVU is the part left unexplained."),
        (float(err.sum() / x64.pow(2).sum()), "you divided by the sum of squares of x; divide by its squared "
                                              "deviation from the mean, ((x - x.mean(0))**2).sum()."),
        (float((err.sum(0) / (x64 - x64.mean(0)).pow(2).sum(0)).mean()),
         "you averaged a per-dimension FVU; sum the error over every dimension first, then divide once."),
        (float(err.sum(-1).mean()), "that is the MSE per token; divide the total error by the total variance."),
    ]
    for candidate, hint in hints:
        if math.isclose(value, candidate, rel_tol=1e-3):
            return _wrong(what, hint)
    return _wrong(what, f"your FVU is {value:.4g}, the library's {library:.4g} (ratio {value / library:.3g}).")


def check_l0(l0: Callable | None, acts: Tensor, library: float) -> bool:
    """``l0(acts)``: the mean over tokens of the number of non-zero features; ``library`` is
    :func:`workbench.metrics.reconstruction_metrics`'s ``l0_mean``."""
    what = "L0"
    ok, out = _call(what, "`l0`", l0, acts)
    if not ok:
        return False
    if isinstance(out, Tensor) and out.ndim == 1 and out.numel() == acts.shape[0]:
        return _wrong(what, f"you returned one count per token ({out.numel()} values); return their mean, one number.")
    value = _number(what, out, "the mean number of active features per token")
    if value is None:
        return False
    n, d_sae = acts.shape
    if math.isclose(value, library, rel_tol=1e-4):
        return _right(what, f"{value:.2f} active features per token, as the library says.")
    hints = [
        (library * n, f"that is the count over all {n} tokens; divide by the number of tokens."),
        (library / d_sae, "you averaged over the features too; count per token (.sum(-1)), then average over tokens."),
        (float(acts.double().sum(-1).mean()), "you summed the activations' values; count the non-zero ones, "
                                              "(acts != 0) or (acts > 0)."),
        (float((acts != 0).double().sum(0).mean()), "you counted along the wrong axis (tokens per feature)."),
    ]
    for candidate, hint in hints:
        if math.isclose(value, candidate, rel_tol=1e-4):
            return _wrong(what, hint)
    return _wrong(what, f"your L0 is {value:.4g}, the library's {library:.4g}.")


# ---- notebook 3: reading features ---------------------------------------------------------------
def check_density(density: Callable | None, acts: Tensor) -> bool:
    """``density(acts)``: per feature, the fraction of tokens (rows of ``acts``) on which it fires."""
    what = "density"
    ok, out = _call(what, "`density`", density, acts)
    if not ok:
        return False
    n, d_sae = acts.shape
    if isinstance(out, Tensor) and tuple(out.shape) == (n,):
        return _wrong(what, f"you returned one value per token ({n}); return one per feature ({d_sae}): "
                            "average over dim 0, the tokens.")
    got = _tensor(what, out, (d_sae,), "[d_sae], one fraction per feature")
    if got is None:
        return False
    fires = (acts > 0).double()
    right = fires.mean(0)
    if _close(got, right, 1e-5):
        return _right(what, f"{int((right == 0).sum())} of {d_sae} features never fired on these tokens.")
    hints = [
        (fires.sum(0), f"those are counts; divide by the number of tokens ({n}) for a fraction."),
        (acts.double().mean(0), "you averaged the activation values; average whether each feature fires, (acts > 0)."),
    ]
    for candidate, hint in hints:
        if _close(got, candidate, 1e-5):
            return _wrong(what, hint)
    return _wrong(what, f"the values differ (largest difference {float((got - right).abs().max()):.3g}).")


def check_top_token(top_token: Callable | None, acts: Tensor, tokens: Sequence[str], feature: int) -> bool:
    """``top_token(acts, tokens, feature)``: the token (a string of ``tokens``) where ``feature`` fires most."""
    what = "top-activating token"
    ok, out = _call(what, "`top_token`", top_token, acts, list(tokens), feature)
    if not ok:
        return False
    column = acts[:, feature]
    at = int(column.argmax())
    right = tokens[at]
    if isinstance(out, Tensor) and out.numel() == 1:
        out = out.item()
    if isinstance(out, int):
        if out == at:
            return _wrong(what, f"{out} is the position of the token; return the token itself, tokens[{out}].")
        return _wrong(what, f"expected a token (a string), got the number {out}.")
    if not isinstance(out, str):
        return _wrong(what, f"expected a token (a string), got {type(out).__name__}.")
    if out == right:
        return _right(what, f"feature {feature} fires most on {right!r} (activation {float(column[at]):.3g}).")
    if out == tokens[int(column.argmin())]:
        return _wrong(what, "that is where the feature is weakest (argmin); use argmax.")
    if out == tokens[int(acts.argmax()) // acts.shape[1]]:
        return _wrong(what, f"look only at column `feature` ({feature}) of acts, acts[:, feature].")
    return _wrong(what, f"you answered {out!r}; feature {feature} is largest on another token.")


# ---- notebook 4: causing things ------------------------------------------------------------------
def check_logit_diff(logit_diff: Callable | None, logits: Tensor, io_ids: Tensor, s_ids: Tensor) -> bool:
    """``logit_diff(logits, io_ids, s_ids)``: per prompt, the logit of its IO token minus that of its S token;
    compared with :func:`workbench.ioi.logit_diff`."""
    from workbench.ioi import logit_diff as reference

    what = "logit difference"
    ok, out = _call(what, "`logit_diff`", logit_diff, logits, io_ids, s_ids)
    if not ok:
        return False
    n = logits.shape[0]
    right = reference(logits, io_ids, s_ids).double()
    if isinstance(out, Tensor) and out.numel() == 1 and n > 1:
        if math.isclose(out.item(), float(right.mean()), rel_tol=1e-4):
            return _wrong(what, f"you returned the mean over prompts; return one value per prompt, shape ({n},).")
    got = _tensor(what, out, (n,), f"({n},), one value per prompt")
    if got is None:
        return False
    if _close(got, right):
        return _right(what, f"mean {float(right.mean()):+.2f}: positive when the model prefers the IO name.")
    probs = logits.double().softmax(-1)
    rows = torch.arange(n)
    hints = [
        (-right, "wrong sign: IO minus S, not S minus IO."),
        (probs[rows, io_ids] - probs[rows, s_ids], "that is a difference of probabilities; use the raw logits."),
    ]
    for candidate, hint in hints:
        if _close(got, candidate):
            return _wrong(what, hint)
    return _wrong(what, f"the values differ from logits[i, io_ids[i]] - logits[i, s_ids[i]] (largest difference "
                        f"{float((got - right).abs().max()):.3g}).")


def check_patch(patch: Callable | None, x: Tensor, c: Tensor, c_bar: Tensor, directions: Tensor, mask: Tensor) -> bool:
    """``patch(x, c, c_bar, directions, mask)``: ``x' = x + sum_j mask_j (c_bar_j - c_j) d_j`` with ``x``
    ``[..., d]``, coefficients ``[..., n]``, ``directions [n, d]`` and a 0/1 ``mask [n]``."""
    what = "patched activation"
    ok, out = _call(what, "`patch`", patch, x, c, c_bar, directions, mask)
    if not ok:
        return False
    got = _tensor(what, out, tuple(x.shape), "the shape of x")
    if got is None:
        return False
    m = mask.double()
    x64, c64, cb, d = x.double(), c.double(), c_bar.double(), directions.double()
    right = x64 + ((cb - c64) * m) @ d
    if _close(got, right):
        return _right(what, "Only the masked features move, each to its counterfactual value.")
    hints = [
        (x64 + ((c64 - cb) * m) @ d, "wrong sign: patch towards the counterfactual, (c_bar - c), not (c - c_bar)."),
        (x64 + (cb - c64) @ d, "you patched every feature; multiply (c_bar - c) by the mask first."),
        (((cb - c64) * m) @ d, "you returned only the change; add it to x."),
        (x64 + (cb * m) @ d, "you added c_bar's features without removing the clean ones: use (c_bar - c)."),
    ]
    for candidate, hint in hints:
        if _close(got, candidate):
            return _wrong(what, hint)
    return _wrong(what, f"the values differ from x + ((c_bar - c) * mask) @ directions (largest difference "
                        f"{float((got - right).abs().max()):.3g}).")


# ---- the toy model of superposition ----------------------------------------------------------------
def sparse_features(n: int, n_features: int, density: float, *, seed: int = 0) -> Float[Tensor, "n n_features"]:
    """``n`` samples of ``n_features`` independent features, each present with probability ``density``
    at a strength uniform in [0, 1] (Elhage et al. 2022)."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    g = torch.Generator().manual_seed(seed)
    on = torch.rand(n, n_features, generator=g) < density
    return torch.rand(n, n_features, generator=g) * on


class ToyModel(nn.Module):
    """``hidden = x @ W`` squeezes ``n_features`` into ``d_hidden``; ``ReLU(hidden @ W.T + b)`` reads them back.
    Row ``i`` of ``W [n_features, d_hidden]`` is feature ``i``'s direction in the hidden space."""

    def __init__(self, n_features: int, d_hidden: int, *, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(n_features, d_hidden, generator=g) * (2 / (n_features + d_hidden)) ** 0.5)
        self.b = nn.Parameter(torch.zeros(n_features))

    def hidden(self, x: Float[Tensor, "batch n_features"]) -> Float[Tensor, "batch d_hidden"]:
        return x @ self.W

    def forward(self, x: Float[Tensor, "batch n_features"]) -> Float[Tensor, "batch n_features"]:
        return torch.relu(self.hidden(x) @ self.W.T + self.b)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny tensors train faster on one thread than on several (and leave the other cores alone)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@_one_thread()
def train_toy_model(n_features: int, d_hidden: int, density: float, *, steps: int = 3000, batch_size: int = 1024,
                    lr: float = 1e-2, importance_decay: float = 1.0, seed: int = 0) -> tuple[ToyModel, list[float]]:
    """Train :class:`ToyModel` to reconstruct sparse features (squared error, feature ``i`` weighted by
    ``importance_decay ** i``); returns the model and its loss every ``steps // 50`` steps."""
    torch.manual_seed(seed)
    model = ToyModel(n_features, d_hidden, seed=seed)
    importance = importance_decay ** torch.arange(n_features, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    every, losses = max(1, steps // 50), []
    for step in range(steps):
        x = sparse_features(batch_size, n_features, density, seed=seed * 1_000_003 + step)
        loss = (importance * (model(x) - x) ** 2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps - 1:
            losses.append(loss.item())
    return model.eval(), losses


class ToySAE(nn.Module):
    """A TopK SAE's parameters in workbench's orientation (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``);
    :func:`train_toy_sae` runs it with the learner's encoder, TopK and loss."""

    def __init__(self, d_in: int, d_sae: int, *, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(d_sae, d_in, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_enc = nn.Parameter(W_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(d_in))


@_one_thread()
def train_toy_sae(data: Float[Tensor, "n d_in"], d_sae: int, k: int, *, encode: Callable | None,
                  topk: Callable | None, loss: Callable | None, ready: bool, steps: int = 2000,
                  batch_size: int = 512, lr: float = 5e-3, seed: int = 0
                  ) -> tuple[Float[Tensor, "d_sae d_in"], list[float], str]:
    """Train a TopK SAE on ``data`` and return its decoder rows (unit norm), its loss every ``steps // 50``
    steps, and who built it.

    With ``ready`` (the three checks passed) it is the learner's: ``encode``, ``topk`` and ``loss`` in a
    plain Adam loop, ``b_dec`` started at the data's mean, decoder rows kept at unit norm. Otherwise the
    library's :class:`workbench.sae.TopKSAE` and :func:`workbench.train.train` stand in."""
    torch.manual_seed(seed)
    d_in = data.shape[1]
    g = torch.Generator().manual_seed(seed)
    if not ready:
        from workbench.sae import SAE, SAEConfig
        from workbench.train import TrainConfig, train

        sae = SAE.from_config(SAEConfig("topk", d_in=d_in, d_sae=d_sae, k=k))
        batches = (data[torch.randint(len(data), (batch_size,), generator=g)] for _ in range(steps))
        result = train(sae, batches, TrainConfig(steps=steps, lr=lr, log_every=max(1, steps // 50)), progress=False)
        history = [row["loss"] for row in result.history if "loss" in row]
        W_dec = result.saes[0].W_dec.detach()
        who = "the library's TopKSAE (finish the exercises to use yours)"
        return W_dec / W_dec.norm(dim=1, keepdim=True), history, who
    sae = ToySAE(d_in, d_sae, seed=seed)
    with torch.no_grad():
        sae.b_dec.copy_(data.mean(0))
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    every, history = max(1, steps // 50), []
    for step in range(steps):
        x = data[torch.randint(len(data), (batch_size,), generator=g)]
        acts = topk(encode(x, sae.W_enc, sae.b_enc, sae.b_dec), k)
        x_hat = acts @ sae.W_dec + sae.b_dec
        value = loss(x, x_hat)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        if step % every == 0 or step == steps - 1:
            history.append(value.item())
    return sae.W_dec.detach().clone(), history, "your encoder, TopK and loss"


def cosine_matrix(a: Float[Tensor, "m d"], b: Float[Tensor, "n d"]) -> Float[Tensor, "m n"]:
    """Cosine similarity of every row of ``a`` with every row of ``b``."""
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


# ---- the shared SAE of notebooks 2-4 --------------------------------------------------------------
def course_sae(model: Any, out_dir: str | Path, *, hookpoint: str, tokens: int, ctx_len: int, d_sae: int, k: int,
               epochs: int, batch_size: int, seed: int = 0) -> tuple[Any, Any]:
    """The SAE and store of ``out_dir`` (``sae_0/`` and ``store/``, as notebook 02 leaves them), capturing
    and training them first with :func:`workbench.pipeline.train_run` when they are not there."""
    from workbench.pipeline import TrainRunConfig, train_run
    from workbench.sae import SAE
    from workbench.store import ActivationStore

    out = Path(out_dir)
    if not (out / "sae_0" / "cfg.json").is_file():
        print(f"no SAE in {out}: capturing {tokens:,} tokens and training one ({d_sae} features, k {k}); "
              "notebook 02 does this step by step")
        train_run(TrainRunConfig(out=str(out), model=model.name, hookpoint=hookpoint, d_sae=d_sae, k=k, tokens=tokens,
                                 ctx_len=ctx_len, epochs=epochs, batch_size=batch_size, eval_tokens=0, seed=seed),
                  model=model, progress=False)
    return SAE.load(out / "sae_0"), ActivationStore.open(out / "store")


# ---- charts ------------------------------------------------------------------------------------
def _chart(draw: Callable[[Any], None], title: str, size: tuple[float, float]) -> Chart:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
                                "axes.spines.top": False, "axes.spines.right": False}):
        fig = Figure(figsize=size, layout="constrained")
        draw(fig)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return Chart(buffer.getvalue(), title)


def directions_chart(W: Float[Tensor, "n d"], *, title: str, labels: Sequence[str] | None = None) -> Chart:
    """Each row of ``W`` as an arrow from the origin (the first two coordinates), labelled by its index."""
    W = W.detach().float()
    labels = list(labels) if labels is not None else [str(i) for i in range(len(W))]

    def draw(fig):
        ax = fig.subplots()
        reach = float(W[:, :2].abs().max()) * 1.25 or 1.0
        for i, (u, v) in enumerate(W[:, :2].tolist()):
            ax.annotate("", xy=(u, v), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": f"C{i % 10}", "lw": 1.5})
            ax.text(u * 1.1, v * 1.1, labels[i], ha="center", va="center", fontsize=8, color=f"C{i % 10}")
        ax.set(xlim=(-reach, reach), ylim=(-reach, reach), aspect="equal", title=title,
               xlabel="hidden dimension 0", ylabel="hidden dimension 1")
        ax.grid(alpha=0.3)

    return _chart(draw, title, (4.2, 4.2))


def matrix_chart(M: Float[Tensor, "m n"], *, title: str, xlabel: str = "", ylabel: str = "",
                 symmetric: bool = True) -> Chart:
    """A heatmap of ``M`` with a colour bar (red positive, blue negative when ``symmetric``)."""
    M = M.detach().float()

    def draw(fig):
        ax = fig.subplots()
        top = float(M.abs().max()) or 1.0
        image = ax.imshow(M.numpy(), cmap="RdBu_r" if symmetric else "viridis",
                          vmin=-top if symmetric else None, vmax=top if symmetric else None, aspect="auto")
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)

    return _chart(draw, title, (6.4, 3.8))


def bar_chart(values: Sequence[float], *, title: str, xlabel: str = "", ylabel: str = "",
              labels: Sequence[str] | None = None, line: float | None = None) -> Chart:
    """Bars of ``values``, with an optional dashed horizontal line at ``line``."""
    values = [float(v) for v in values]

    def draw(fig):
        ax = fig.subplots()
        ax.bar(range(len(values)), values, color="#1f77b4", alpha=0.85)
        if labels is not None:
            ax.set_xticks(range(len(values)), list(labels), rotation=45 if len(values) > 12 else 0, fontsize=8)
        if line is not None:
            ax.axhline(line, color="grey", linestyle="--", linewidth=1)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(axis="y", alpha=0.3)

    return _chart(draw, title, (6.0, 2.8))
