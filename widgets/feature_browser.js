// Front end of workbench.widgets.FeatureBrowser.
//
// Python draws the list (table_html), the text view (text_html) and the card (card_html);
// this module swaps that markup in when it changes and turns the reader's actions into trait
// changes: a row or a listed feature sets `selected`, a column heading sets `sort_by` (the
// current one flips `descending`), a pager button sets `page`, a token of the text sets
// `text_token`, and the search box (the one thing drawn here: it must keep focus while the
// list is redrawn) sets `query`. The card gets its behaviours from feature_card.js.

import { enhanceCard } from "./feature_card.js";

const DEFAULT_DESCENDING = { feature: false };

/** The action a click on `target` asks for, as trait changes (or null). */
export function clickAction(target, model) {
  const sort = target.closest("[data-sort]");
  if (sort) {
    const key = sort.dataset.sort;
    if (key === model.get("sort_by")) return { descending: !model.get("descending") };
    return { sort_by: key, descending: DEFAULT_DESCENDING[key] ?? true };
  }
  const pager = target.closest("button[data-page]");
  if (pager) return pager.disabled ? null : { page: Number(pager.dataset.page) };
  const token = target.closest(".wf-ttoks > [data-i]");
  if (token) {
    const i = Number(token.dataset.i);
    return { text_token: i === model.get("text_token") ? -1 : i };
  }
  const row = target.closest("[data-f]");
  if (row && !row.classList.contains("wf-rhead")) return { selected: Number(row.dataset.f) };
  return null;
}

function render({ model, el }) {
  el.innerHTML = `<div class="wf-browser">
  <div class="wf-find"><input type="search" placeholder="Search: feature id, token or explanation"
    spellcheck="false" aria-label="search features"><span></span></div>
  <div class="wf-list"></div><div class="wf-textview"></div><div class="wf-cardview"></div>
</div>`;
  const root = el.firstElementChild;
  const input = root.querySelector("input");
  const count = root.querySelector(".wf-find span");
  const list = root.querySelector(".wf-list");
  const textView = root.querySelector(".wf-textview");
  const cardView = root.querySelector(".wf-cardview");
  let undoCard = () => {};

  const apply = (changes) => {
    for (const [key, value] of Object.entries(changes)) model.set(key, value);
    model.save_changes();
  };
  const drawList = () => {
    const scroll = list.querySelector(".wf-rows")?.scrollTop ?? 0;
    list.innerHTML = model.get("table_html");
    const rows = list.querySelector(".wf-rows");
    if (rows) rows.scrollTop = scroll;
  };
  const drawCard = () => {
    undoCard();
    cardView.innerHTML = model.get("card_html");
    undoCard = enhanceCard(cardView);
  };
  const drawText = () => {
    textView.innerHTML = model.get("text_html");
  };
  const drawQuery = () => {
    if (document.activeElement !== input) input.value = model.get("query");
    count.textContent = model.get("query") ? `${model.get("n_matches").toLocaleString("en-US")} match` : "";
  };

  const onClick = (event) => {
    if (event.target.closest(".wf-cardview")) return;
    const action = clickAction(event.target, model);
    if (!action) return;
    if ("selected" in action) {
      // Mark the choice at once; Python's redraw confirms it.
      for (const node of root.querySelectorAll(".wf-sel")) node.classList.remove("wf-sel");
      event.target.closest("[data-f]").classList.add("wf-sel");
    }
    apply(action);
  };
  let timer = null;
  const onInput = () => {
    clearTimeout(timer);
    timer = setTimeout(() => apply({ query: input.value }), 150);
  };
  const onKey = (event) => {
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    if (event.target !== input && !list.contains(event.target) && event.target !== root) return;
    const rows = [...list.querySelectorAll(".wf-row[data-f]")];
    if (!rows.length) return;
    const at = rows.findIndex((row) => row.classList.contains("wf-sel"));
    const next = at < 0 ? 0 : Math.min(Math.max(at + (event.key === "ArrowDown" ? 1 : -1), 0), rows.length - 1);
    event.preventDefault();
    rows[next].scrollIntoView({ block: "nearest" });
    apply({ selected: Number(rows[next].dataset.f) });
  };

  drawList();
  drawText();
  drawCard();
  drawQuery();
  root.tabIndex = 0;
  root.addEventListener("click", onClick);
  root.addEventListener("keydown", onKey);
  input.addEventListener("input", onInput);
  const handlers = {
    "change:table_html": drawList,
    "change:card_html": drawCard,
    "change:text_html": drawText,
    "change:query": drawQuery,
    "change:n_matches": drawQuery,
  };
  for (const [event, handler] of Object.entries(handlers)) model.on(event, handler);
  return () => {
    for (const [event, handler] of Object.entries(handlers)) model.off(event, handler);
    clearTimeout(timer);
    undoCard();
  };
}

export default { render };
