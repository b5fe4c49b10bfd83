// The static feature browser that workbench/site.py writes (bundled into its site.js).
//
// The page opens from file://, so nothing is fetched: data/vocab.js, data/index.js and, when a
// feature is picked, its data/cards/NNN.js are scripts that call window.wfSite. Python drew
// every list row, every heading and every card (workbench.widgets.browser.row_html, card_html);
// this script picks which rows to show (search, sort, page), swaps cards in and adds the card
// behaviours. The one thing it draws is each example row, unpacked from the compact form the
// site stores: `exampleHtml` is the twin of workbench.widgets.card.example_html, and
// tests/browser/test_feature_site.py checks that the two give the same DOM.
//
// The state (selected feature, query, sort, page) lives in the URL's hash, e.g.
// index.html#f=17&q=the&s=density&d=1, so links and the back button work.

import { enhanceCard } from "./feature_card.js";
import { alphaPercent, background, displayToken, fmtValue } from "./token_heatmap.js";

const PAGE_SIZE = 100;

/** Text as Python's html.escape(text, quote=True) writes it. */
export function escapeHtml(text) {
  return text
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#x27;");
}

/** A function from one packed group (see workbench/site.py) to its examples. */
export function unpacker(alphabet, terminal, vocab) {
  const digit = new Map([...alphabet].map((c, i) => [c, i]));
  const lead = alphabet.length - terminal;
  return (packed) => {
    if (!packed) return [];
    return packed.split(",").map((text) => {
      let at = 0;
      const next = () => {
        let n = 0;
        for (;;) {
          if (at >= text.length) throw new Error(`packed example ends inside a number: ${text}`);
          const d = digit.get(text[at++]);
          if (d === undefined) throw new Error(`packed example has a stray character: ${text}`);
          if (d < terminal) return n * terminal + d;
          n = n * lead + (d - terminal) + 1;
        }
      };
      const focus = next();
      const context = next();
      const position = next();
      const count = next();
      const tokens = Array.from({ length: count }, () => vocab[next()]);
      const milli = new Array(count).fill(0);
      while (at < text.length) {
        const i = next();
        const z = next();
        milli[i] = z % 2 ? -(z + 1) / 2 : z / 2;
      }
      return { focus, context, position, tokens, milli };
    });
  };
}

/** One example row: the markup workbench.widgets.card.example_html(inline=False) draws. */
export function exampleHtml(example, vmaxMilli, color) {
  const vmax = vmaxMilli / 1000;
  let spans = "";
  example.tokens.forEach((token, i) => {
    const v = example.milli[i] / 1000;
    const alpha = alphaPercent(v, vmax);
    let attrs = i === example.focus ? ' class="wf-focus"' : "";
    if (alpha) attrs += ` style="background-color: ${background(color, alpha)}"`;
    attrs += ` title="${escapeHtml(`${JSON.stringify(token)}: ${fmtValue(v)}`)}"`;
    spans += `<span${attrs}>${escapeHtml(displayToken(token))}</span>`;
  });
  const where =
    example.context > 0 ? ` title="context ${example.context - 1}, position ${example.position - 1}"` : "";
  const head = `<b${where}>${fmtValue(example.milli[example.focus] / 1000)}</b>`;
  return `<div class="wf-ex">${head}<span>${spans}</span></div>`;
}

/** Fill the empty example groups of a card's markup (in `view`) from its packed groups. */
export function fillExamples(view, packedGroups, unpack, color) {
  const groups = packedGroups.map(unpack);
  let vmax = 0;
  let any = false;
  for (const examples of groups) {
    for (const example of examples) {
      for (const m of example.milli) {
        vmax = any ? Math.max(vmax, m) : m;
        any = true;
      }
    }
  }
  view.querySelectorAll(".wf-exs").forEach((box, g) => {
    box.innerHTML = (groups[g] ?? []).map((example) => exampleHtml(example, vmax, color)).join("");
  });
}

// ---- the page -------------------------------------------------------------------------

const site = {
  vocab: null,
  index: null,
  position: new Map(), // feature -> its row's position (chunk = position // chunk size)
  chunks: new Map(), // chunk number -> Map(feature -> [markup, packed groups])
  loading: new Map(), // chunk number -> Promise
  unpack: null,
  undoCard: () => {},
  shown: -1,
};
let resolveReady;
const ready = new Promise((resolve) => {
  resolveReady = resolve;
});

