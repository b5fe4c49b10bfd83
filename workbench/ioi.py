"""The indirect-object-identification (IOI) task: prompts, counterfactuals and the model's baseline.

Wang et al. (2022, "Interpretability in the Wild") study sentences such as

    "Then, Mary and John went to the store. John gave a drink to"

whose likely next word is the *indirect object* (IO, " Mary") rather than the *subject* (S,
" John", named twice). :func:`ioi_prompts` builds such prompts for any tokenizer from the
paper's 15 templates (Figure 14) in both name orders, ``BABA`` (S IO ... S) and ``ABBA``
(IO S ... S), with names, places and objects kept only where they are a single token with the
leading space in that tokenizer (:func:`single_token_words`). Every prompt carries two
counterfactuals of the same token length, differing only at the name positions:

* Cunningham et al. (ICLR 2024, section 4): the IO name replaced by a third name C, everything
  else equal, so the model should now say " C";
* the "ABC" corruption of Wang et al.: the three name slots filled with three other names, all
  different, so no name is repeated and the prompt holds no IO information.

Prompts of one template and order have one token length, so :func:`batches` groups prompts
that stack without padding. :func:`evaluate_ioi` measures the model's baseline: the logit
difference IO - S at the last position (:func:`logit_diff`) and its accuracy (IO above S);
:func:`filter_correct` keeps the prompts the model gets right and reports the others.
"""

from __future__ import annotations

import itertools
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from workbench.intervene import logits_with
from workbench.models import Model

Order = Literal["ABBA", "BABA"]
Variant = Literal["clean", "counterfactual", "abc"]

TEMPLATES: tuple[str, ...] = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to",
)
"""Wang et al.'s 15 templates (Figure 14) in the ``BABA`` order, without the answer: ``[B]`` is
the subject S, ``[A]`` the indirect object IO. The ``ABBA`` order swaps the first ``[B]`` and
``[A]``."""

NAMES: tuple[str, ...] = (
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda", "Daniel",
    "David", "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason", "Justin", "Sarah",
    "William", "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas", "Anthony", "Heather", "Eric",
    "Elizabeth", "Adam", "Megan", "Melissa", "Kevin", "Steven", "Thomas", "Timothy", "Christina", "Kyle",
    "Rachel", "Laura", "Lauren", "Amber", "Brittany", "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy",
    "Crystal", "Michelle", "Tiffany", "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca",
    "Jacob", "Stephen", "Patrick", "Sean", "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin",
    "Paul", "Angela", "Tyler", "Scott", "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis", "Lisa",
    "Kenneth", "Bryan", "Lindsey", "Kristen", "Jose", "Alexander", "Jesse", "Katie", "Lindsay", "Shannon",
    "Vanessa", "Courtney", "Christine", "Alicia", "Cody", "Allison", "Bradley", "Samuel",
)  # fmt: skip
"""The 99 first names of Wang et al.'s code (one GPT-2 token each with the leading space)."""

PLACES: tuple[str, ...] = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
"""The places of Wang et al.'s code."""

OBJECTS: tuple[str, ...] = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")
"""The objects of Wang et al.'s code."""

MIN_NAMES = 5
"""Names a prompt needs: IO and S, and three more for the counterfactual C and the ABC corruption."""

_ENUMERATE_BELOW = 20_000  # a template with fewer distinct prompts is enumerated and shuffled, not sampled


class IOIError(ValueError):
    """Prompts that cannot be made: too few single-token words, or more prompts asked than exist."""


class IOIVariant(NamedTuple):
    """A prompt with other names in its three name slots (same template, place, object, length)."""

    text: str
    """The prompt as text (no answer)."""
    input_ids: tuple[int, ...]
    """Its token ids, BOS first."""
    names: tuple[str, str, str]
    """The names in the three name slots, in the order they appear."""


