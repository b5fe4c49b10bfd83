"""The static feature browser (workbench.site.write_site): written from synthetic stats, opened
from file:// in headless Chromium with no network, every card checked, the list searched,
sorted and clicked, and one screenshot taken.

A copy of index.html (check.html, in the same folder) gets a script that, once the site has
loaded, shows every feature in turn and measures its card, compares a few cards' DOM with
the markup Python draws for FeatureCard (`card_html(inline=False)`: the site unpacks the
examples with a JavaScript twin of `example_html`), then drives the list through the URL hash
and clicks; it writes what it saw as JSON into the page, which `--dump-dom` hands back.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from test_feature_widgets import SyntheticStats

from workbench.site import ALPHABET, MARKER, TERMINAL, _number, site_summary, write_site
from workbench.widgets.card import card_html

N_FEATURES, CHUNK = 40, 16
COMPARED = [0, 3, 10, 17, 39]
"""Features whose whole card is compared with Python's markup (3, 10, 17 have hostile tokens)."""

CHECK = """
<pre id="wf-check">pending</pre>
<script>
(async () => {
  const EXPECTED = __EXPECTED__;
  const FEATURES = __FEATURES__;
  const out = { cards: [], equal: {}, errors: [] };
  const view = document.querySelector(".wf-view");
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const until = async (test, what) => {
    for (let i = 0; i < 200; i++) { if (test()) return; await sleep(10); }
    throw new Error(`timed out waiting for ${what}`);
  };
  const listed = () => [...document.querySelectorAll(".wf-rows .wf-row")].map((r) => Number(r.dataset.f));
  const hashed = async (hash) => { location.hash = hash; await sleep(30); };
  try {
    await wfSite.ready;
    for (const f of FEATURES) {
      await wfSite.show(f);
      const card = view.querySelector(".wf-card");
      const svgs = [...view.querySelectorAll(".wf-svg")];
      out.cards.push({
        feature: Number(card.dataset.feature),
        title: card.querySelector(".wf-head b").textContent,
        svgs: svgs.length,
        paths: view.querySelectorAll(".wf-svg path").length,
        svgHeights: svgs.map((s) => Math.round(s.getBoundingClientRect().height)),
        logits: view.querySelectorAll(".wf-logits code").length,
        groups: view.querySelectorAll(".wf-group").length,
        examples: view.querySelectorAll(".wf-ex").length,
        tokens: view.querySelectorAll(".wf-ex > span > span").length,
        focus: view.querySelectorAll(".wf-ex .wf-focus").length,
        visibleExample: view.querySelector(".wf-ex")?.getBoundingClientRect().height ?? 0,
      });
      if (f in EXPECTED) {
        const t = document.createElement("template");
        t.innerHTML = EXPECTED[f];
        const want = t.content.firstElementChild;
        out.equal[f] = want.isEqualNode(card);
        if (!out.equal[f]) {
          const a = [...card.querySelectorAll("*")], b = [...want.querySelectorAll("*")];
          const i = a.findIndex((node, k) => !b[k] || node.outerHTML !== b[k].outerHTML);
          out.equal[`${f}:diff`] = [a.length, b.length, a[i]?.outerHTML.slice(0, 400), b[i]?.outerHTML.slice(0, 400)];
        }
      }
    }
    // The list: everything, then search by id, by token, sort, click.
    await hashed("#");
    out.all = listed();
    await hashed("#q=%235");
    out.byId = listed();
    await hashed(`#q=${encodeURIComponent(__TOKEN__)}`);
    out.byToken = listed();
    await hashed("#");
    document.querySelector('.wf-rhead [data-sort="density"]').click();
    await sleep(30);
    out.sortedHash = location.hash;
    out.sorted = listed();
    out.sortedHeading = document.querySelector('.wf-rhead [data-sort="density"]').textContent;
    document.querySelector('.wf-rows .wf-row[data-f="9"]').click();
    await until(() => view.querySelector('.wf-card[data-feature="9"]'), "the card of feature 9");
    out.clickedHash = location.hash;
    out.selectedRow = [...document.querySelectorAll(".wf-rows .wf-sel")].map((r) => Number(r.dataset.f));
    const input = document.querySelector(".wf-find input");
    input.value = "#12";
    input.dispatchEvent(new Event("input"));
    await until(() => location.hash.includes("q=%2312"), "the query in the hash");
    await sleep(30);
    out.typed = listed();
    out.count = document.querySelector(".wf-find span").textContent;
    const token = view.querySelector(".wf-ex > span > span");
    token.dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    out.highlighted = view.querySelectorAll(".wf-hl").length;
    out.sameText = [...view.querySelectorAll(".wf-ex > span > span, .wf-logits code")].filter(
      (n) => n.textContent === token.textContent).length;
    await hashed("#f=999");
    out.missing = view.textContent;
  } catch (error) {
    out.errors.push(String(error.stack || error));
  }
  document.getElementById("wf-check").textContent = JSON.stringify(out);
})();
</script>
"""


