"""The prompts of the LLM explainer and scorers, and the parsers of their answers.

The formats follow EleutherAI's delphi (explanation, detection, fuzzing) and Bills et al.'s
simulator (openai/automated-interpretability), reworded:

* explanation: examples with the activating tokens between ``<<`` and ``>>``, each followed by
  its marked tokens' activations scaled to 0-10 (``Activations: ("cat", 9), (" sat", 3)``); the
  answer's last line is ``[EXPLANATION]: ...``;
* detection: an explanation and numbered examples; the answer is a list of 1 (has the feature)
  and 0, one per example, e.g. ``[1, 0, 0, 1, 0]``;
* fuzzing: the same with tokens marked in each example; 1 when every marked token is the
  feature described, 0 when the marking is wrong;
* simulation: an explanation and one sequence, a token per line between ``<start>`` and
  ``<end>``; the answer copies each line and adds a tab and a predicted activation 0-10.

The parsers are tolerant of the usual noise (code fences, bold markup, a sentence before the
answer, spaces for tabs) and strict about garbage: an answer of the wrong length, values out of
range, or no answer at all raises :class:`ParseError`, which the caller retries and then records
as a failure. Each parsed value carries the offset of its first character in the answer, so a
scorer can find the generated token behind it and read its log-probabilities.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from workbench.autointerp.types import Example

__all__ = ["EXPLANATION_PREFIX", "LIST_PREFIX", "ParseError", "Parsed", "detection_messages", "explainer_messages", "fuzzing_messages", "highlight",
           "marked_positions", "parse_binary_list", "parse_explanation", "parse_simulation", "shown",
           "simulation_messages", "simulation_tokens"]


class ParseError(ValueError):
    """An answer without the expected form (the caller asks again, then records a failure)."""


class Parsed(NamedTuple):
    """One value read from an answer."""

    value: float
    """The value: 0 or 1 for the classifiers, 0-10 for simulation."""
    offset: int
    """Where in the answer text the value's first character is."""


def shown(token: str) -> str:
    """A token as it appears in a prompt: newlines, tabs and carriage returns escaped, so one
    example stays on one line."""
    return token.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def marked_positions(activations: Sequence[float], threshold: float = 0.3) -> list[int]:
    """Positions whose activation is above ``threshold`` times the example's maximum (none if it
    never fires)."""
    top = max(activations, default=0.0)
    if top <= 0:
        return []
    return [i for i, a in enumerate(activations) if a > threshold * top]


def highlight(tokens: Sequence[str], positions: Sequence[int]) -> str:
    """The text of ``tokens`` with the tokens at ``positions`` between ``<<`` and ``>>`` (runs of
    neighbours share one pair)."""
    marked = set(positions)
    out: list[str] = []
    for i, token in enumerate(tokens):
        if i in marked and i - 1 not in marked:
            out.append("<<")
        out.append(shown(token))
        if i in marked and i + 1 not in marked:
            out.append(">>")
    return "".join(out)


# ---------------------------------------------------------------- explanation

EXPLAINER_SYSTEM = """You are a meticulous AI researcher investigating patterns in language. You will be given text examples in which some tokens are marked between delimiters, like <<this>>; consecutive marked tokens share one pair of delimiters, <<like this>>. After each example, the marked tokens are listed with how strongly they activate a feature of a language model, from 0 to 10.

- Describe in one short sentence what the marked tokens have in common, and the context they appear in when that matters.
- Do not mention the delimiters (<< >>). Do not list several alternatives. Be concise.
- The last line of your answer must be the explanation, after [EXPLANATION]:"""

_SHOT_EXPLANATION = "Common idioms, especially cheerful ones."
_EXPLAINER_SHOT = (
    'Example 1: she was <<over the moon>> to hear it\n'
    'Activations: ("over", 6), (" the", 5), (" moon", 9)\n'
    'Example 2: more <<than meets the eye>>!\n'
    'Activations: ("than", 5), (" meets", 7), (" the", 6), (" eye", 8)',
    f"[EXPLANATION]: {_SHOT_EXPLANATION}",
)