@dataclass(frozen=True)
class IOIPrompt:
    """One IOI prompt, its answer and its two counterfactuals."""

    text: str
    """The prompt as text, ending before the answer: ``"Then, Mary and John ... John gave a drink to"``."""
    input_ids: tuple[int, ...]
    """Its token ids, BOS first (as the model's training contexts start)."""
    io: str
    """The indirect object, the expected answer (without the leading space)."""
    s: str
    """The subject, named twice."""
    io_id: int
    """Token id of ``" " + io``."""
    s_id: int
    """Token id of ``" " + s``."""
    template: int
    """Index into the templates (:data:`TEMPLATES` unless others were given)."""
    order: Order
    """``"BABA"`` (S, IO, ..., S) or ``"ABBA"`` (IO, S, ..., S)."""
    place: str | None
    """The place word, or None where the template has none."""
    object: str | None
    """The object word, or None where the template has none."""
    positions: tuple[int, int, int]
    """Token positions of the three name slots in ``input_ids``, in text order; the last token
    (where the answer is read) is ``len(input_ids) - 1``."""
    c: str
    """The third name of the counterfactual."""
    c_id: int
    """Token id of ``" " + c``."""
    counterfactual: IOIVariant
    """Cunningham et al.'s counterfactual: IO replaced by C; its answer is C."""
    abc: IOIVariant
    """The ABC corruption: three names, all different from each other and from IO and S."""

    @property
    def io_position(self) -> int:
        """Token position of the IO name."""
        return self.positions[1] if self.order == "BABA" else self.positions[0]

    @property
    def s_positions(self) -> tuple[int, int]:
        """Token positions of the two S names (S1, S2)."""
        return (self.positions[0], self.positions[2]) if self.order == "BABA" else self.positions[1:]

    def ids(self, variant: Variant = "clean") -> tuple[int, ...]:
        """Token ids of the prompt (``"clean"``), its ``"counterfactual"`` or its ``"abc"`` corruption."""
        if variant == "clean":
            return self.input_ids
        if variant == "counterfactual":
            return self.counterfactual.input_ids
        if variant == "abc":
            return self.abc.input_ids
        raise ValueError(f"variant must be 'clean', 'counterfactual' or 'abc', not {variant!r}")


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def single_token_words(tokenizer: Any, words: Sequence[str]) -> list[str]:
    """The ``words`` that are one token with a leading space (``" " + word``) in ``tokenizer``.

    The token must decode back to the word (so an unknown-word token does not count), and of
    words sharing a token only the first is kept, so the words kept have distinct token ids.
    Order is preserved.
    """
    kept, seen = [], set()
    for word in words:
        ids = _token_ids(tokenizer, " " + word)
        if len(ids) == 1 and ids[0] not in seen and tokenizer.decode(ids).strip() == word.strip():
            kept.append(word)
            seen.add(ids[0])
    return kept


def _slots(template: str) -> str:
    """A BABA template as a format string with slots ``{n0} {n1} {n2}`` for its names in text order
    (the first ``[B]``, the ``[A]``, the second ``[B]``); the order decides which names fill them."""
    if template.count("[A]") != 1 or template.count("[B]") != 2:
        raise IOIError(f"a template needs one [A] (IO) and two [B] (S) before the answer, got {template!r}")
    first_b, a, second_b = template.find("[B]"), template.find("[A]"), template.rfind("[B]")
    if not first_b < a < second_b:
        raise IOIError(f"a template names [B], [A], [B] in that order (the BABA order), got {template!r}")
    body = template.replace("{", "{{").replace("}", "}}")
    body = body.replace("[B]", "{n0}", 1).replace("[A]", "{n1}", 1).replace("[B]", "{n2}", 1)
    return body.replace("[PLACE]", "{place}").replace("[OBJECT]", "{object}")


def _slot_names(io: str, s: str, order: Order) -> tuple[str, str, str]:
    return (s, io, s) if order == "BABA" else (io, s, s)


@dataclass
class _Key:
    """One (template, order) pair and the bookkeeping of the prompts drawn from it."""

    template: int
    order: Order
    form: str
    capacity: int
    pool: list | None = None  # every combination, shuffled (small templates only)
    seen: set | None = None
    length: int | None = None
    failures: int = 0
    exhausted: bool = False


