// Front end of workbench.widgets.TokenHeatmap and workbench.widgets.FeatureContexts.
//
// Builds the same DOM as the static fallback in workbench/widgets/heatmap.py (_view and
// _render_html): the helpers below are line-for-line twins of the Python ones,
// and tests/browser/test_render.py renders both in Chromium and compares them.

const TRAITS = ["tokens", "values", "rows", "max_value", "color", "title"];

/** How a token is shown: newlines, tabs and other control characters made visible. */
export function displayToken(token) {
  if (token === "") return "∅";
  let out = "";
  for (const ch of token) {
    const code = ch.codePointAt(0);
    if (ch === "\n") out += "⏎";
    else if (ch === "\t") out += "⇥";
    else if (code < 0x20) out += String.fromCodePoint(0x2400 + code); // ␀ ... ␟
    else if (code === 0x7f) out += "␡";
    else out += ch;
  }
  return out;
}

/** A value rounded half-up to three decimals, e.g. 0.0625 -> "0.063". */
export function fmtValue(v) {
  const n = Math.floor(v * 1000 + 0.5);
  const a = Math.abs(n);
  return (n < 0 ? "-" : "") + Math.floor(a / 1000) + "." + String(a % 1000).padStart(3, "0");
}

/** Background opacity in whole percent: value / vmax clipped to [0, 1]. */
export function alphaPercent(v, vmax) {
  if (!(vmax > 0)) return 0;
  const a = Math.min(Math.max(v / vmax, 0), 1);
  return Math.floor(a * 100 + 0.5);
}

/** CSS background for one token; `color` is "#rrggbb" (the widget normalises it). */
export function background(color, percent) {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16));
  const alpha = percent >= 100 ? "1" : percent <= 0 ? "0" : String(percent / 100);
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

function readState(model) {
  const rows = model.get("rows");
  const single = !Array.isArray(rows);
  return {
    // TokenHeatmap is the one-row case, drawn without a row header.
    rows: single
      ? [{ tokens: model.get("tokens") ?? [], values: model.get("values") ?? [], label: "" }]
      : rows,
    headers: !single,
    maxValue: model.get("max_value") ?? 0,
    color: model.get("color") || "#ff8c00",
    title: model.get("title") ?? "",
  };
}

/** The largest value, 0 for none (no spread: rows can be long). */
function largest(values) {
  return values.length ? values.reduce((a, b) => (b > a ? b : a)) : 0;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function buildView({ rows, headers, maxValue, color, title }) {
  // The values of a row are read up to its token count; a missing one (a
  // transient state while tokens and values sync separately) counts as 0.
  const valuesOf = (row) => row.tokens.map((_, i) => Number(row.values[i] ?? 0));
  const all = rows.flatMap(valuesOf);
  const vmax = maxValue > 0 ? maxValue : largest(all);

  const root = element("div", "wb-heatmap");
  if (title) root.append(element("div", "wb-title", title));
  // Row headers: the row's largest value, then its label if any row has one.
  const labels = headers && rows.some((row) => row.label);
  for (const row of rows) {
    const values = valuesOf(row);
    const line = element("div", "wb-row");
    if (headers) {
      const rowMax = element("span", "wb-max", `max ${fmtValue(largest(values))}`);
      rowMax.title = "largest value in this row";
      line.append(rowMax);
    }
    if (labels) {
      const label = element("span", "wb-label", row.label);
      label.title = row.label;
      line.append(label);
    }
    const tokens = element("span", "wb-tokens");
    row.tokens.forEach((token, i) => {
      const span = element("span", "wb-tok", displayToken(token));
      span.style.backgroundColor = background(color, alphaPercent(values[i], vmax));
      span.title = `${JSON.stringify(token)}: ${fmtValue(values[i])}`;
      tokens.append(span);
    });
    line.append(tokens);
    root.append(line);
  }
  return root;
}

function render({ model, el }) {
  const draw = () => el.replaceChildren(buildView(readState(model)));
  draw();
  for (const name of TRAITS) model.on(`change:${name}`, draw);
  return () => {
    for (const name of TRAITS) model.off(`change:${name}`, draw);
  };
}

export default { render };