EXPLANATION_PREFIX = "[EXPLANATION]:"
"""What a prefilled answer starts with (:func:`explainer_messages` with ``prefill=True``)."""


def explainer_messages(examples: Sequence[Example], *, threshold: float = 0.3, max_listed: int = 10,
                       prefill: bool = False) -> list[dict]:
    """The explanation prompt for a feature's activating examples: marked tokens are those above
    ``threshold`` times the example's maximum; activations are scaled to 0-10 by the largest over
    all the examples; at most ``max_listed`` are listed per example.

    ``prefill``: end with a partial assistant turn holding :data:`EXPLANATION_PREFIX`, for a
    backend that continues it (a local model), and leave out the worked example: the prefix fixes
    the answer's form, and a small model copies the example's answer (SmolLM2-135M did for 7 of 8
    features); parse the answer with ``parse_explanation(answer, prefilled=True)``."""
    top = max((e.max_activation for e in examples), default=0.0) or 1.0
    lines = []
    for n, example in enumerate(examples, 1):
        positions = marked_positions(example.activations, threshold)
        lines.append(f"Example {n}: {highlight(example.tokens, positions)}")
        listed = ", ".join(f'("{shown(example.tokens[i])}", {round(10 * example.activations[i] / top)})'
                           for i in positions[:max_listed])
        lines.append(f"Activations: {listed}")
    if prefill:
        return [{"role": "system", "content": EXPLAINER_SYSTEM}, {"role": "user", "content": "\n".join(lines)},
                {"role": "assistant", "content": EXPLANATION_PREFIX}]
    return [
        {"role": "system", "content": EXPLAINER_SYSTEM},
        {"role": "user", "content": _EXPLAINER_SHOT[0]},
        {"role": "assistant", "content": _EXPLAINER_SHOT[1]},
        {"role": "user", "content": "\n".join(lines)},
    ]


_EXPLANATION = re.compile(r"\[\s*explanation\s*\]\s*\**\s*:?\s*\**(.*)", re.IGNORECASE)


def parse_explanation(text: str, *, prefilled: bool = False) -> str:
    """The explanation on the answer's last ``[EXPLANATION]:`` line (quotes and markup stripped).

    ``prefilled``: the answer continues :data:`EXPLANATION_PREFIX` (:func:`explainer_messages`
    with ``prefill=True``), so the explanation is the first sentence of its first non-empty line
    (a small model runs on), unless the answer writes an ``[EXPLANATION]:`` line of its own (a
    backend that did not continue the prefix)."""
    found = [m.group(1) for line in text.splitlines() if (m := _EXPLANATION.search(line))]
    if not found and prefilled:
        first = next((line for line in text.splitlines() if line.strip()), "")
        found = [re.split(r"(?<=[.!?])\s+(?=[A-Z])", first.strip(), maxsplit=1)[0]]
    if not found:
        raise ParseError(f"no [EXPLANATION]: line in {text[:200]!r}")
    explanation = found[-1].strip().strip("*").strip()
    if len(explanation) >= 2 and explanation[0] == explanation[-1] and explanation[0] in "\"'`":
        explanation = explanation[1:-1].strip()  # quoted as a whole
    if not re.search(r"[^\W\d_]", explanation):
        raise ParseError(f"an empty explanation in {text[:200]!r}")
    if explanation == _SHOT_EXPLANATION:
        raise ParseError("the answer repeats the prompt's worked example")
    if len(explanation) > 500:
        raise ParseError(f"an explanation of {len(explanation)} characters is not one sentence")
    return explanation


# ---------------------------------------------------------------- detection and fuzzing

DETECTION_SYSTEM = """You are an intelligent and meticulous linguistics researcher.

You will be given an explanation of a feature of text, such as "male pronouns" or "text with negative sentiment", and then several numbered text examples. Decide which examples have the feature.

For each example in turn, answer 1 if it has the feature and 0 if it does not. Answer with a Python list of 0s and 1s, one per example, and nothing else."""