def ioi_prompts(
    tokenizer: Any,
    n: int,
    *,
    seed: int = 0,
    orders: Sequence[Order] = ("ABBA", "BABA"),
    bos_token_id: int | None = None,
    templates: Sequence[str] = TEMPLATES,
    names: Sequence[str] = NAMES,
    places: Sequence[str] = PLACES,
    objects: Sequence[str] = OBJECTS,
) -> list[IOIPrompt]:
    """``n`` distinct IOI prompts with their counterfactuals; the same arguments give the same list.

    The (template, order) pairs take turns, so each gets ``n / (templates x orders)`` prompts,
    give or take one (fewer only where a pair runs out of distinct prompts); names, place and object are drawn at random, the names from
    those that are one token with the leading space. A drawn prompt whose tokenization does
    not keep the names as those tokens, or the template's token length, is skipped.

    Args:
        tokenizer: A Hugging Face tokenizer, or a :class:`~workbench.models.Model` (its tokenizer
            and its ``bos_token_id`` are used).
        n: Number of prompts.
        seed: Seed of the draw.
        orders: Name orders to use, ``"ABBA"`` and/or ``"BABA"``.
        bos_token_id: Token put first in every ``input_ids`` (default: the model's, else the
            tokenizer's BOS, else its EOS).
        templates: Templates in the ``BABA`` order (see :data:`TEMPLATES`).
        names, places, objects: Candidate words; only single-token ones are used.

    Raises:
        IOIError: fewer than :data:`MIN_NAMES` single-token names, no single-token place or
            object where the templates need one, or ``n`` larger than the number of distinct
            prompts there are.
    """
    if isinstance(tokenizer, Model):
        bos_token_id = tokenizer.bos_token_id if bos_token_id is None else bos_token_id
        tokenizer = tokenizer.tokenizer
    if bos_token_id is None:
        bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos_token_id is None:
        raise IOIError("the tokenizer has neither a BOS nor an EOS token: pass bos_token_id")
    if n < 0:
        raise IOIError(f"n must be >= 0, got {n}")
    bad = [order for order in orders if order not in ("ABBA", "BABA")]
    if bad or not orders:
        raise IOIError(f"orders must be a non-empty selection of 'ABBA' and 'BABA', got {tuple(orders)!r}")
    names_ = single_token_words(tokenizer, names)
    if len(names_) < MIN_NAMES:
        raise IOIError(
            f"only {len(names_)} of {len(names)} names are a single token with a leading space in this tokenizer "
            f"({names_}); a prompt needs {MIN_NAMES} (IO, S, a third name C and the ABC corruption's). "
            f"Pass names= with more single-token names."
        )
    places_ = single_token_words(tokenizer, places)
    objects_ = single_token_words(tokenizer, objects)
    word_id = {w: _token_ids(tokenizer, " " + w)[0] for w in names_}

    keys = []
    for index, template in enumerate(templates):
        needs_place, needs_object = "[PLACE]" in template, "[OBJECT]" in template
        if (needs_place and not places_) or (needs_object and not objects_):
            raise IOIError(
                f"template {index} ({template!r}) needs a single-token "
                f"{'place' if needs_place and not places_ else 'object'}, and none of the given ones is one "
                f"in this tokenizer"
            )
        capacity = len(names_) * (len(names_) - 1)
        capacity *= len(places_) if needs_place else 1
        capacity *= len(objects_) if needs_object else 1
        for order in orders:
            keys.append(_Key(index, order, _slots(template), capacity, seen=set()))
    total = sum(key.capacity for key in keys)
    if n > total:
        raise IOIError(
            f"asked for {n} prompts, but these {len(templates)} templates x {len(orders)} orders with "
            f"{len(names_)} names, {len(places_)} places and {len(objects_)} objects make only {total} distinct prompts"
        )

    rng = random.Random(seed)
    rng.shuffle(keys)
    prompts: list[IOIPrompt] = []
    turn = 0
    while len(prompts) < n:
        live = [key for key in keys if not key.exhausted]
        if not live:
            raise IOIError(
                f"only {len(prompts)} of the {n} prompts asked for tokenize with single-token names at "
                f"consistent positions in this tokenizer"
            )
        key = live[turn % len(live)]
        turn += 1
        prompt = _draw(key, rng, tokenizer, bos_token_id, names_, places_, objects_, word_id)
        if prompt is not None:
            prompts.append(prompt)
    return prompts


