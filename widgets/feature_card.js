// Behaviour of feature cards: workbench.widgets.FeatureCard, the card in FeatureBrowser and
// the static site (workbench/site.py).
//
// Python draws every card (workbench/widgets/card.py, card_html); this module draws nothing
// of it. It adds behaviour to the markup:
// - hovering a token, or a promoted or suppressed logit, highlights that token across the card;
// - hovering a histogram reads out the bin under the pointer (its range and count).

const TOKENS = ".wf-ex > span > span, .wf-logits code";

/** The bin of a histogram (`edges`: n + 1 increasing numbers) at fraction `frac` of its width. */
export function binAt(edges, log, frac) {
  const lo = edges[0];
  const hi = edges[edges.length - 1];
  const f = Math.min(Math.max(frac, 0), 1);
  const value = log ? lo * Math.pow(hi / lo, f) : lo + f * (hi - lo);
  let i = 0;
  while (i < edges.length - 2 && edges[i + 1] <= value) i += 1;
  return i;
}

/** A histogram's bin edges from its SVG's data: `e` (every edge) or `lo`, `hi` (equal bins). */
export function histogramEdges(data, n) {
  if (data.e) return data.e.split(" ").map(Number);
  const lo = Number(data.lo);
  const hi = Number(data.hi);
  const log = data.log === "1";
  return Array.from({ length: n + 1 }, (_, i) => (log ? lo * Math.pow(hi / lo, i / n) : lo + ((hi - lo) * i) / n));
}

function short(v) {
  return String(Number(v.toPrecision(3)));
}

function readOut(svg, event) {
  const counts = svg.dataset.c.split(" ").map(Number);
  const edges = histogramEdges(svg.dataset, counts.length);
  const box = svg.getBoundingClientRect();
  const i = binAt(edges, svg.dataset.log === "1", (event.clientX - box.left) / box.width);
  const n = counts[i];
  return {
    x: event.clientX - box.left,
    text: `${short(edges[i])} – ${short(edges[i + 1])}: ${n.toLocaleString("en-US")} token${n === 1 ? "" : "s"}`,
  };
}

/** Add the card behaviours to the cards in `root`; returns a function that removes them. */
export function enhanceCard(root) {
  let tip = null;
  const clear = () => {
    for (const node of root.querySelectorAll(".wf-hl")) node.classList.remove("wf-hl");
  };
  const over = (event) => {
    const hit = event.target.closest?.(TOKENS);
    const card = hit?.closest(".wf-card");
    if (!card || !root.contains(card)) return;
    clear();
    const text = hit.textContent;
    for (const node of card.querySelectorAll(TOKENS)) {
      if (node.textContent === text) node.classList.add("wf-hl");
    }
  };
  const out = (event) => {
    if (event.target.closest?.(TOKENS)) clear();
    const svg = event.target.closest?.("svg.wf-svg");
    if (tip && svg && !svg.contains(event.relatedTarget)) {
      tip.remove();
      tip = null;
    }
  };
  const move = (event) => {
    const svg = event.target.closest?.("svg.wf-svg");
    if (!svg || !root.contains(svg)) return;
    const { x, text } = readOut(svg, event);
    if (!tip || tip.parentNode !== svg.parentNode) {
      tip?.remove();
      tip = document.createElement("div");
      tip.className = "wf-tip";
      svg.parentNode.append(tip);
    }
    tip.textContent = text;
    tip.style.left = `${x}px`;
  };
  root.addEventListener("mouseover", over);
  root.addEventListener("mouseout", out);
  root.addEventListener("mousemove", move);
  return () => {
    root.removeEventListener("mouseover", over);
    root.removeEventListener("mouseout", out);
    root.removeEventListener("mousemove", move);
    tip?.remove();
    clear();
  };
}

/** anywidget view: show `card_html` (swapped in on change) and add the behaviours. */
function render({ model, el }) {
  let undo = () => {};
  const draw = () => {
    undo();
    el.innerHTML = model.get("card_html");
    undo = enhanceCard(el);
  };
  draw();
  model.on("change:card_html", draw);
  return () => {
    model.off("change:card_html", draw);
    undo();
  };
}

export default { render };