@pytest.fixture(scope="module")
def stats() -> SyntheticStats:
    return SyntheticStats(N_FEATURES, per_group=5, groups=4)


@pytest.fixture(scope="module")
def site(stats, tmp_path_factory) -> Path:
    return write_site(stats, tmp_path_factory.mktemp("site") / "features", chunk=CHUNK, progress=False)


@pytest.fixture(scope="module")
def checked(site, stats, chromium) -> dict:
    """What check.html saw, opened from file:// offline."""
    expected = {f: card_html(stats.card(f), inline=False) for f in COMPARED}
    token = stats.table()[8]["top_tokens"][1].strip()
    script = (CHECK.replace("__EXPECTED__", json.dumps(expected).replace("</", "<\\/"))
              .replace("__FEATURES__", json.dumps(list(range(N_FEATURES)))).replace("__TOKEN__", json.dumps(token)))
    page = site / "check.html"
    page.write_text((site / "index.html").read_text(encoding="utf-8").replace("</body>", script + "</body>"),
                    encoding="utf-8")
    try:
        run = chromium.run(site.parent / "profile", "--window-size=1200,1000", "--virtual-time-budget=30000",
                           "--dump-dom", page.as_uri())
    finally:
        page.unlink()
    found = re.search(r'<pre id="wf-check">(.*?)</pre>', run.stdout, re.S)
    assert found and found.group(1) != "pending", f"the check did not finish; stderr:\n{run.stderr[-3000:]}"
    result = json.loads(html.unescape(found.group(1)))
    assert result["errors"] == [], result["errors"]
    return result


# --- in the browser -----------------------------------------------------------------------


def test_every_card_shows_histograms_logits_and_examples(checked, stats):
    assert [c["feature"] for c in checked["cards"]] == list(range(N_FEATURES))
    for c in checked["cards"]:
        card = stats.card(c["feature"])
        n_examples = sum(len(g["examples"]) for g in card["groups"])
        assert c["title"] == f"feature {c['feature']}"
        assert c["svgs"] == 2 and c["paths"] >= 2 and all(h > 40 for h in c["svgHeights"]), c
        assert c["logits"] == 20 and c["groups"] == len(card["groups"]), c
        assert c["examples"] == c["focus"] == n_examples, c
        assert c["tokens"] == sum(len(e["tokens"]) for g in card["groups"] for e in g["examples"]), c
        assert c["visibleExample"] > 10, c


def test_site_cards_are_the_feature_card_markup(checked):
    """The site's card (markup stored by Python, examples unpacked by feature_site.js) has the
    same DOM as card_html(card, inline=False) draws for the widget."""
    for f in COMPARED:
        assert checked["equal"][str(f)], checked["equal"].get(f"{f}:diff")


def test_list_searches_sorts_and_selects(checked, stats):
    rows = stats.table()
    token = rows[8]["top_tokens"][1].strip().lower()
    assert checked["all"] == list(range(N_FEATURES))
    assert checked["byId"] == [5]
    assert 8 in checked["byToken"]
    assert checked["byToken"] == [r["feature"] for r in rows if token in "\n".join(
        [*r["top_tokens"], *r["top_logits"], r["explanation"]]).lower()]
    assert checked["sortedHash"] == "#s=density&d=1" and checked["sortedHeading"] == "density ↓"
    assert checked["sorted"] == sorted(range(N_FEATURES), key=lambda f: (-float(f"{rows[f]['density']:.6g}"), f))
    assert checked["clickedHash"] == "#f=9&s=density&d=1" and checked["selectedRow"] == [9]
    assert checked["typed"] == [12] and checked["count"] == "1 match"


def test_card_behaviour_works_in_the_site(checked):
    assert checked["highlighted"] == checked["sameText"] > 0


def test_unknown_feature_says_so(checked):
    assert "There is no feature 999 in this site." in checked["missing"]


def test_screenshot_shows_the_list_and_the_card(site, chromium, tmp_path):
    """One screenshot of a feature's page (tmp_path/site.png): the list panel and the card
    both have ink."""
    from PIL import Image

    shot = tmp_path / "site.png"
    run = chromium.run(tmp_path / "profile", "--window-size=1200,2000", "--virtual-time-budget=10000",
                       f"--screenshot={shot}", site.joinpath("index.html").as_uri() + "#f=3")
    assert shot.is_file(), run.stderr[-3000:]
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 2000)
    for box in [(20, 80, 420, 700), (480, 20, 1180, 1400)]:  # list panel; card
        pixels = list(image.crop(box).getdata())
        inked = sum(p < 200 for p in pixels)
        assert inked > 0.02 * len(pixels), f"{box}: only {inked} dark pixels"
    tinted = Image.open(shot).convert("RGB").crop((480, 20, 1180, 1400)).getdata()
    assert sum(1 for r, g, b in tinted if r > 200 and 100 < g < 190 and b < 80) > 500  # orange: histogram, tokens