def _combination(key: _Key, rng: random.Random, names: list[str], places: list[str], objects: list[str]):
    """The next unused (io, s, place, object) of ``key``, or None once it has none left."""
    place_choices = places if "{place}" in key.form else [None]
    object_choices = objects if "{object}" in key.form else [None]
    if key.capacity <= _ENUMERATE_BELOW:
        if key.pool is None:
            key.pool = list(itertools.product(itertools.permutations(names, 2), place_choices, object_choices))
            rng.shuffle(key.pool)
        if not key.pool:
            return None
        (io, s), place, obj = key.pool.pop()
        return io, s, place, obj
    for _ in range(1000):
        io, s = rng.sample(names, 2)
        combo = (io, s, rng.choice(place_choices), rng.choice(object_choices))
        if combo not in key.seen:
            key.seen.add(combo)
            return combo
    return None


def _draw(key, rng, tokenizer, bos, names, places, objects, word_id) -> IOIPrompt | None:
    """One prompt of ``key``, or None if the drawn one does not tokenize as it should (or the key is used up)."""
    combo = _combination(key, rng, names, places, objects)
    if combo is None:
        key.exhausted = True
        return None
    io, s, place, obj = combo
    others = rng.sample([name for name in names if name not in (io, s)], 3)
    c = others[0]

    def render(slot_names: tuple[str, str, str]) -> tuple[str, list[int]]:
        text = key.form.format(n0=slot_names[0], n1=slot_names[1], n2=slot_names[2], place=place, object=obj)
        return text, [bos, *_token_ids(tokenizer, text)]

    clean_names = _slot_names(io, s, key.order)
    cf_names = _slot_names(c, s, key.order)
    abc_names = (others[0], others[1], others[2])
    text, ids = render(clean_names)
    positions = _name_positions(ids, [word_id[name] for name in clean_names])
    ok = positions is not None and (key.length is None or key.length == len(ids))
    variants = []
    if ok:
        for slot_names in (cf_names, abc_names):
            v_text, v_ids = render(slot_names)
            expected = list(ids)
            for position, name in zip(positions, slot_names):
                expected[position] = word_id[name]
            if v_ids != expected:
                ok = False
                break
            variants.append(IOIVariant(v_text, tuple(v_ids), slot_names))
    if not ok:
        key.failures += 1
        if key.failures > 100 and key.length is None:  # this template never tokenizes cleanly here
            key.exhausted = True
        return None
    key.length = len(ids)
    return IOIPrompt(
        text=text, input_ids=tuple(ids), io=io, s=s, io_id=word_id[io], s_id=word_id[s], template=key.template,
        order=key.order, place=place, object=obj, positions=positions, c=c, c_id=word_id[c],
        counterfactual=variants[0], abc=variants[1],
    )


def _name_positions(ids: list[int], slot_ids: list[int]) -> tuple[int, int, int] | None:
    """Where the three name tokens sit in ``ids``: each name id must appear exactly as often as it
    fills a slot (IO once, S twice); None otherwise."""
    found = {token: [i for i, t in enumerate(ids) if t == token] for token in set(slot_ids)}
    if any(len(found[token]) != slot_ids.count(token) for token in found):
        return None
    positions, used = [], {token: 0 for token in found}
    for token in slot_ids:
        positions.append(found[token][used[token]])
        used[token] += 1
    if positions != sorted(positions):
        return None
    return tuple(positions)


def batches(prompts: Sequence[IOIPrompt], batch_size: int = 32) -> Iterator[list[int]]:
    """Indices into ``prompts`` in groups of at most ``batch_size`` of one token length (so they
    stack without padding); every index comes once, groups in order of first appearance."""
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt.input_ids), []).append(i)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            yield indices[start:start + batch_size]


