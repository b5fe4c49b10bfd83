// Front end of workbench.widgets.AblationView.
//
// Python draws the whole view (workbench/widgets/ablation.py, view_html) and syncs it as
// `view_html`; this module draws none of it. It swaps that markup in when it changes and turns
// the reader's actions into trait changes: a feature in the list sets `feature` (Tab to it and
// press Enter or Space, too), a method button sets `method`. Hovering a token reads its numbers (its tooltip) out under the text; the card,
// if any, gets its behaviours from feature_card.js.

import { enhanceCard } from "./feature_card.js";

/** The trait changes a click on `target` asks for, or null. */
export function clickAction(target, model) {
  if (target.closest(".wf-card")) return null;
  const method = target.closest("button[data-method]");
  if (method) {
    if (method.disabled || method.dataset.method === model.get("method")) return null;
    return { method: method.dataset.method };
  }
  const feature = target.closest(".wi-feat[data-f]");
  if (feature) {
    const f = Number(feature.dataset.f);
    return f === model.get("feature") ? null : { feature: f };
  }
  return null;
}

function render({ model, el }) {
  let undoCard = () => {};
  let readout = null;
  const draw = () => {
    undoCard();
    el.innerHTML = model.get("view_html");
    const text = el.querySelector(".wi-text");
    readout = document.createElement("div");
    readout.className = "wi-readout";
    text?.after(readout);
    for (const pill of el.querySelectorAll(".wi-feat[data-f]")) {
      pill.tabIndex = 0;
      pill.setAttribute("role", "button");
      pill.setAttribute("aria-pressed", pill.classList.contains("wi-on") ? "true" : "false");
    }
    undoCard = enhanceCard(el);
  };
  const act = (target) => {
    const action = clickAction(target, model);
    if (!action) return false;
    // Mark the choice at once; Python's redraw confirms it.
    const chosen = target.closest(".wi-feat, button[data-method]");
    for (const node of chosen.parentNode.querySelectorAll(".wi-on")) node.classList.remove("wi-on");
    chosen.classList.add("wi-on");
    for (const [key, value] of Object.entries(action)) model.set(key, value);
    model.save_changes();
    return true;
  };
  const onClick = (event) => {
    act(event.target);
  };
  const onKey = (event) => {
    if ((event.key === "Enter" || event.key === " ") && event.target.closest?.(".wi-feat")) {
      if (act(event.target)) event.preventDefault();
    }
  };
  const onOver = (event) => {
    const token = event.target.closest?.(".wi-text > [data-i]");
    if (token && readout) readout.textContent = token.title;
  };
  const onOut = (event) => {
    if (event.target.closest?.(".wi-text > [data-i]") && readout) readout.textContent = "";
  };
  draw();
  el.addEventListener("click", onClick);
  el.addEventListener("keydown", onKey);
  el.addEventListener("mouseover", onOver);
  el.addEventListener("mouseout", onOut);
  model.on("change:view_html", draw);
  return () => {
    model.off("change:view_html", draw);
    el.removeEventListener("click", onClick);
    el.removeEventListener("keydown", onKey);
    el.removeEventListener("mouseover", onOver);
    el.removeEventListener("mouseout", onOut);
    undoCard();
  };
}

export default { render };
