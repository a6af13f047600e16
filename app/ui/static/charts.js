// Charts drawn by hand in SVG and plain HTML: a few kilobytes instead of a vendored charting
// library (tens to hundreds of kB to audit and update), sharp at any zoom, and each one labelled
// for screen readers (role="img" with a summary) under the page's strict Content-Security-Policy.

import { el, percent } from "./api.js";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  node.append(...children);
  return node;
}

// Horizontal bars, one <li> per entry ([label, value in 0..1]); `highlight` marks one label.
// Widths are set through the CSSOM, which the CSP allows (style attributes it does not).
export function bars(list, entries, highlight) {
  list.replaceChildren(
    ...entries.map(([label, value]) => {
      const fill = el("span", { class: "fill" });
      fill.style.width = `${Math.max(0, Math.min(1, value)) * 100}%`;
      const item = el(
        "li",
        { class: label === highlight ? "bar best" : "bar" },
        el("span", { class: "label" }, label),
        el("span", { class: "track", "aria-hidden": "true" }, fill),
        el("span", { class: "value" }, percent(value)),
      );
      if (label === highlight) item.setAttribute("aria-current", "true");
      return item;
    }),
  );
}

// The confusion matrix as a heatmap: rows are true classes, columns predictions, each cell
// shaded by its share of its row (so rare classes read as clearly as common ones).
export function heatmap(matrix, labels) {
  const n = labels.length;
  const cell = 34;
  const margin = 92;
  const size = margin + n * cell;
  let worst = null;
  let diagonal = 0;
  let total = 0;
  const cells = [];
  matrix.forEach((row, i) => {
    const rowTotal = row.reduce((a, b) => a + b, 0) || 1;
    row.forEach((count, j) => {
      total += count;
      if (i === j) diagonal += count;
      else if (count > 0 && (!worst || count > worst.count)) worst = { count, actual: labels[i], predicted: labels[j] };
      const share = count / rowTotal;
      const fill = i === j ? `rgba(37, 99, 235, ${0.08 + 0.92 * share})` : `rgba(220, 38, 38, ${share > 0 ? 0.12 + 0.88 * Math.sqrt(share) : 0})`;
      cells.push(
        svg("rect", { x: margin + j * cell, y: margin + i * cell, width: cell - 1, height: cell - 1, fill, class: "cell" },
          svg("title", {}, document.createTextNode(`true ${labels[i]}, predicted ${labels[j]}: ${count}`))),
        svg("text", { x: margin + j * cell + cell / 2, y: margin + i * cell + cell / 2 + 4, class: share > 0.5 ? "count light" : "count" },
          document.createTextNode(String(count))),
      );
    });
  });
  const axis = labels.flatMap((label, k) => [
    svg("text", { x: margin - 6, y: margin + k * cell + cell / 2 + 4, class: "axis end" }, document.createTextNode(label.slice(0, 11))),
    svg("text", { x: 0, y: 0, class: "axis", transform: `translate(${margin + k * cell + cell / 2 + 4}, ${margin - 6}) rotate(-60)` },
      document.createTextNode(label.slice(0, 11))),
  ]);
  const summary = `Confusion matrix, ${n} classes: ${percent(diagonal / (total || 1))} on the diagonal` +
    (worst ? `; most frequent error: ${worst.actual} taken for ${worst.predicted}, ${worst.count} times` : "");
  return svg("svg", { viewBox: `0 0 ${size} ${size}`, class: "chart heatmap", role: "img", "aria-label": summary },
    svg("title", {}, document.createTextNode(summary)), ...axis, ...cells);
}

// Lines over epochs: series = [{ name, values, cls }], all on one 0..max scale (`max` defaults to the data's).
export function lineChart(title, epochs, series, { max } = {}) {
  const width = 360;
  const height = 200;
  const pad = { left: 44, right: 12, top: 14, bottom: 30 };
  const all = series.flatMap((s) => s.values).filter((v) => Number.isFinite(v));
  const top = max ?? Math.max(...all, 1e-9);
  const low = max === 1 ? Math.min(...all, 1) : 0;
  const bottom = max === 1 ? Math.max(0, Math.floor(low * 20) / 20) : 0;
  const x = (k) => pad.left + (epochs.length > 1 ? (k / (epochs.length - 1)) * (width - pad.left - pad.right) : (width - pad.left - pad.right) / 2);
  const y = (v) => pad.top + (1 - (v - bottom) / ((top - bottom) || 1)) * (height - pad.top - pad.bottom);
  const grid = [bottom, (bottom + top) / 2, top].flatMap((v) => [
    svg("line", { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v), class: "grid" }),
    svg("text", { x: pad.left - 6, y: y(v) + 4, class: "axis end" }, document.createTextNode(top <= 1 ? v.toFixed(2) : v.toPrecision(2))),
  ]);
  const ticks = epochs.map((epoch, k) => svg("text", { x: x(k), y: height - 10, class: "axis middle" }, document.createTextNode(String(epoch))));
  const lines = series.flatMap((s) => {
    const points = s.values.map((v, k) => `${x(k)},${y(v)}`).join(" ");
    return [svg("polyline", { points, class: `line ${s.cls}` }),
      ...s.values.map((v, k) => svg("circle", { cx: x(k), cy: y(v), r: 3, class: `dot ${s.cls}` },
        svg("title", {}, document.createTextNode(`${s.name}, epoch ${epochs[k]}: ${v.toFixed(4)}`))))];
  });
  const last = series.map((s) => `${s.name} ${s.values.length ? s.values[s.values.length - 1].toFixed(4) : "–"}`).join(", ");
  const summary = `${title} over ${epochs.length} epoch(s); last: ${last}`;
  return svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart line-chart", role: "img", "aria-label": summary },
    svg("title", {}, document.createTextNode(summary)), ...grid, ...ticks, ...lines);
}