def stack_ids(prompts: Sequence[IOIPrompt], variant: Variant = "clean") -> Int[Tensor, "batch seq"]:
    """The token ids of ``prompts`` (all of one length, e.g. a group of :func:`batches`) as one tensor."""
    lengths = {len(p.input_ids) for p in prompts}
    if len(lengths) != 1:
        raise ValueError(f"prompts of different token lengths {sorted(lengths)} do not stack; group them with batches()")
    return torch.tensor([p.ids(variant) for p in prompts], dtype=torch.long)


def logit_diff(
    logits_last: Float[Tensor, "batch vocab"], io_ids: Int[Tensor, " batch"] | Sequence[int],
    s_ids: Int[Tensor, " batch"] | Sequence[int],
) -> Float[Tensor, " batch"]:
    """Logit of the IO token minus logit of the S token, per prompt (at the last position)."""
    io_ids = torch.as_tensor(io_ids, dtype=torch.long, device=logits_last.device)
    s_ids = torch.as_tensor(s_ids, dtype=torch.long, device=logits_last.device)
    rows = torch.arange(logits_last.shape[0], device=logits_last.device)
    return logits_last[rows, io_ids] - logits_last[rows, s_ids]


def accuracy(
    logits_last: Float[Tensor, "batch vocab"], io_ids: Int[Tensor, " batch"] | Sequence[int],
    s_ids: Int[Tensor, " batch"] | Sequence[int],
) -> float:
    """Fraction of prompts whose IO logit is above their S logit."""
    return (logit_diff(logits_last, io_ids, s_ids) > 0).float().mean().item()


class IOIEval(NamedTuple):
    """The model's IOI baseline on a list of prompts (in their order)."""

    logit_diff: Float[Tensor, " n"]
    """Logit of the answer minus logit of S at the last position, per prompt."""
    correct: Bool[Tensor, " n"]
    """Whether the answer's logit is above S's."""
    accuracy: float
    """Mean of ``correct``."""
    mean_logit_diff: float
    """Mean of ``logit_diff``."""


def evaluate_ioi(
    model: Model, prompts: Sequence[IOIPrompt], *, batch_size: int = 32,
    variant: Literal["clean", "counterfactual"] = "clean",
) -> IOIEval:
    """Run ``model`` on ``prompts`` (batched by token length) and score the last position.

    With ``variant="counterfactual"`` the counterfactual prompts are run and the answer is C
    (logit of C minus logit of S).
    """
    if variant not in ("clean", "counterfactual"):
        raise ValueError(f"variant must be 'clean' or 'counterfactual' (the ABC corruption has no answer), not {variant!r}")
    diffs = torch.zeros(len(prompts))
    for group in batches(prompts, batch_size):
        chosen = [prompts[i] for i in group]
        logits = logits_with(model, stack_ids(chosen, variant))[:, -1].float().cpu()  # (B, vocab)
        answers = [p.io_id if variant == "clean" else p.c_id for p in chosen]
        diffs[group] = logit_diff(logits, answers, [p.s_id for p in chosen])
    correct = diffs > 0
    n = max(len(prompts), 1)
    return IOIEval(diffs, correct, correct.sum().item() / n, diffs.sum().item() / n)


def filter_correct(prompts: Sequence[IOIPrompt], evaluation: IOIEval, *, show: int = 5) -> list[IOIPrompt]:
    """The prompts the model gets right; the others are reported on stderr (count and the first ``show``)."""
    if len(prompts) != len(evaluation.correct):
        raise ValueError(f"{len(prompts)} prompts but an evaluation of {len(evaluation.correct)}")
    kept = [p for p, ok in zip(prompts, evaluation.correct.tolist()) if ok]
    wrong = [(p, d) for p, ok, d in zip(prompts, evaluation.correct.tolist(), evaluation.logit_diff.tolist()) if not ok]
    if wrong:
        lines = [f"  {p.text!r}: IO {p.io!r}, S {p.s!r}, logit diff {d:+.2f}" for p, d in wrong[:show]]
        more = f"\n  ... and {len(wrong) - show} more" if len(wrong) > show else ""
        print(f"IOI: the model gets {len(wrong)} of {len(prompts)} prompts wrong (dropped):\n" + "\n".join(lines) + more,
              file=sys.stderr)
    return kept