# --- the files ----------------------------------------------------------------------------


def test_site_files(site):
    names = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())
    assert names == sorted([MARKER, "data/cards/000.js", "data/cards/001.js", "data/cards/002.js", "data/index.js",
                            "data/vocab.js", "index.html", "site.css", "site.js"])
    summary = site_summary(site)
    assert summary["n_features"] == N_FEATURES and summary["chunk"] == CHUNK
    page = (site / "index.html").read_text()
    assert "fetch(" not in (site / "site.js").read_text() and 'type="module"' not in page
    assert not re.search(r"https?://", page + (site / "site.js").read_text() + (site / "site.css").read_text())


def decode(text: str) -> list[int]:
    """The numbers of a packed string (the format workbench.site documents)."""
    digit = {c: i for i, c in enumerate(ALPHABET)}
    lead, numbers, n = len(ALPHABET) - TERMINAL, [], 0
    for c in text:
        d = digit[c]
        if d < TERMINAL:
            numbers.append(n * TERMINAL + d)
            n = 0
        else:
            n = n * lead + d - TERMINAL + 1
    assert n == 0, "ends inside a number"
    return numbers


def test_packed_numbers_round_trip_and_stay_short():
    values = [*range(0, 3000), *range(3000, 2_000_000, 997), 10**9]
    assert decode("".join(_number(v) for v in values)) == values
    assert {len(_number(v)) for v in range(TERMINAL)} == {1}
    assert len(_number(1700)) == 2 and len(_number(49_000)) == 3  # 4,608 features: 50k-token vocab, values < 24.5
    assert not set(ALPHABET) & set("\"\\,'<>&/ ")


def test_packed_examples_hold_the_card_values(site, stats):
    """Unpack feature 3's first group from its chunk file and compare it with the card."""
    text = (site / "data" / "cards" / "000.js").read_text(encoding="utf-8")
    entries = json.loads(text[text.index(",") + 1:text.rindex(");")])
    vocab = json.loads((site / "data" / "vocab.js").read_text(encoding="utf-8")[len("wfSite.vocab("):-3])
    feature, _, groups = entries[3]
    card = stats.card(3)
    assert feature == 3 and len(groups) == len(card["groups"])
    for packed, example in zip(groups[0].split(","), card["groups"][0]["examples"]):
        numbers = decode(packed)
        focus, context, position, count = numbers[:4]
        assert (focus, context - 1, position - 1) == (example["focus"], example["context"], example["position"])
        assert [vocab[i] for i in numbers[4:4 + count]] == example["tokens"]
        pairs = numbers[4 + count:]
        values = dict(zip(pairs[::2], (z // 2 if z % 2 == 0 else -(z + 1) // 2 for z in pairs[1::2])))
        assert values == {i: round(v * 1000) for i, v in enumerate(example["values"]) if round(v * 1000)}


def test_site_size_fits_4608_features(tmp_path):
    """90 examples of 17 tokens per feature: projected from 48 features, 4,608 stay < 50 MB."""
    stats = SyntheticStats(48, per_group=10, groups=9)
    summary = site_summary(write_site(stats, tmp_path / "s", progress=False))
    per_feature = (summary["bytes_cards"] + summary["bytes_index"]) / 48
    projected = per_feature * 4608 + 1_000_000  # + a full 50k-token vocab.js, fixed files
    assert projected < 50_000_000, f"{projected / 1e6:.1f} MB projected"


def test_write_is_atomic_and_replaces_only_its_own_sites(tmp_path):
    stats = SyntheticStats(3, per_group=2, groups=2)
    out = tmp_path / "site"
    write_site(stats, out, progress=False)
    first = (out / "data" / "index.js").read_text()
    write_site(SyntheticStats(5, per_group=2, groups=2), out, progress=False)  # replaces it
    assert (out / "data" / "index.js").read_text() != first and site_summary(out)["n_features"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no temporary folders left

    class Broken(SyntheticStats):
        def card(self, feature):
            if feature == 2:
                raise RuntimeError("disk on fire")
            return super().card(feature)

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_site(Broken(4, per_group=2, groups=2), out, progress=False)
    assert site_summary(out)["n_features"] == 5 and sorted(p.name for p in tmp_path.iterdir()) == ["site"]

    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a site write_site wrote"):
        write_site(stats, mine, progress=False)
    assert (mine / "keep.txt").read_text() == "mine"