function readState() {
  const params = new URLSearchParams(location.hash.slice(1));
  const keys = site.index.sort_keys;
  const sortBy = keys.includes(params.get("s")) ? params.get("s") : "feature";
  return {
    selected: params.has("f") ? Number(params.get("f")) : -1,
    query: params.get("q") ?? "",
    sortBy,
    desc: params.get("d") === "1",
    page: Math.max(0, Number(params.get("p")) || 0),
  };
}

function writeState(changes) {
  const state = { ...readState(), ...changes };
  const params = new URLSearchParams();
  if (state.selected >= 0) params.set("f", state.selected);
  if (state.query) params.set("q", state.query);
  if (state.sortBy !== "feature") params.set("s", state.sortBy);
  if (state.desc) params.set("d", "1");
  if (state.page > 0) params.set("p", state.page);
  const hash = `#${params}`;
  if (location.hash !== hash) location.hash = hash; // hashchange draws
}

let found = { query: null, positions: [] };

function matching(query) {
  if (found.query === query) return found.positions;
  const rows = site.index.rows;
  const q = query.trim();
  let positions;
  if (!q) positions = rows.map((_, i) => i);
  else {
    const id = /^#?(\d+)$/.exec(q);
    const needle = q.toLowerCase();
    positions = [];
    rows.forEach((row, i) => {
      if ((id && row[0] === Number(id[1])) || (!q.startsWith("#") && row[row.length - 1].includes(needle))) {
        positions.push(i);
      }
    });
  }
  found = { query, positions };
  return positions;
}

function ordered(positions, sortBy, desc) {
  const column = site.index.sort_keys.indexOf(sortBy);
  const rows = site.index.rows;
  const sign = desc ? -1 : 1;
  return [...positions].sort((a, b) => sign * (rows[a][column] - rows[b][column]) || rows[a][0] - rows[b][0]);
}

function pagerHtml(page, pages, first, last, total, all) {
  const button = (label, to, tip) =>
    `<button data-page="${to}" title="${tip}"${to < 0 || to >= pages ? " disabled" : ""}>${label}</button>`;
  const fmt = (n) => n.toLocaleString("en-US");
  let where = total ? `${fmt(first)}–${fmt(last)} of ${fmt(total)}` : `0 of ${fmt(total)}`;
  where += total !== all ? ` matching (of ${fmt(all)} features)` : " features";
  return `<div class="wf-pager">${button("‹", page - 1, "previous page")}<span>${where} · page ${page + 1} of ${pages}</span>${button("›", page + 1, "next page")}</div>`;
}

function drawList(state) {
  const list = document.querySelector(".wf-list");
  const positions = ordered(matching(state.query), state.sortBy, state.desc);
  const pages = Math.max(1, Math.ceil(positions.length / PAGE_SIZE));
  const page = Math.min(state.page, pages - 1);
  const shown = positions.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
  const selected = `<div class="wf-row" data-f="${state.selected}">`;
  const rows = shown
    .map((i) => site.index.html[i])
    .map((markup) => (markup.startsWith(selected) ? markup.replace('class="wf-row"', 'class="wf-row wf-sel"') : markup))
    .join("");
  const empty = '<div class="wf-empty" style="padding: 6px 10px">no feature matches</div>';
  const heading = site.index.headings[`${state.sortBy}:${state.desc ? 1 : 0}`];
  const pager = pagerHtml(page, pages, page * PAGE_SIZE + 1, page * PAGE_SIZE + shown.length, positions.length, site.index.rows.length);
  list.dataset.sorted = state.sortBy;
  list.innerHTML = `<div class="wf-table">${heading}<div class="wf-rows">${rows || empty}</div>${pager}</div>`;
  list.querySelector(".wf-sel")?.scrollIntoView({ block: "nearest" });
  const count = document.querySelector(".wf-find span");
  count.textContent = state.query ? `${positions.length.toLocaleString("en-US")} match` : "";
  const input = document.querySelector(".wf-find input");
  if (document.activeElement !== input) input.value = state.query;
}

