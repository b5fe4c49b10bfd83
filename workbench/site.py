"""A static feature browser: `write_site(stats, out_dir)` writes one folder that opens from
file:// in any browser, with no server and no network: a searchable, sortable list of the
features and, for the one picked, its card (the markup of `workbench.widgets.FeatureCard`).

The folder::

    index.html          the page; site.js (widgets/feature_site.js and the card behaviours) and
                        site.css (the card's and the browser's styles plus the page layout)
    data/index.js       one list row per feature: its numbers, search text and row markup
    data/vocab.js       every token string the examples use, the most frequent first
    data/cards/NNN.js   the cards of one chunk of `chunk` features, loaded when one is picked
    workbench-site.json what was written (format, features, chunk size, bytes)

A page opened from file:// may not fetch(), so data travels as scripts (`wfSite.chunk(...)`
calls) that the page adds with a <script> tag. Nor can it be gzipped, so the size is designed
for: a card is Python's markup (`card_html(inline=False)`: class names and a stylesheet, no
inline styles) with each group's examples left empty and stored packed, which is most of
the size. 4,608 features with 90 examples of 17 tokens come to about 40 MB (the measured
sizes are in `workbench-site.json`).

Packed examples: each is a run of numbers written as variable-length digits over `ALPHABET`
(a digit below `TERMINAL` ends a number; the others lead it): focus, context + 1, position + 1
(0 and 0 when unknown), the token count, the tokens as indices into vocab.js, then pairs of
(token index, value in thousandths zigzag-coded) for every token whose value rounds to
non-zero. A group's examples are joined by ",". `exampleHtml` in widgets/feature_site.js
unpacks them into the markup `workbench.widgets.card.example_html` draws.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import uuid
import warnings
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = ["SiteSource", "site_summary", "write_site"]

ALPHABET = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in "\"\\,'<>&/")
"""Digits of the packed examples: printable ASCII but quotes, backslash, comma, <, >, & and /."""
TERMINAL = 57
"""Digits below this index end a number; the other len(ALPHABET) - TERMINAL lead it."""
MARKER = "workbench-site.json"
"""The file that marks a folder as a site write_site wrote (and may replace)."""
FORMAT = 1
SIZE_WARNING = 50_000_000
"""write_site warns above this many bytes."""


class SiteSource(Protocol):
    """What write_site reads: workbench.features.FeatureStats has all of it (`meta` may lack
    "dictionary" and "n_tokens", which only head the page)."""

    meta: dict

    def table(self) -> list[dict]: ...

    def card(self, feature: int) -> dict: ...


def _number(n: int) -> str:
    """`n` >= 0 in the packed digits: a terminal digit, led by bijective base-(rest) digits."""
    lead = len(ALPHABET) - TERMINAL
    q, t = divmod(n, TERMINAL)
    out = ALPHABET[t]
    while q > 0:
        q -= 1
        out = ALPHABET[TERMINAL + q % lead] + out
        q //= lead
    return out


def _zigzag(m: int) -> int:
    return 2 * m if m >= 0 else -2 * m - 1


@dataclass
class _Example:
    focus: int
    context: int  # + 1; 0 when unknown
    position: int  # + 1; 0 when unknown
    tokens: array  # provisional token ids (first seen first)
    values: list[tuple[int, int]]  # (index, thousandths) where non-zero


class _Vocab:
    """Token strings met while packing; ids renumbered by frequency before writing."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.counts = array("q")

    def add(self, token: str) -> int:
        i = self.ids.get(token)
        if i is None:
            i = self.ids[token] = len(self.ids)
            self.counts.append(0)
        self.counts[i] += 1
        return i

    def ranked(self) -> tuple[list[str], list[int]]:
        """Tokens by falling frequency (ties: first seen first), and provisional id -> rank."""
        tokens = list(self.ids)
        order = sorted(range(len(tokens)), key=lambda i: (-self.counts[i], i))
        rank = [0] * len(tokens)
        for r, i in enumerate(order):
            rank[i] = r
        return [tokens[i] for i in order], rank


def _unpacked(card: dict, vocab: _Vocab) -> list[list[_Example]]:
    from workbench.widgets.card import _milli

    groups = []
    for group in card["groups"]:
        examples = []
        for e in group["examples"]:
            known = "context" in e and "position" in e
            values = [(i, m) for i, v in enumerate(e["values"]) if (m := _milli(v)) != 0]
            examples.append(_Example(e["focus"], e["context"] + 1 if known else 0, e["position"] + 1 if known else 0,
                                     array("l", (vocab.add(t) for t in e["tokens"])), values))
        groups.append(examples)
    return groups


def _pack(groups: list[list[_Example]], rank: list[int]) -> list[str]:
    out = []
    for examples in groups:
        packed = []
        for e in examples:
            head = _number(e.focus) + _number(e.context) + _number(e.position) + _number(len(e.tokens))
            tokens = "".join(_number(rank[t]) for t in e.tokens)
            values = "".join(_number(i) + _number(_zigzag(m)) for i, m in e.values)
            packed.append(head + tokens + values)
        out.append(",".join(packed))
    return out


def _script(call: str, *args: Any) -> str:
    """A data file: one call of `wfSite.<call>` with JSON arguments (UTF-8, compact)."""
    body = ",".join(json.dumps(a, ensure_ascii=False, separators=(",", ":")) for a in args)
    return f"wfSite.{call}({body});\n"


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="site.css">
</head>
<body>
<div class="wf-site">
  <aside class="wf-panel">
    <header><h1>{title}</h1><p>{subtitle}</p></header>
    <div class="wf-find"><input type="search" placeholder="Search: feature id, token or explanation"
      spellcheck="false" aria-label="search features" autofocus><span></span></div>
    <div class="wf-list" data-sorted="feature"><div class="wf-empty">Loading the list…</div></div>
  </aside>
  <main class="wf-view"><div class="wf-empty">Pick a feature from the list.</div></main>
