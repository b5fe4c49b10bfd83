// Front end of workbench.widgets.Transcript, TraitChips and PromptHeatmap.
//
// Python draws everything (workbench/widgets/traits.py) and syncs it as `view_html`; this module
// swaps that markup in when it changes and turns clicks into trait changes: a chip opens its
// feature under the turn (`selected` = [turn, feature]; the open chip again closes it), the
// detail buttons switch between the card and the top examples (`detail`) or close it. Chips
// take the keyboard too (Tab to one, Enter or Space). Cards get their behaviours from
// feature_card.js. PromptHeatmap has nothing to click: its tokens' tooltips carry the values.

import { enhanceCard } from "./feature_card.js";

const NONE = [-1, -1];

/** The trait changes a click on `target` asks for, or null. */
export function clickAction(target, model) {
  if (target.closest(".wf-card, .wf-exs")) return null;
  const button = target.closest(".wi-dhead > button");
  if (button) {
    if (button.dataset.close) return { selected: NONE };
    return { detail: button.dataset.detail };
  }
  const chip = target.closest(".wi-chip[data-f]");
  if (!chip) return null;
  const pick = [Number(chip.dataset.turn), Number(chip.dataset.f)];
  const [turn, f] = model.get("selected") ?? NONE;
  return { selected: pick[0] === turn && pick[1] === f ? NONE : pick };
}

function render({ model, el }) {
  let undoCard = () => {};
  const draw = () => {
    undoCard();
    el.innerHTML = model.get("view_html");
    for (const chip of el.querySelectorAll(".wi-chip[data-f]")) {
      chip.tabIndex = 0;
      chip.setAttribute("role", "button");
      chip.setAttribute("aria-pressed", chip.classList.contains("wi-open") ? "true" : "false");
    }
    undoCard = enhanceCard(el);
  };
  const act = (target) => {
    const action = clickAction(target, model);
    if (!action) return false;
    for (const [key, value] of Object.entries(action)) model.set(key, value);
    model.save_changes();
    return true;
  };
  const onClick = (event) => {
    act(event.target);
  };
  const onKey = (event) => {
    if ((event.key === "Enter" || event.key === " ") && event.target.closest?.(".wi-chip")) {
      if (act(event.target)) event.preventDefault();
    }
  };
  draw();
  el.addEventListener("click", onClick);
  el.addEventListener("keydown", onKey);
  model.on("change:view_html", draw);
  return () => {
    model.off("change:view_html", draw);
    el.removeEventListener("click", onClick);
    el.removeEventListener("keydown", onKey);
    undoCard();
  };
}

export default { render };