function loadChunk(n) {
  if (site.chunks.has(n)) return Promise.resolve(site.chunks.get(n));
  if (!site.loading.has(n)) {
    const promise = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = `data/cards/${String(n).padStart(site.index.digits, "0")}.js`;
      script.charset = "utf-8";
      script.onload = () =>
        site.chunks.has(n) ? resolve(site.chunks.get(n)) : reject(new Error(`${script.src} held no cards`));
      script.onerror = () => {
        site.loading.delete(n);
        reject(new Error(`could not load ${script.getAttribute("src")}`));
      };
      document.head.append(script);
    });
    site.loading.set(n, promise);
  }
  return site.loading.get(n);
}

/** Show the card of `feature` in the main view; resolves once it is drawn. */
async function show(feature) {
  const view = document.querySelector(".wf-view");
  site.shown = feature;
  const position = site.position.get(feature);
  if (position === undefined) {
    view.innerHTML = feature < 0 ? '<div class="wf-empty">Pick a feature from the list.</div>'
      : `<div class="wf-empty">There is no feature ${feature} in this site.</div>`;
    return;
  }
  let cards;
  try {
    cards = await loadChunk(Math.floor(position / site.index.chunk));
  } catch (error) {
    view.innerHTML = `<div class="wf-empty">${escapeHtml(String(error.message))}</div>`;
    return;
  }
  if (site.shown !== feature) return; // another feature was picked meanwhile
  const [markup, groups] = cards.get(feature);
  site.undoCard();
  view.innerHTML = markup;
  fillExamples(view, groups, site.unpack, site.index.color);
  site.undoCard = enhanceCard(view);
  view.scrollTop = 0;
  document.title = `${view.querySelector(".wf-head b")?.textContent ?? feature} · ${site.index.title}`;
}

let first = true;

function draw() {
  let state = readState();
  if (first && state.selected >= 0 && !/[#&]p=/.test(location.hash)) {
    // A link to a feature opens the list at the page that holds it.
    const at = ordered(matching(state.query), state.sortBy, state.desc).indexOf(site.position.get(state.selected));
    if (at >= 0) state = { ...state, page: Math.floor(at / PAGE_SIZE) };
  }
  first = false;
  drawList(state);
  if (state.selected !== site.shown) show(state.selected);
}

function onClick(event) {
  const target = event.target;
  if (target.closest(".wf-view")) return;
  const sort = target.closest("[data-sort]");
  const state = readState();
  if (sort) {
    const key = sort.dataset.sort;
    writeState(key === state.sortBy ? { desc: !state.desc, page: 0 } : { sortBy: key, desc: key !== "feature", page: 0 });
    return;
  }
  const pager = target.closest("button[data-page]");
  if (pager && !pager.disabled) {
    writeState({ page: Number(pager.dataset.page) });
    return;
  }
  const row = target.closest(".wf-row[data-f]");
  if (row && !row.classList.contains("wf-rhead")) writeState({ selected: Number(row.dataset.f) });
}

function onKey(event) {
  const input = document.querySelector(".wf-find input");
  if (event.key === "/" && document.activeElement !== input) {
    event.preventDefault();
    input.focus();
    return;
  }
  if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
  const rows = [...document.querySelectorAll(".wf-rows .wf-row[data-f]")];
  if (!rows.length) return;
  const at = rows.findIndex((row) => row.classList.contains("wf-sel"));
  const next = at < 0 ? 0 : Math.min(Math.max(at + (event.key === "ArrowDown" ? 1 : -1), 0), rows.length - 1);
  event.preventDefault();
  writeState({ selected: Number(rows[next].dataset.f) });
}

function start() {
  site.index.rows.forEach((row, i) => site.position.set(row[0], i));
  site.unpack = unpacker(site.index.alphabet, site.index.terminal, site.vocab);
  let timer = null;
  const input = document.querySelector(".wf-find input");
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => writeState({ query: input.value, page: 0 }), 120);
  });
  document.addEventListener("click", onClick);
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", draw);
  draw();
  resolveReady();
}

window.wfSite = {
  vocab(tokens) {
    site.vocab = tokens;
  },
  index(data) {
    site.index = data;
    start();
  },
  chunk(n, entries) {
    site.chunks.set(n, new Map(entries.map(([feature, markup, groups]) => [feature, [markup, groups]])));
  },
  /** For tests and the console: resolves once the list is drawn. */
  ready,
  show,
};
