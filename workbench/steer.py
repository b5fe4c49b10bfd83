"""Generate with SAE features steered, compare with the unsteered reply, and read a reply's traits.

:func:`generate` decodes from the model with zero or more :class:`workbench.intervene.Splice`
s in place (each SAE spliced in at its hook point with the error term kept, its edits applied
at every step to every position, prompt and reply alike); with no splice it is the clean model.
:func:`compare_steering` runs it twice, clean and steered, and says how far the steering moved
the model and whether the steered text still reads as fluent to the clean model.
:func:`reply_traits` names the features most active over a reply's tokens, the "traits with
every response".

Decoding is a plain loop of full forward passes, no KV cache: step ``t`` re-reads the prompt and
the ``t`` tokens so far. That keeps every edit exactly as written (positions count from the start
of the prompt at every step) and costs ``O(n^2)`` in the length: fine for the short replies of a
notebook on CPU (SmolLM2-135M: about 0.2 s a step at 40 tokens), slow for long ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from workbench.intervene import run_with_saes

if TYPE_CHECKING:
    from workbench.features import FeatureStats
    from workbench.intervene import Splice
    from workbench.models import Model
    from workbench.sae import SAE

__all__ = ["Generation", "SteeringComparison", "Trait", "compare_steering", "generate", "reply_traits"]

Prompt = str | Sequence[dict] | Sequence[int] | Tensor
"""A prompt: text, chat messages (``[{"role": "user", "content": ...}, ...]``, with ``chat=True``)
or token ids (used as given)."""


@dataclass
class Generation:
    """A prompt and the reply the model wrote to it."""

    prompt_ids: list[int]
    """The prompt's token ids as the model read them (BOS or chat template included)."""
    reply_ids: list[int]
    """The reply's token ids, without the end-of-sequence token that stopped it."""
    reply_text: str
    """The reply, decoded."""
    prompt_tokens: list[str]
    """Each prompt token, decoded on its own."""
    reply_tokens: list[str]
    """Each reply token, decoded on its own."""
    finished: bool
    """True if the model ended the reply (an end-of-sequence token), False if ``max_new_tokens`` did."""

    @property
    def input_ids(self) -> Int[Tensor, "1 seq"]:
        """Prompt and reply as one ``[1, n_prompt + n_reply]`` tensor, for a forward pass."""
        return torch.tensor([self.prompt_ids + self.reply_ids])

    def to_dict(self) -> dict:
        """Plain JSON: every field."""
        return asdict(self)


@dataclass
class SteeringComparison:
    """Clean and steered replies to one prompt, with how far apart the two models are on the steered text.

    With ``P`` prompt tokens and the steered reply ``r_1 .. r_R``, the scores read the steered text
    (prompt + steered reply) at the ``R`` positions whose next-token distributions produced the reply,
    ``p(. | prompt, r_<t)`` for ``t = 1..R``, at temperature 1 (the model's own distributions, whatever
    temperature sampled the reply). A reply of length 0 gives NaN.
    """

    clean: Generation
    """The reply with no splice."""
    steered: Generation
    """The reply with the splices in place."""
    kl_next_token: float
    """``mean_t KL(p_clean(. | prompt, r_<t) || p_steered(. | prompt, r_<t))``, in nats: how much the
    steering moves the next-token distribution along the steered text."""
    steered_loglik_clean: float
    """``mean_t log p_clean(r_t | prompt, r_<t)``: the steered reply's log-likelihood per token under the
    clean model. Far below :attr:`clean_loglik`, steering broke fluency."""
    clean_loglik: float
    """The same for the clean reply under the clean model: the baseline."""

    def to_dict(self) -> dict:
        """Plain types: both generations and the three numbers (NaN for an empty reply)."""
        return {"clean": self.clean.to_dict(), "steered": self.steered.to_dict(), "kl_next_token": self.kl_next_token,
                "steered_loglik_clean": self.steered_loglik_clean, "clean_loglik": self.clean_loglik}


@dataclass
class Trait:
    """A feature active over a reply."""

    feature: int
    """Feature index."""
    total: float
    """Its activation summed over the reply's tokens."""
    n_tokens: int
    """On how many reply tokens it fires (activation > 0)."""
    lift: float | None
    """Its density over the reply (``n_tokens / n_reply``) over its usual density (``stats.density``);
    None without statistics. A feature the statistics never saw fire counts as having fired once
    there (density ``1 / stats.n_tokens``), so its lift is large but finite."""
    title: str
    """How the statistics name it ("feature 7" without them)."""

    def to_dict(self) -> dict:
        return asdict(self)