_DETECTION_SHOT = (
    "Feature explanation: The word \"guys\" in the phrase \"you guys\".\n\n"
    "Text examples:\n\n"
    "Example 1: what do you guys think about it\n"
    "Example 2: the weather was nice all week\n"
    "Example 3: thanks, you guys are the best\n\n"
    "Answer with a list of 3 numbers, 0 or 1.",
    "[1, 0, 1]",
)

FUZZING_SYSTEM = """You are an intelligent and meticulous linguistics researcher.

You will be given an explanation of a feature of text, such as "male pronouns" or "text with negative sentiment", and then several numbered text examples. In each example some tokens are marked between << and >>. Some examples are marked wrongly.

For each example in turn, answer 1 if every marked token is an instance of the feature explained, and 0 if the marking is wrong. Answer with a Python list of 0s and 1s, one per example, and nothing else."""

_FUZZING_SHOT = (
    "Feature explanation: The word \"guys\" in the phrase \"you guys\".\n\n"
    "Text examples:\n\n"
    "Example 1: what do you <<guys>> think about it\n"
    "Example 2: the <<weather>> was nice all week\n"
    "Example 3: thanks, you guys <<are>> the best\n\n"
    "Answer with a list of 3 numbers, 0 or 1.",
    "[1, 0, 0]",
)


LIST_PREFIX = "["
"""What a prefilled classifier answer starts with (``prefill=True``)."""


def _classifier_messages(system: str, shot: tuple[str, str], explanation: str, texts: Sequence[str],
                         prefill: bool) -> list[dict]:
    listed = "\n".join(f"Example {n}: {text}" for n, text in enumerate(texts, 1))
    question = {"role": "user", "content": f"Feature explanation: {explanation}\n\nText examples:\n\n{listed}\n\n"
                                           f"Answer with a list of {len(texts)} numbers, 0 or 1."}
    if prefill:
        return [{"role": "system", "content": system}, question, {"role": "assistant", "content": LIST_PREFIX}]
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": shot[0]},
        {"role": "assistant", "content": shot[1]},
        question,
    ]


def detection_messages(explanation: str, texts: Sequence[str], *, prefill: bool = False) -> list[dict]:
    """Does each text have the feature explained? (texts unmarked, one line each: see :func:`shown`).
    ``prefill``: the answer is started with ``[`` for the model to continue, without the worked
    example (as :func:`explainer_messages`); parse with ``parse_binary_list(..., prefilled=True)``."""
    return _classifier_messages(DETECTION_SYSTEM, _DETECTION_SHOT, explanation, texts, prefill)


def fuzzing_messages(explanation: str, texts: Sequence[str], *, prefill: bool = False) -> list[dict]:
    """Is the marking of each text right? (texts with ``<< >>`` marks: see :func:`highlight`);
    ``prefill`` as :func:`detection_messages`."""
    return _classifier_messages(FUZZING_SYSTEM, _FUZZING_SHOT, explanation, texts, prefill)


_LIST = re.compile(r"\[([^\[\]]*)\]")
_BARE = re.compile(r"^\s*[01](?:\s*[,; ]\s*[01])*\s*$", re.MULTILINE)


def parse_binary_list(text: str, n: int, *, prefilled: bool = False) -> list[Parsed]:
    """The ``n`` answers 0/1 of a classifier: the first ``[...]`` list that holds only 0s and 1s
    (``true``/``false`` accepted), or else a line of bare 0s and 1s.

    ``prefilled``: ``text`` continues :data:`LIST_PREFIX`, so ``1, 0]`` is the list ``[1, 0]``;
    for one example a leading ``1`` or ``0`` is the answer whatever follows (a small model runs
    on). Offsets stay those of ``text``."""
    if prefilled:
        if n == 1 and (lead := re.match(r"\s*([01])(?![0-9])", text)):
            return [Parsed(int(lead.group(1)), lead.start(1))]
        try:
            parsed = parse_binary_list(LIST_PREFIX + text, n)
        except ParseError:
            parsed = None
        if parsed is not None and all(p.offset >= len(LIST_PREFIX) for p in parsed):
            return [Parsed(p.value, p.offset - len(LIST_PREFIX)) for p in parsed]
    for match in _LIST.finditer(text):
        items = [(m.group(0), match.start(1) + m.start()) for m in re.finditer(r"[^,\s]+", match.group(1))]
        values = [_binary(word) for word, _ in items]
        if items and all(v is not None for v in values):
            return _exactly(n, [Parsed(v, offset) for v, (_, offset) in zip(values, items)], text)
    bare = _BARE.search(text)
    if bare:
        return _exactly(n, [Parsed(int(m.group(0)), bare.start() + m.start())
                            for m in re.finditer(r"[01]", bare.group(0))], text)
    raise ParseError(f"no list of 0s and 1s in {text[:200]!r}")


