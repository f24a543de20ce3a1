/* Bouquet dashboard charts: a few SVG charts in plain JavaScript (no library, no CDN).
 *
 * Every mark carries its data (data-* attributes and a <title> tooltip) so that what is
 * drawn can be checked against the API, and suppressed cells are drawn as such rather
 * than guessed.
 */
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    if (parent) parent.appendChild(node);
    return node;
  }

  function tip(node, text) {
    const t = document.createElementNS(NS, "title");
    t.textContent = text;
    node.appendChild(t);
  }

  function clear(svg) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
  }

  function size(svg, fallbackHeight) {
    const width = Math.max(svg.clientWidth || svg.parentNode.clientWidth || 640, 320);
    const height = svg.clientHeight || fallbackHeight;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    return { width, height };
  }

  function pct(v, digits) {
    return v === null || v === undefined ? "hidden" : (100 * v).toFixed(digits ?? 1) + "%";
  }

  function xLabels(g, labels, x, band, y, every) {
    const last = labels.length - 1;
    labels.forEach((label, i) => {
      if (i !== last && (i % every !== 0 || last - i < every)) return;
      const t = el("text", { x: x(i) + band / 2, y, "text-anchor": "middle", class: "tick" }, g);
      t.textContent = label.replace(/^\d{4}-/, "");
    });
  }

  function yAxis(g, left, top, height, width, ticks, format) {
    ticks.forEach((v) => {
      const y = top + height * (1 - v);
      el("line", { x1: left, x2: left + width, y1: y, y2: y, class: "grid" }, g);
      const t = el("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "tick" }, g);
      t.textContent = format(v);
    });
  }

  /* Stacked 100% bars: one bar per row, one segment per key (value = share in 0..1).
   * A suppressed share is unknown: the part of the bar not covered by the visible shares
   * is drawn as one hatched "suppressed" segment. */
  function stackedBars(svg, rows, opts) {
    clear(svg);
    const { width, height } = size(svg, 280);
    const m = { left: 44, right: 8, top: 8, bottom: 26 };
    const w = width - m.left - m.right;
    const h = height - m.top - m.bottom;
    const g = el("g", {}, svg);
    yAxis(g, m.left, m.top, h, w, [0, 0.25, 0.5, 0.75, 1], (v) => `${v * 100}%`);
    const n = Math.max(rows.length, 1);
    const step = w / n;
    const band = Math.max(step * 0.8, 1);
    const x = (i) => m.left + i * step + (step - band) / 2;
    rows.forEach((row, i) => {
      let acc = 0;
      const partial = row.week_complete === false;
      const bar = el("g", { class: partial ? "bar partial" : "bar",
        "data-label": row[opts.labelKey] }, g);
      opts.keys.forEach((key, j) => {
        const v = row[opts.prefix + key];
        if (v === null || v === undefined) return;
        const y = m.top + h * (1 - acc - v);
        const r = el("rect", {
          x: x(i), y, width: band, height: Math.max(h * v, 0), fill: opts.colors[j],
          class: "segment", "data-label": row[opts.labelKey], "data-key": key, "data-value": v,
        }, bar);
        tip(r, `${row[opts.labelKey]} · ${key}: ${pct(v)} (${row[key] ?? "hidden"} residents)`);
        acc += v;
      });
      const rest = 1 - acc;
      if (row.suppressed && row.suppressed.length && rest > 1e-9) {
        const r = el("rect", {
          x: x(i), y: m.top, width: band, height: h * rest, class: "segment suppressed",
          "data-label": row[opts.labelKey], "data-key": "suppressed", "data-value": rest,
        }, bar);
        tip(r, `${row[opts.labelKey]} · hidden (small cells): ${pct(rest)}`);
      }
    });
    xLabels(g, rows.map(label), x, band, height - 8,
      Math.ceil(n / Math.max(Math.floor(w / 56), 1)));
  }

  /* "2026-W48*" for a week still in progress. */
  function label(row) {
    return row.week_complete === false ? `${row.week}*` : row.week;
  }

  /* Lines over weeks; null values break the line. */
  function lines(svg, rows, opts) {
    clear(svg);
    const { width, height } = size(svg, 220);
    const m = { left: 44, right: 8, top: 8, bottom: 26 };
    const w = width - m.left - m.right;
    const h = height - m.top - m.bottom;
    const g = el("g", {}, svg);
    let max = opts.max;
    if (max === undefined) {
      max = 0;
      rows.forEach((r) => opts.series.forEach((s) => { if (r[s] > max) max = r[s]; }));
      max = max > 0 ? max * 1.1 : 1;
    }
    const ticks = [0, 0.25, 0.5, 0.75, 1];
    yAxis(g, m.left, m.top, h, w, ticks, (v) => opts.format(v * max, true));
    const n = Math.max(rows.length, 1);
    const step = w / n;
    const x = (i) => m.left + i * step + step / 2;
    const y = (v) => m.top + h * (1 - v / max);
    opts.series.forEach((s, j) => {
      let d = "";
      let pen = false;
      rows.forEach((r, i) => {
        const v = r[s];
        if (v === null || v === undefined) { pen = false; return; }
        d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
      });
      el("path", { d, class: "line", stroke: opts.colors[j], "data-series": s }, g);
      rows.forEach((r, i) => {
        const v = r[s];
        if (v === null || v === undefined) return;
        const c = el("circle", {
          cx: x(i), cy: y(v), r: 2.5, fill: opts.colors[j],
          class: r.week_complete === false ? "point partial" : "point",
          "data-series": s, "data-label": r[opts.labelKey], "data-value": v,
        }, g);
        tip(c, `${r[opts.labelKey]} · ${s}: ${opts.format(v)}`);
      });
    });
    xLabels(g, rows.map(label), (i) => x(i) - step / 2, step, height - 8,
      Math.ceil(n / Math.max(Math.floor(w / 56), 1)));
  }

  /* Funnel: one group per arm, one horizontal bar per stage, widths relative to the
   * largest "shown" count. */
  function funnel(svg, arms, stages, colors) {
    clear(svg);
    const rowH = 16;
    const gap = 10;
    const height = Math.max(arms.length * (stages.length * rowH + gap) + 10, 40);
    svg.style.height = `${height}px`;
    const { width } = size(svg, height);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const left = 190;
    const w = width - left - 150;
    const max = Math.max(1, ...arms.map((a) => a.values[0] || 0));
    arms.forEach((arm, i) => {
      const top = 5 + i * (stages.length * rowH + gap);
      const g = el("g", { class: "arm", "data-arm": arm.arm }, svg);
      const label = el("text", { x: 4, y: top + rowH, class: "arm-label" }, g);
      label.textContent = arm.arm;
      stages.forEach((stage, j) => {
        const v = arm.values[j];
        const y = top + j * rowH;
        const stageLabel = el("text", { x: left - 6, y: y + rowH - 4, "text-anchor": "end",
          class: "tick" }, g);
        stageLabel.textContent = stage;
        if (v === null || v === undefined) {
          const t = el("text", { x: left + 4, y: y + rowH - 4, class: "tick suppressed-text",
            "data-stage": stage, "data-arm": arm.arm }, g);
          t.textContent = "hidden (small cell)";
          return;
        }
        const r = el("rect", {
          x: left, y: y + 1, width: Math.max((w * v) / max, 1), height: rowH - 3,
          fill: colors[j], class: "stage", "data-arm": arm.arm, "data-stage": stage,
          "data-value": v,
        }, g);
        tip(r, `${arm.arm} · ${stage}: ${v} residents`);
        const t = el("text", { x: left + (w * v) / max + 6, y: y + rowH - 4, class: "tick" }, g);
        t.textContent = arm.labels[j];
      });
    });
  }

  window.BouquetCharts = { stackedBars, lines, funnel, pct };
})();
