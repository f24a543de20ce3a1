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

  /* Stacked 100% bars: one bar per row; opts.segments(row) gives {segments, gap}: one
   * segment per entry ({key, name, value: share in 0..1, count, color, merged}), and
   * whether some of the bar is unknown (hidden small cells), drawn above them as one
   * hatched "suppressed" segment (at least 2 px, however small the share: the gap is a
   * fact, not a rounding). Returns what was drawn ({keys, hidden, marker}), for the
   * legend. */
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
    const drawn = { keys: new Set(), hidden: 0 };
    rows.forEach((row, i) => {
      let acc = 0;
      const partial = row.week_complete === false;
      const at = row[opts.labelKey];
      const bar = el("g", { class: partial ? "bar partial" : "bar", "data-label": at }, g);
      const { segments, gap } = opts.segments(row);
      segments.forEach((s) => {
        const y = m.top + h * (1 - acc - s.value);
        const r = el("rect", {
          x: x(i), y, width: band, height: Math.max(h * s.value, 0), fill: s.color,
          class: s.merged ? "segment merged" : "segment", "data-label": at,
          "data-key": s.key, "data-value": s.value,
        }, bar);
        tip(r, `${at} · ${s.name}: ${pct(s.value)} (${s.count ?? "hidden"} residents)`);
        drawn.keys.add(s.key);
        acc += s.value;
      });
      const rest = Math.max(1 - acc, 0);
      if (gap) {
        const r = el("rect", {
          x: x(i), y: m.top, width: band, height: Math.max(h * rest, 2),
          class: "segment suppressed", "data-label": at, "data-key": "suppressed",
          "data-value": rest,
        }, bar);
        tip(r, `${at} · hidden (small cells): ${pct(rest)}`);
        drawn.hidden += 1;
      }
    });
    xLabels(g, rows.map(label), x, band, height - 8,
      Math.ceil(n / Math.max(Math.floor(w / 56), 1)));
    drawn.marker = marker(g, rows, opts, (i) => m.left + i * step, m.top, h);
    return drawn;
  }

  /* opts.marker ({label, text}): a dashed vertical line at the start of the row whose
   * label is marker.label (a seam in the data the chart must not let pass unexplained).
   * Returns whether it was drawn. */
  function marker(g, rows, opts, xStart, top, h) {
    const mark = opts.marker;
    const i = mark ? rows.findIndex((r) => r[opts.labelKey] === mark.label) : -1;
    if (i < 0) return false;
    const x0 = xStart(i);
    const line = el("line", { x1: x0, x2: x0, y1: top, y2: top + h, class: "backfill",
      "data-label": mark.label }, g);
    tip(line, `${mark.label}: ${mark.text}`);
    const t = el("text", { x: x0 + 3, y: top + 10, class: "backfill-label" }, g);
    t.textContent = mark.text;
    return true;
  }

  /* "2026-W48*" for a week still in progress. */
  function label(row) {
    return row.week_complete === false ? `${row.week}*` : row.week;
  }

  /* Lines over weeks; null values break the line. Returns whether opts.marker was drawn. */
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
    return { marker: marker(g, rows, opts, (i) => m.left + i * step, m.top, h) };
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