# ---- generation ---------------------------------------------------------------------------------


def generate(
    model: Model,
    prompt: Prompt,
    *,
    splices: Sequence[Splice] = (),
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    seed: int = 0,
    chat: bool = False,
) -> Generation:
    """The model's reply to ``prompt``, with ``splices`` in place at every step.

    ``temperature`` 0 decodes greedily; above 0, each token is drawn from ``softmax(logits /
    temperature)`` with a ``torch.Generator`` seeded with ``seed`` (on the CPU), so the same
    arguments give the same reply. Decoding stops at an end-of-sequence token (the tokenizer's
    and the generation config's) or after ``max_new_tokens``.

    A text prompt is read after the model's BOS token, as the contexts SAEs are trained on start;
    with ``chat=True`` it becomes a user message (or ``prompt`` is a list of messages) in the
    tokenizer's chat template, with the assistant's turn opened, and the template's own tokens
    are the whole prompt. Token ids are read as given. See the module docstring for the cost.

    ``splices`` go to :func:`workbench.intervene.run_with_saes` at each step (one per hook point).
    An edit's ``positions`` count from the prompt's first token; give them as indices (a bool mask
    has one length, and the text grows). None, every position, steers the prompt too.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    prompt_ids = prompt_token_ids(model, prompt, chat=chat)
    limit = _context_limit(model)
    if limit is not None and len(prompt_ids) + max_new_tokens > limit:
        raise ValueError(f"the prompt ({len(prompt_ids)} tokens) plus max_new_tokens ({max_new_tokens}) exceeds "
                         f"the model's {limit} positions")
    splices = list(splices)
    stop = _eos_ids(model)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor([prompt_ids])
    reply: list[int] = []
    finished = False
    for _ in range(max_new_tokens):
        logits = run_with_saes(model, ids, splices).logits[0, -1].float().cpu()  # (vocab,)
        if temperature == 0:
            token = int(logits.argmax())
        else:
            token = int(torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=generator))
        if token in stop:
            finished = True
            break
        reply.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return Generation(prompt_ids=prompt_ids, reply_ids=reply, reply_text=model.tokenizer.decode(reply),
                      prompt_tokens=_tokens(model, prompt_ids), reply_tokens=_tokens(model, reply), finished=finished)


def compare_steering(model: Model, prompt: Prompt, splices: Sequence[Splice], **generate_kwargs: Any) -> SteeringComparison:
    """Reply to ``prompt`` clean and with ``splices``, with the same decoding settings and seed (so sampled
    replies share their random draws), and score both (see :class:`SteeringComparison`). Costs two
    generations and three forward passes."""
    if "splices" in generate_kwargs:
        raise TypeError("pass the splices as compare_steering's third argument")
    clean = generate(model, prompt, **generate_kwargs)
    steered = generate(model, prompt, splices=splices, **generate_kwargs)
    steered_logp_clean = _reply_log_probs(model, steered, ())  # (R, vocab)
    steered_logp = _reply_log_probs(model, steered, splices)
    clean_logp = _reply_log_probs(model, clean, ())
    kl = (steered_logp_clean.exp() * (steered_logp_clean - steered_logp)).sum(-1)  # (R,)
    return SteeringComparison(
        clean=clean, steered=steered, kl_next_token=_mean(kl),
        steered_loglik_clean=_mean(_chosen(steered_logp_clean, steered.reply_ids)),
        clean_loglik=_mean(_chosen(clean_logp, clean.reply_ids)),
    )


def _reply_log_probs(model: Model, generation: Generation, splices: Sequence[Splice]) -> Float[Tensor, "n_reply vocab"]:
    """Log-probabilities of the next token at the positions that produced each reply token."""
    n_prompt, n_reply = len(generation.prompt_ids), len(generation.reply_ids)
    logits = run_with_saes(model, generation.input_ids, splices).logits[0, n_prompt - 1 : n_prompt + n_reply - 1]
    return F.log_softmax(logits.float().cpu(), dim=-1)


def _chosen(log_probs: Float[Tensor, "n vocab"], ids: list[int]) -> Float[Tensor, " n"]:
    return log_probs.gather(1, torch.tensor(ids, dtype=torch.long).view(-1, 1)).squeeze(1)


# ---- traits -------------------------------------------------------------------------------------


def reply_traits(
    model: Model,
    sae: SAE,
    generation: Generation,
    *,
    stats: FeatureStats | None = None,
    top: int = 10,
    by: Literal["total", "lift"] = "total",
) -> list[Trait]:
    """The ``top`` features most active over the reply's tokens, ranked ``by`` total activation or by
    lift over their usual density (which needs ``stats``, the same SAE's :class:`FeatureStats`).

    The features are read as the clean model reads prompt + reply (the SAE encodes its hook point's
    activation at each reply token), so a steered reply shows what its text evokes, not the steering
    itself. Features that never fire on the reply are left out.
    """
    if by not in ("total", "lift"):
        raise ValueError(f"by must be 'total' or 'lift', got {by!r}")
    if by == "lift" and stats is None:
        raise ValueError("ranking by lift needs the SAE's feature statistics: pass stats=")
    if stats is not None and stats.n_features != sae.cfg.d_sae:
        raise ValueError(f"stats describe {stats.n_features} features, the SAE has {sae.cfg.d_sae}")
    n_prompt, n_reply = len(generation.prompt_ids), len(generation.reply_ids)
    if n_reply == 0:
        return []
    acts = feature_acts(model, sae, generation.input_ids)[0, n_prompt:]  # (R, d_sae)
    total = acts.clamp_min(0).sum(0).double()
    count = (acts > 0).sum(0)
    lift = None
    if stats is not None:
        usual = stats.density.double().clamp_min(1 / max(stats.n_tokens, 1))
        lift = count.double() / n_reply / usual
    active = torch.nonzero(count).flatten()
    key = total if by == "total" else lift
    order = active[key[active].argsort(descending=True, stable=True)][:top]
    return [Trait(feature=int(f), total=float(total[f]), n_tokens=int(count[f]),
                  lift=None if lift is None else float(lift[f]),
                  title=stats.title(int(f)) if stats is not None else f"feature {int(f)}")
            for f in order]


# ---- shared with workbench.attribute --------------------------------------------------------------


def prompt_token_ids(model: Model, prompt: Prompt, *, chat: bool = False) -> list[int]:
    """The token ids the model reads for ``prompt`` (see :func:`generate`)."""
    tokenizer = model.tokenizer
    if isinstance(prompt, Tensor):
        if prompt.ndim == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.ndim != 1:
            raise ValueError(f"token ids must be [seq] or [1, seq], got shape {tuple(prompt.shape)}")
        ids = [int(i) for i in prompt]
    elif chat:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"{model.name}'s tokenizer has no chat template; call with chat=False")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    elif isinstance(prompt, str):
        ids = [model.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    elif all(isinstance(i, int) for i in prompt):
        ids = list(prompt)
    else:
        raise TypeError("a prompt is a str, token ids, or (with chat=True) a list of chat messages")
    if not ids:
        raise ValueError("the prompt is empty")
    return ids


def feature_acts(model: Model, sae: SAE, input_ids: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq d_sae"]:
    """The SAE's feature activations on every token of a clean forward pass (float32, on the CPU)."""
    from workbench.capture import run_to

    hook = sae_hookpoint(sae)
    x = run_to(model, [hook], input_ids)[hook]
    with torch.no_grad():
        return sae.encode(x.to(sae.W_dec.device)).feature_acts.float().cpu()


def sae_hookpoint(sae: SAE) -> str:
    if not sae.cfg.hook_name:
        raise ValueError("the SAE's cfg.hook_name is empty: set it to the hook point it reads, e.g. 'blocks.6.hook_resid_post'")
    return sae.cfg.hook_name


def _tokens(model: Model, ids: list[int]) -> list[str]:
    return [model.tokenizer.decode([i]) for i in ids]


def _eos_ids(model: Model) -> set[int]:
    """End-of-sequence ids: the tokenizer's and the generation config's (chat models may list several)."""
    ids = {model.tokenizer.eos_token_id}
    configured = getattr(getattr(model.hf, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return {int(i) for i in ids if i is not None}


def _context_limit(model: Model) -> int | None:
    config = model.hf.config
    if getattr(config, "model_type", None) == "gpt2":
        return config.n_positions  # learned position embeddings: past them, an index error
    return None  # rotary models run past max_position_embeddings (degrading, but without an error)


def _mean(values: Tensor) -> float:
    return float(values.mean()) if values.numel() else math.nan
