/* Bouquet engagement dashboard: fetches the operator API with the operator key and
 * draws it. Numbers are formatted by fmt() only, so what the page shows can be checked
 * against the API; every cell keeps the raw value in data-value.
 */
(function () {
  "use strict";
  const C = window.BouquetCharts;
  const KEY = "bouquet.operatorKey";
  const CADENCES = ["daily", "weekly", "monthly", "yearly", "dormant"];
  const CADENCE_COLORS = ["#1b5e20", "#43a047", "#a5d6a7", "#ffcc80", "#bdbdbd"];
  /* Merged classes (the API's `merged` list names those a row shows in place of hidden
   * parts): drawn as one band where the parts would be, with their own legend entry. */
  const MERGED = {
    weekly_plus: { name: "weekly or better (daily + weekly merged)", color: "#00796b",
      parts: ["daily", "weekly"] },
    active_window: { name: "monthly or better (daily + weekly + monthly merged)",
      color: "#4db6ac", parts: ["daily", "weekly", "monthly"] },
  };
  const STAGES = ["shown", "opened", "subscribed", "used"];
  const STAGE_COLORS = ["#90caf9", "#42a5f5", "#1e88e5", "#0d47a1"];
  const $ = (id) => document.getElementById(id);
  let summary = null;

  /* --- the key: from the #key= fragment once (the local demo's link, development key
     only: a fragment is never sent to the server), then sessionStorage; never from a query
     string, which would reach the server and its access logs ---------------------------- */
  function takeKeyFromUrl() {
    const url = new URL(window.location.href);
    const found = new URLSearchParams(url.hash.replace(/^#/, "")).get("key");
    if (found) {
      sessionStorage.setItem(KEY, found);
      url.hash = "";
      window.history.replaceState(null, "", url.pathname + url.search);
    }
  }

  function key() { return sessionStorage.getItem(KEY); }

  class AuthError extends Error {}

  async function api(path, asText) {
    const response = await fetch(path, { headers: { "X-API-Key": key() || "" } });
    if (response.status === 401 || response.status === 403) {
      throw new AuthError((await response.json()).detail || "not allowed");
    }
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return asText ? response.text() : response.json();
  }

  /* --- formatting ------------------------------------------------------------------- */
  function fmt(value, kind, notSuppressed) {
    if (value === null || value === undefined) return notSuppressed ? "–" : "◌";
    switch (kind) {
      case "count": return Math.round(value).toLocaleString("en-US");
      case "share": return (100 * value).toFixed(1) + "%";
      case "mean": return Number(value).toFixed(2);
      case "ci": return (100 * value).toFixed(1) + " pt";
      case "flag": return value ? "yes" : "no";
      default: return String(value);
    }
  }

  /* A table cell: "◌" for a suppressed value, "–" for one that does not exist (a share
   * of zero residents). */
  function cell(tr, value, kind, col, suppressed) {
    const td = document.createElement("td");
    const missing = value === null || value === undefined;
    const na = missing && suppressed !== undefined && !suppressed.includes(col);
    td.textContent = fmt(value, kind, na);
    if (col) td.dataset.col = col;
    if (na) {
      td.classList.add("na");
    } else if (missing) {
      td.classList.add("suppressed");
      td.title = `hidden: fewer than ${summary ? summary.small_cell_k : "k"} residents, ` +
        "or would let a hidden cell be recomputed";
    } else {
      td.dataset.value = String(value);
    }
    if (kind !== "text") td.classList.add("num");
    tr.appendChild(td);
    return td;
  }

  function table(node, columns, rows, rowKey) {
    node.textContent = "";
    const head = node.createTHead().insertRow();
    columns.forEach(([, label]) => {
      const th = document.createElement("th");
      th.textContent = label;
      head.appendChild(th);
    });
    const body = node.createTBody();
    rows.forEach((row) => {
      const tr = body.insertRow();
      if (rowKey) tr.dataset.key = rowKey(row);
      columns.forEach(([col, , kind]) => cell(tr, row[col], kind || "text", col,
        row.suppressed));
    });
    if (!rows.length) {
      const tr = body.insertRow();
      const td = tr.insertCell();
      td.colSpan = columns.length;
      td.textContent = "no data yet";
      td.className = "empty";
    }
  }

  /* A legend entry per name; `kinds` (optional) names each entry (data-key) and gives
   * the swatch a class instead of a colour (the hatched "hidden" swatch). */
  function legend(node, names, colors, kinds) {
    node.textContent = "";
    names.forEach((name, i) => {
      const span = document.createElement("span");
      const sw = document.createElement("i");
      if (colors[i]) sw.style.background = colors[i];
      if (kinds && kinds[i]) {
        span.dataset.key = kinds[i];
        sw.className = kinds[i];
      }
      span.appendChild(sw);
      span.appendChild(document.createTextNode(name));
      node.appendChild(span);
    });
  }

  function status(text, isError) {
    const s = $("status");
    s.textContent = text;
    s.className = isError ? "error" : "";
  }

  /* --- sections --------------------------------------------------------------------- */
  function card(container, id, label, value, kind, note) {
    const div = document.createElement("div");
    div.className = "card";
    const v = document.createElement("div");
    v.className = "value num";
    v.id = `headline-${id}`;
    v.textContent = fmt(value, kind);
    if (value === null || value === undefined) v.classList.add("suppressed");
    else v.dataset.value = String(value);
    const l = document.createElement("div");
    l.className = "label";
    l.textContent = label;
    div.append(v, l);
    if (note) {
      const n = document.createElement("div");
      n.className = "note";
      n.textContent = note;
      div.appendChild(n);
    }
    container.appendChild(div);
  }

  function liveValue(live, period, dimension) {
    if (!live || !live.active) return undefined;
    const bucket = period === "day" ? live.active.day : live.active.week;
    const row = live.active.rows.find((r) => r.period === period && r.bucket === bucket &&
      r.dimension === dimension && r.value === "all");
    return row ? row.active : 0;
  }

  function renderHeadline() {
    const box = $("headline");
    box.textContent = "";
    const h = summary.headline;
    if (!h) {
      box.textContent = "No events in the log yet.";
      return;
    }
    const before = h.share_weekly_plus_4_weeks_before;
    let trend = "";
    if (before !== null && before !== undefined && h.share_weekly_plus !== null) {
      const d = 100 * (h.share_weekly_plus - before);
      trend = `${d >= 0 ? "+" : ""}${d.toFixed(1)} pt in 4 weeks`;
    }
    /* The headline counts use (the resident acts with a service); response and exposure
     * are beside it, never mixed in: showing more must not raise the headline. */
    card(box, "known", `known residents (${h.week})`, h.known, "count");
    card(box, "share_weekly_plus", "using a service weekly or daily", h.share_weekly_plus,
      "share", trend);
    const beside = summary.beside || {};
    if (beside.response) {
      card(box, "response_share_weekly_plus", "responding to offers weekly or daily",
        beside.response.share_weekly_plus, "share", "clicks, dismissals, unsubscriptions");
    }
    if (beside.exposure) {
      card(box, "exposure_share_weekly_plus", "shown offers weekly or daily",
        beside.exposure.share_weekly_plus, "share", "exposure, not engagement");
    }
    card(box, "share_dormant", "dormant (no use in a year)", h.share_dormant, "share");
    card(box, "dau_mau", "DAU / MAU (use)", h.dau_mau, "share");
    card(box, "wau_mau", "WAU / MAU (use)", h.wau_mau, "share");
    card(box, "mean_contacts_per_known", "uses per resident this week",
      h.mean_contacts_per_known, "mean");
    card(box, "share_single_contact", "only ever one use", h.share_single_contact,
      "share");
    const live = summary.live;
    if (live && live.active) {
      card(box, "live_today", `active today (${live.active.day}, live, any contact)`,
        liveValue(live, "day", "all"), "count");
      card(box, "live_week", `active this week (${live.active.week}, live, any contact)`,
        liveValue(live, "week", "all"), "count");
    }
  }

  function scope() {
    const by = $("by").value;
    const value = $("value").value;
    return value ? { by, value, label: `${by} = ${value}` } : { by: "all", value: "",
      label: "whole city" };
  }

  function query(params) {
    const q = new URLSearchParams();
    Object.entries(params).forEach(([k, v]) => { if (v) q.set(k, v); });
    const s = q.toString();
    return s ? `?${s}` : "";
  }

  async function renderCharts() {
    const s = scope();
    const weeks = $("weeks").value;
    const common = { by: s.by, value: s.value, weeks };
    const [cadence, stick, contacts] = await Promise.all([
      api(`/v1/operator/engagement/cadence${query(common)}`),
      api(`/v1/operator/engagement/stickiness${query(common)}`),
      api(`/v1/operator/engagement/contacts${query(common)}`),
    ]);
    $("cadence-scope").textContent = `(${s.label})`;
    const marker = backfillMarker();
    const drawn = C.stackedBars($("cadence-chart"), cadence.rows, {
      segments: cadenceSegments, labelKey: "week", marker,
    });
    cadenceLegend(drawn);
    const stickColors = ["#6a1b9a", "#00897b"];
    const stickDrawn = C.lines($("stickiness-chart"), stick.rows, {
      series: ["dau_mau", "wau_mau"], colors: stickColors, labelKey: "week",
      max: 1, format: (v) => `${(100 * v).toFixed(0)}%`, marker,
    });
    markedLegend($("stickiness-legend"), ["DAU/MAU", "WAU/MAU"], stickColors, stickDrawn);
    const contactColors = ["#ef6c00", "#3949ab", "#8e24aa"];
    const contactsDrawn = C.lines($("contacts-chart"), contacts.rows, {
      series: ["mean_per_known", "p50", "p90"], colors: contactColors,
      labelKey: "week", format: (v, axis) => (axis ? v.toFixed(1) : Number(v).toFixed(2)),
      marker,
    });
    markedLegend($("contacts-legend"), ["mean per known", "median per active",
      "p90 per active"], contactColors, contactsDrawn);
  }

  /* The seam where observed use begins after imported records (the API's summary finds
   * it): marked on every weekly chart and explained once above them. */
  const BACKFILL_TEXT = "observed use starts";

  function backfillMarker() {
    const b = summary.backfill;
    return b ? { label: b.observed_from_week, text: BACKFILL_TEXT } : undefined;
  }

  function renderBackfill() {
    const note = $("backfill-note");
    const b = summary.backfill;
    note.textContent = b ? b.note : "";
    note.hidden = !b;
  }

  function markedLegend(node, names, colors, drawn) {
    if (!drawn.marker) {
      legend(node, names, colors);
      return;
    }
    legend(node, [...names, `${BACKFILL_TEXT} (${summary.backfill.observed_from_week}; ` +
      "before: imported records)"], [...colors, null], [...names.map(() => null),
      "backfill"]);
  }

  /* The bands of one week's bar, bottom to top: each class the API shows, and in place
   * of hidden classes the merged class the row names (drawn once, less its parts already
   * drawn); classes neither shown nor merged make the chart's "hidden" gap. */
  function cadenceSegments(row) {
    const out = [];
    const drawn = new Set();
    const share = (key) => row[`share_${key}`];
    CADENCES.forEach((c, j) => {
      if (drawn.has(c)) return;
      if (share(c) !== null && share(c) !== undefined) {
        out.push({ key: c, name: c, value: share(c), count: row[c],
          color: CADENCE_COLORS[j] });
        drawn.add(c);
        return;
      }
      const merged = (row.merged || []).find((m) => MERGED[m].parts.includes(c));
      if (!merged || share(merged) === null || share(merged) === undefined) return;
      const before = out.filter((o) => MERGED[merged].parts.includes(o.key));
      out.push({ key: merged, name: MERGED[merged].name, merged: true, color: MERGED[merged].color,
        value: share(merged) - before.reduce((a, o) => a + o.value, 0),
        count: row[merged] - before.reduce((a, o) => a + o.count, 0) });
      MERGED[merged].parts.forEach((p) => drawn.add(p));
    });
    // known residents hidden (null) still means someone is there; zero means nobody
    return { segments: out, gap: row.known !== 0 && CADENCES.some((c) => !drawn.has(c)) };
  }

  /* The five classes always; a merged band and the hatched "hidden" segment when drawn. */
  function cadenceLegend(drawn) {
    const names = [...CADENCES];
    const colors = [...CADENCE_COLORS];
    const kinds = [...CADENCES];
    Object.entries(MERGED).forEach(([key, m]) => {
      if (!drawn.keys.has(key)) return;
      names.push(m.name);
      colors.push(m.color);
      kinds.push(key);
    });
    if (drawn.hidden) {
      names.push(`hidden: fewer than ${summary.small_cell_k} residents, or would let one ` +
        "be recomputed");
      colors.push(null);
      kinds.push("suppressed");
    }
    if (drawn.marker) {
      names.push(`${BACKFILL_TEXT} (${summary.backfill.observed_from_week})`);
      colors.push(null);
      kinds.push("backfill");
    }
    legend($("cadence-legend"), names, colors, kinds);
  }

  async function renderBreakdown() {
    const by = $("by").value;
    $("breakdown-dimension").textContent = by;
    $("breakdown-week").textContent = "";
    const [cadence, stick] = await Promise.all([
      api(`/v1/operator/engagement/cadence?by=${by}&weeks=2`),
      api(`/v1/operator/engagement/stickiness?by=${by}&weeks=2`),
    ]);
    // the latest complete week (the week in progress is the live counters' business)
    const weeks = [...new Set(cadence.rows.filter((r) => r.week_complete).map((r) => r.week))];
    const week = weeks.length ? weeks[weeks.length - 1] :
      (cadence.rows.length ? cadence.rows[cadence.rows.length - 1].week : null);
    $("breakdown-week").textContent = week || "";
    const byValue = {};
    stick.rows.filter((r) => r.week === week).forEach((r) => { byValue[r.value] = r; });
    const rows = cadence.rows.filter((r) => r.week === week).map((r) => {
      const s = byValue[r.value] || {};
      return { ...r, dau_mau: s.dau_mau, wau_mau: s.wau_mau,
        suppressed: [...r.suppressed, ...(s.suppressed || [])] };
    });
    table($("breakdown"), [
      ["value", by], ["week", "week"], ["known", "known", "count"],
      ...CADENCES.map((c) => [`share_${c}`, c, "share"]),
      ["share_weekly_plus", "weekly or better", "share"],
      ["dau_mau", "DAU/MAU", "share"], ["wau_mau", "WAU/MAU", "share"],
    ], rows, (r) => r.value);
  }

  async function renderFunnel() {
    const weeks = $("weeks").value;
    const s = scope();
    $("funnel-scope").textContent = `(${s.label})`;
    const params = { weeks, by: s.by === "all" ? "" : s.by, value: s.value };
    const [arms, uplift] = await Promise.all([
      api(`/v1/operator/funnel${query(params)}`),
      api(`/v1/operator/funnel/uplift${query(params)}`),
    ]);
    C.funnel($("funnel-chart"), arms.rows.map((a) => ({
      arm: a.arm,
      values: [a.residents_shown, a.opened_residents, a.subscribed_residents, a.used_residents],
      labels: [fmt(a.residents_shown, "count"),
        `${fmt(a.opened_residents, "count")} · ${fmt(a.opened_rate, "share")}`,
        `${fmt(a.subscribed_residents, "count")} · ${fmt(a.subscribed_rate, "share")}`,
        `${fmt(a.used_residents, "count")} · ${fmt(a.used_rate, "share")}`],
    })), STAGES, STAGE_COLORS);
    table($("funnel"), [
      ["arm", "arm"], ["residents_shown", "shown", "count"],
      ["opened_residents", "opened", "count"], ["opened_rate", "open rate", "share"],
      ["subscribed_residents", "subscribed", "count"],
      ["subscribed_rate", "subscribe rate", "share"],
      ["used_residents", "used", "count"], ["used_rate", "use rate", "share"],
      ["shown_events", "shown (events)", "count"],
    ], arms.rows, (r) => r.arm);
    // an empty funnel says why (front ends must echo recommendation_id), not just "no data"
    const hint = $("funnel-hint");
    hint.textContent = arms.hint || "";
    if (arms.doc) {
      const a = document.createElement("a");
      a.id = "funnel-doc";
      a.href = arms.doc.href;
      a.textContent = arms.doc.title;
      hint.append(" See ", a, ".");
    }
    hint.hidden = !arms.hint;
    $("uplift-baseline").textContent = uplift.baseline || "the baseline";
    table($("uplift"), [
      ["arm", "arm"], ["stage", "stage"], ["rate", "rate", "share"],
      ["baseline_rate", "baseline rate", "share"], ["difference", "difference", "ci"],
      ["ci_low", "95% low", "ci"], ["ci_high", "95% high", "ci"],
      ["significant", "significant", "flag"],
    ], uplift.rows, (r) => `${r.arm}/${r.stage}`);
  }

  /* Outreach breaks down by neighbourhood and domain only; other choices show the city. */
  function outreachScope() {
    const s = scope();
    return ["neighbourhood", "domain"].includes(s.by) ? s :
      { by: "all", value: "", label: "whole city" };
  }

  async function renderOutreach() {
    const s = outreachScope();
    const weeks = Math.min(Number($("weeks").value) || 12, 12);
    $("outreach-scope").textContent = `(${s.label}, last ${weeks} weeks)`;
    const params = { by: s.by === "all" ? "" : s.by, value: s.value, weeks: String(weeks) };
    const [funnel, lift] = await Promise.all([
      api(`/v1/operator/outreach${query(params)}`),
      api(`/v1/operator/outreach/lift${query(params)}`),
    ]);
    const pick = (rows) => rows.filter((r) => r.dimension === s.by &&
      (s.by === "all" || !s.value || r.value === s.value));
    table($("outreach"), [
      ["week", "week"], ...(s.by === "all" ? [] : [["value", s.by]]),
      ["planned", "planned", "count"], ["sent", "sent", "count"],
      ["opened", "opened", "count"], ["open_rate", "open rate", "share"],
      ["converted", "converted", "count"], ["conversion_rate", "conversion", "share"],
      ["dismissed", "dismissed", "count"], ["contactable", "contactable", "count"],
      ["opted_out", "opted out", "count"], ["opt_out_rate", "opt-out rate", "share"],
    ], pick(funnel.rows), (r) => `${r.week}/${r.value}`);
    table($("outreach-lift"), [
      ["week", "week"], ...(s.by === "all" ? [] : [["value", s.by]]),
      ["nudged_residents", "nudged", "count"], ["nudged_share", "weekly+ share", "share"],
      ["holdout_residents", "holdout", "count"], ["holdout_share", "weekly+ share", "share"],
      ["difference", "difference", "ci"], ["ci_low", "95% low", "ci"],
      ["ci_high", "95% high", "ci"],
    ], pick(lift.rows), (r) => `${r.week}/${r.value}`);
  }

  function renderLive() {
    const live = summary.live;
    if (!live || !live.active) {
      table($("live"), [["what", "live counters"]], [{ what: (live && live.error) ||
        "unavailable" }]);
      return;
    }
    const rows = live.active.rows.filter((r) => r.dimension === "all").map((r) => ({
      what: `${r.period} ${r.bucket}`, active: r.active,
    }));
    live.rolling.rows.forEach((r) => rows.push({ what: `latest contact ${r.window}`,
      active: r.active }));
    table($("live"), [["what", "period"], ["active", "active residents", "count"]], rows,
      (r) => r.what);
  }

  async function renderCohorts() {
    const data = await api("/v1/operator/engagement/cohorts?months=12");
    const cohorts = [...new Set(data.rows.map((r) => r.cohort))];
    const maxM = Math.min(12, Math.max(0, ...data.rows.map((r) => r.months_since)) + 1);
    const node = $("cohorts");
    node.textContent = "";
    const head = node.createTHead().insertRow();
    ["cohort", "size", ...Array.from({ length: maxM }, (_, m) => `+${m}`)].forEach((t) => {
      const th = document.createElement("th");
      th.textContent = t;
      head.appendChild(th);
    });
    const body = node.createTBody();
    cohorts.forEach((cohort) => {
      const rows = data.rows.filter((r) => r.cohort === cohort);
      const tr = body.insertRow();
      tr.dataset.key = cohort;
      cell(tr, cohort, "text", "cohort", []);
      cell(tr, rows[0].cohort_size, "count", "cohort_size", rows[0].suppressed);
      for (let m = 0; m < maxM; m += 1) {
        const r = rows.find((x) => x.months_since === m);
        if (!r) { tr.insertCell(); continue; }
        // the API names the hidden value `retention`: a suppressed cell shows ◌, not the
        // "no residents" dash
        const td = cell(tr, r.retention, "share", "retention", r.suppressed);
        td.dataset.col = `m${m}`;
        if (r.retention !== null) td.style.setProperty("--heat", r.retention.toFixed(3));
      }
    });
  }

  function fillValues() {
    const by = $("by").value;
    const select = $("value");
    const previous = select.value;
    select.textContent = "";
    const city = document.createElement("option");
    city.value = "";
    city.textContent = "whole city";
    select.appendChild(city);
    (summary.dimensions[by] || []).forEach((v) => {
      const o = document.createElement("option");
      o.value = v;
      o.textContent = v;
      select.appendChild(o);
    });
    if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  }

  async function load() {
    status("loading…");
    try {
      summary = await api("/v1/operator/engagement");
      $("key-form").hidden = true;
      $("main").hidden = false;
      $("k").textContent = summary.small_cell_k;
      $("window-days").textContent = summary.rules.window_days;
      $("daily-days").textContent = summary.rules.daily_min_days;
      $("weekly-weeks").textContent = summary.rules.weekly_min_weeks;
      fillValues();
      renderHeadline();
      renderBackfill();
      renderLive();
      await Promise.all([renderCharts(), renderBreakdown(), renderFunnel(), renderCohorts(),
        renderOutreach()]);
      const src = summary.source;
      $("source").textContent = `Event log: ${fmt(src.events, "count")} events, ` +
        `${fmt(src.contacts, "count")} contacts, ${src.first_day || "–"} to ` +
        `${src.last_day || "–"}.`;
      document.body.dataset.ready = "true";
      status(`updated ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      if (err instanceof AuthError) {
        sessionStorage.removeItem(KEY);
        askKey(err.message);
      } else {
        status(String(err.message || err), true);
      }
    }
  }

  function askKey(message) {
    $("main").hidden = true;
    $("key-form").hidden = false;
    const e = $("key-error");
    e.hidden = !message;
    e.textContent = message || "";
    status("");
    $("key-input").focus();
  }

  async function downloadCsv(event, path, name, scoper) {
    event.preventDefault();
    const s = (scoper || scope)();
    const text = await api(`${path}${query({ by: s.by, value: s.value, format: "csv" })}`,
      true);
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    a.download = name;
    a.click();
    URL.revokeObjectURL(a.href);
  }

  function start() {
    takeKeyFromUrl();
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, $("key-input").value.trim());
      $("key-input").value = "";
      load();
    });
    $("by").addEventListener("change", () => { fillValues(); load(); });
    $("value").addEventListener("change", () => { document.body.dataset.ready = "false";
      Promise.all([renderCharts(), renderFunnel(), renderOutreach()]).then(() => {
        document.body.dataset.ready = "true";
      }); });
    $("weeks").addEventListener("change", () => { document.body.dataset.ready = "false";
      Promise.all([renderCharts(), renderFunnel(), renderOutreach()]).then(() => {
        document.body.dataset.ready = "true";
      }); });
    $("refresh").addEventListener("click", load);
    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      askKey("");
    });
    $("csv-cadence").addEventListener("click",
      (e) => downloadCsv(e, "/v1/operator/engagement/cadence", "cadence.csv"));
    $("csv-stickiness").addEventListener("click",
      (e) => downloadCsv(e, "/v1/operator/engagement/stickiness", "stickiness.csv"));
    $("csv-funnel").addEventListener("click",
      (e) => downloadCsv(e, "/v1/operator/funnel", "funnel.csv"));
    $("csv-outreach").addEventListener("click",
      (e) => downloadCsv(e, "/v1/operator/outreach", "outreach.csv", outreachScope));
    $("csv-outreach-lift").addEventListener("click",
      (e) => downloadCsv(e, "/v1/operator/outreach/lift", "outreach_lift.csv",
        outreachScope));
    if (key()) load(); else askKey("");
  }

  document.addEventListener("DOMContentLoaded", start);
})();