</div>
<noscript><p class="wf-empty">This feature browser needs JavaScript.</p></noscript>
<script src="site.js" charset="utf-8"></script>
<script src="data/vocab.js" charset="utf-8"></script>
<script src="data/index.js" charset="utf-8"></script>
</body>
</html>
"""


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_site(stats: SiteSource, out_dir: str | Path, *, chunk: int = 64, title: str | None = None,
               progress: bool = True) -> Path:
    """Write a static feature browser of `stats` (FeatureStats, or anything with `table()`,
    `card(i)` and `meta`) into `out_dir`; returns its path. Every row of `table()` gets a card.

    `chunk` cards go in each data/cards file (one is loaded per card viewed); `title` heads
    the page (default: `stats.meta["dictionary_label"]`). The folder is
    written next to `out_dir` under a temporary name and renamed into place, so a reader never
    sees half a site; an existing `out_dir` is replaced only if write_site wrote it (it holds
    workbench-site.json), else this raises FileExistsError. Open `out_dir/index.html`."""
    from workbench.progress import progress_bar
    from workbench.widgets.browser import SORT_KEYS, check_rows, haystack, heading_html, row_html
    from workbench.widgets.card import DEFAULT_COLOR, bundle_js, card_html, stylesheet

    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    out = Path(out_dir)
    if out.exists() and not (out / MARKER).is_file():
        raise FileExistsError(f"{out} exists and is not a site write_site wrote (no {MARKER}); "
                              "pass a new folder, or remove it first")
    rows = check_rows(stats.table())
    meta = dict(getattr(stats, "meta", {}) or {})
    title = title or meta.get("dictionary_label") or "Features"
    subtitle = f"{len(rows):,} features" + (f" · statistics over {meta['n_tokens']:,} tokens" if "n_tokens" in meta else "")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    (tmp / "data" / "cards").mkdir(parents=True)
    try:
        vocab = _Vocab()
        cards: list[tuple[int, str, list[list[_Example]]]] = []
        for row in progress_bar(rows, desc="site: cards", unit="card", disable=not progress):
            card = stats.card(row["feature"])
            if card.get("feature") != row["feature"]:
                raise ValueError(f"stats.card({row['feature']}) returned the card of feature {card.get('feature')!r}")
            cards.append((row["feature"], card_html(card, inline=False, packed=True), _unpacked(card, vocab)))
        tokens, rank = vocab.ranked()

        digits = max(3, len(str(max(0, (len(cards) - 1) // chunk))))
        for n in range(0, len(cards), chunk):
            entries = [[f, markup, _pack(groups, rank)] for f, markup, groups in cards[n:n + chunk]]
            name = f"{n // chunk:0{digits}d}.js"
            (tmp / "data" / "cards" / name).write_text(_script("chunk", n // chunk, entries), encoding="utf-8")
        del cards

        headings = {f"{key}:{int(desc)}": heading_html(key, desc) for key in SORT_KEYS for desc in (False, True)}
        index = {
            "format": FORMAT, "title": title, "chunk": chunk, "digits": digits, "alphabet": ALPHABET,
            "terminal": TERMINAL, "color": DEFAULT_COLOR, "sort_keys": list(SORT_KEYS), "headings": headings,
            "rows": [[r["feature"], *(float(f"{r[k]:.6g}") for k in SORT_KEYS[1:]), haystack(r)] for r in rows],
            "html": [row_html(r) for r in rows],
        }
        (tmp / "data" / "index.js").write_text(_script("index", index), encoding="utf-8")
        (tmp / "data" / "vocab.js").write_text(_script("vocab", tokens), encoding="utf-8")
        (tmp / "site.js").write_text(bundle_js("feature_site.js", classic=True), encoding="utf-8")
        (tmp / "site.css").write_text(stylesheet("feature_card.css", "feature_browser.css", "feature_site.css"),
                                      encoding="utf-8")
        (tmp / "index.html").write_text(_PAGE.format(title=html.escape(title), subtitle=html.escape(subtitle)),
                                        encoding="utf-8")
        card_files = sorted((tmp / "data" / "cards").iterdir())
        summary = {
            "format": FORMAT, "n_features": len(rows), "chunk": chunk, "vocab": len(tokens),
            "bytes": _folder_size(tmp),
            "bytes_cards": sum(p.stat().st_size for p in card_files),
            "bytes_largest_chunk": max((p.stat().st_size for p in card_files), default=0),
            "bytes_index": (tmp / "data" / "index.js").stat().st_size,
            "bytes_vocab": (tmp / "data" / "vocab.js").stat().st_size,
        }
        (tmp / MARKER).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

        if out.exists():
            old = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.old"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if summary["bytes"] > SIZE_WARNING:
        warnings.warn(f"the site in {out} is {summary['bytes'] / 1e6:.0f} MB, more than a browser opens quickly from "
                      f"disk ({SIZE_WARNING / 1e6:.0f} MB); fewer examples per group or a narrower window around "
                      "each example (feature_stats) make it smaller", stacklevel=2)
    return out


def site_summary(out_dir: str | Path) -> dict:
    """What write_site recorded about the site in `out_dir` (sizes in bytes)."""
    return json.loads((Path(out_dir) / MARKER).read_text(encoding="utf-8"))