def _binary(word: str) -> int | None:
    word = word.strip("'\"").lower()
    return {"1": 1, "0": 0, "true": 1, "false": 0}.get(word)


def _exactly(n: int, parsed: list[Parsed], text: str) -> list[Parsed]:
    if len(parsed) != n:
        raise ParseError(f"{len(parsed)} answers for {n} examples in {text[:200]!r}")
    return parsed


# ---------------------------------------------------------------- simulation

SIMULATION_SYSTEM = """We are studying features of a language model. Each feature looks for one particular thing in a short text. Read the explanation of what a feature does, then predict how strongly it activates on each token of a text.

The text is given one token per line between <start> and <end>. Copy every line in order and after each token write a tab and the predicted activation, an integer from 0 to 10. Most activations are 0; 10 is the strongest. Answer with the lines only."""

_SIMULATION_SHOT = (
    "Explanation: the word \"moon\" in idioms.\n\n<start>\nover\nthe\nmoon\nto\nhear\n<end>",
    "<start>\nover\t2\nthe\t1\nmoon\t10\nto\t0\nhear\t0\n<end>",
)


def simulation_tokens(tokens: Sequence[str]) -> list[str]:
    """The tokens as the simulation prompt lists them: escaped, stripped, blanks as ``␣``."""
    return [shown(token).strip() or "␣" for token in tokens]


def simulation_messages(explanation: str, tokens: Sequence[str]) -> list[dict]:
    """Predict the feature's activation on each of ``tokens`` from ``explanation`` (Bills et al.'s
    all-at-once simulation, in a chat)."""
    listed = "\n".join(simulation_tokens(tokens))
    return [
        {"role": "system", "content": SIMULATION_SYSTEM},
        {"role": "user", "content": _SIMULATION_SHOT[0]},
        {"role": "assistant", "content": _SIMULATION_SHOT[1]},
        {"role": "user", "content": f"Explanation: {explanation}\n\n<start>\n{listed}\n<end>"},
    ]


_SIM_LINE = re.compile(r"^(.*?)[\t ]+(\d+(?:\.\d+)?)[ \t]*$")


def parse_simulation(text: str, tokens: Sequence[str]) -> list[Parsed]:
    """One predicted activation (0-10) per token, from the answer's ``token<TAB>value`` lines.

    Lines without a trailing number (``<start>``, a code fence, a sentence) are skipped; the
    count must match, every value must be in 0-10, and most lines must name their token."""
    expected = simulation_tokens(tokens)
    parsed: list[Parsed] = []
    named = 0
    offset = 0
    for line in text.splitlines(keepends=True):
        match = _SIM_LINE.match(line.rstrip("\r\n"))
        if match and match.group(1).strip() not in ("<start>", "<end>"):
            value = float(match.group(2))
            if not 0 <= value <= 10:
                raise ParseError(f"activation {match.group(2)} out of 0-10 in {line.strip()!r}")
            if len(parsed) < len(expected) and match.group(1).strip() == expected[len(parsed)]:
                named += 1
            parsed.append(Parsed(value, offset + match.start(2)))
        offset += len(line)
    if len(parsed) != len(expected):
        raise ParseError(f"{len(parsed)} activations for {len(expected)} tokens in {text[:200]!r}")
    if named * 2 < len(expected):
        raise ParseError(f"the answer's lines do not follow the tokens ({named} of {len(expected)} match)")
    return parsed
