// dbproxy web UI. No dependencies, no inline script (the page is served with a strict CSP).
// Every piece of data reaches the DOM through textContent or attributes, never as HTML markup.
"use strict";

(() => {
  const SVGNS = "http://www.w3.org/2000/svg";
  const params = new URLSearchParams(window.location.search);
  const POLL_MS = Math.max(1000, Number(params.get("interval")) || 3000);
  const HISTORY_POINTS = 1200; // one hour at 3 s
  const LS_TRACE = "dbproxy.traceUrlTemplate";
  const SS_TOP = "dbproxy.topQueries";

  // --- DOM helpers -------------------------------------------------------------------
  function append(el, children) {
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      if (Array.isArray(c)) append(el, c);
      else if (c instanceof Node) el.appendChild(c);
      else el.appendChild(document.createTextNode(String(c)));
    }
    return el;
  }
  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") el.textContent = String(v);
      else if (k === "onclick" || k === "onchange" || k === "onsubmit" || k === "oninput") {
        el.addEventListener(k.slice(2), v);
      } else el.setAttribute(k, v === true ? "" : String(v));
    }
    return el;
  }
  function h(tag, attrs, ...children) {
    return append(setAttrs(document.createElement(tag), attrs), children);
  }
  function s(tag, attrs, ...children) {
    return append(setAttrs(document.createElementNS(SVGNS, tag), attrs), children);
  }
  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  // --- formatting --------------------------------------------------------------------
  const nf = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  function fmtInt(n) {
    return n === null || n === undefined ? "–" : nf.format(n);
  }
  function fmtMs(v) {
    if (v === null || v === undefined || !Number.isFinite(v)) return "–";
    if (v === 0) return "0";
    if (v < 1) return v.toFixed(3);
    if (v < 10) return v.toFixed(2);
    if (v < 1000) return v.toFixed(1);
    return nf.format(v);
  }
  function fmtNum(v, digits) {
    if (v === null || v === undefined || !Number.isFinite(v)) return "–";
    return v.toLocaleString(undefined, { maximumFractionDigits: digits ?? 2 });
  }
  function fmtBound(ms) {
    return ms >= 1000 ? `${ms / 1000}s` : `${ms}`;
  }
  function fmtTime(t) {
    return new Date(t).toLocaleTimeString(undefined, { hour12: false });
  }
  function fmtIso(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, { hour12: false });
  }

  // --- fetching, live refresh ----------------------------------------------------------
  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (r.status === 401) {
      // HTTP off loopback with a token: the login page sets the UI's cookie
      window.location.assign("/login");
    }
    if (!r.ok) {
      let message = `${r.status} ${r.statusText}`;
      try {
        const body = await r.json();
        if (body && body.error) message = `${r.status}: ${body.error}`;
      } catch (_) {
        /* not JSON */
      }
      const err = new Error(message);
      err.status = r.status;
      throw err;
    }
    return r.json();
  }

  const live = { timer: null, paused: false, refresh: null, generation: 0 };
  const statusEl = () => document.getElementById("status");
  function showError(message) {
    const el = document.getElementById("error");
    if (!message) {
      el.hidden = true;
      el.textContent = "";
    } else {
      el.hidden = false;
      el.textContent = message;
    }
  }
  async function tick(generation) {
    if (generation !== live.generation) return;
    if (!live.refresh) {
      statusEl().textContent = "Nothing to refresh on this page";
      return;
    }
    try {
      await live.refresh(generation);
      if (generation !== live.generation) return;
      showError(null);
      statusEl().textContent = live.paused
        ? `Paused · updated ${fmtTime(Date.now())}`
        : `Live · updated ${fmtTime(Date.now())} · every ${POLL_MS / 1000} s`;
    } catch (err) {
      if (generation !== live.generation) return;
      showError(`Could not load data: ${err.message}`);
      statusEl().textContent = "Refresh failed; retrying";
    }
    if (generation === live.generation && !live.paused) {
      live.timer = window.setTimeout(() => tick(generation), POLL_MS);
    }
  }
  function startView(refresh) {
    window.clearTimeout(live.timer);
    live.generation += 1;
    live.refresh = refresh;
    return tick(live.generation);
  }
  function setupPause() {
    const btn = document.getElementById("pause");
    btn.addEventListener("click", () => {
      live.paused = !live.paused;
      btn.setAttribute("aria-pressed", String(live.paused));
      btn.textContent = live.paused ? "Resume live refresh" : "Pause live refresh";
      window.clearTimeout(live.timer);
      if (!live.paused) tick(live.generation);
      else statusEl().textContent = "Paused";
    });
  }

  // --- trace links -------------------------------------------------------------------
  let serverTraceTemplate = null;
  function traceTemplate() {
    return window.localStorage.getItem(LS_TRACE) || serverTraceTemplate || "";
  }
  function traceUrl(traceId, spanId) {
    const tpl = traceTemplate();
    if (!tpl) return null;
    const raw = tpl
      .split("{trace_id}").join(encodeURIComponent(traceId))
      .split("{span_id}").join(encodeURIComponent(spanId || ""));
    try {
      const url = new URL(raw, window.location.href);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (_) {
      return null;
    }
  }

  // --- SQL highlighting (normalized text only) -------------------------------------------
  const KEYWORDS = new Set((
    "SELECT FROM WHERE AND OR NOT IN IS NULL AS ON JOIN LEFT RIGHT INNER OUTER FULL CROSS " +
    "NATURAL GROUP BY ORDER HAVING LIMIT OFFSET FETCH FIRST NEXT ROWS ROW ONLY INSERT INTO " +
    "VALUES UPDATE SET DELETE RETURNING WITH RECURSIVE UNION ALL INTERSECT EXCEPT DISTINCT " +
    "CASE WHEN THEN ELSE END BEGIN COMMIT ROLLBACK SAVEPOINT RELEASE EXISTS BETWEEN LIKE ILIKE " +
    "SIMILAR ASC DESC NULLS CREATE TABLE DROP ALTER INDEX PRIMARY KEY FOREIGN REFERENCES " +
    "DEFAULT TRUE FALSE CAST OVER PARTITION WINDOW FOR SHARE NOWAIT SKIP LOCKED CONFLICT DO " +
    "NOTHING USING LATERAL ANY SOME TRUNCATE COPY EXPLAIN ANALYZE TRANSACTION ISOLATION LEVEL " +
    "READ WRITE COMMITTED SERIALIZABLE REPEATABLE START SHOW RESET LISTEN NOTIFY PREPARE " +
    "EXECUTE DEALLOCATE VACUUM CURSOR DECLARE CLOSE INTERVAL FILTER VIEW SEQUENCE IF " +
    "TEMPORARY TEMP UNIQUE CHECK CONSTRAINT COLUMN ADD RENAME TO GRANT REVOKE CALL LOCK"
  ).split(" "));
  const TOKEN = /(--[^\n]*|\/\*[\s\S]*?\*\/)|('(?:[^']|'')*')|("(?:[^"]|"")*")|(\$\d+)|(\b\d+(?:\.\d+)?\b)|([A-Za-z_][A-Za-z0-9_$]*)|(\s+|[^\s])/g;
  function highlightSql(text) {
    const out = [];
    for (const m of text.matchAll(TOKEN)) {
      const [tok, comment, str, quoted, param, num, word] = m;
      let cls = null;
      if (comment) cls = "comment";
      else if (str) cls = "str";
      else if (quoted) cls = null;
      else if (param) cls = "param";
      else if (num) cls = "num";
      else if (word && KEYWORDS.has(word.toUpperCase())) cls = "kw";
      out.push(cls ? h("span", { class: cls, text: tok }) : document.createTextNode(tok));
    }
    return h("pre", { class: "sql" }, h("code", {}, out));
  }

  // --- charts: hand-drawn SVG ----------------------------------------------------------
  const W = 640;
  const H = 220;
  const M = { left: 58, right: 14, top: 12, bottom: 30 };

  function niceTicks(max, count) {
    if (!(max > 0)) return [0, 1];
    const rough = max / count;
    const pow = 10 ** Math.floor(Math.log10(rough));
    const step = [1, 2, 2.5, 5, 10].map((f) => f * pow).find((st) => st >= rough) || rough;
    const ticks = [];
    for (let v = 0; v <= max + step * 0.001; v += step) ticks.push(Number(v.toPrecision(12)));
    if (ticks[ticks.length - 1] < max) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
    return ticks;
  }

  function figure(id, caption, svg, extra) {
    return h("figure", { class: "chart", id }, h("figcaption", { id: `${id}-title`, text: caption }), svg, extra);
  }

  // series: [{name, cls, points: [[t, value|null], ...]}]
  function lineChart(id, caption, series, unit, fmt) {
    const pw = W - M.left - M.right;
    const ph = H - M.top - M.bottom;
    const all = series.flatMap((se) => se.points.filter((p) => p[1] !== null && Number.isFinite(p[1])));
    const ts = series.flatMap((se) => se.points.map((p) => p[0]));
    let t0 = Math.min(...ts);
    let t1 = Math.max(...ts);
    if (!Number.isFinite(t0)) {
      t0 = Date.now() - POLL_MS;
      t1 = Date.now();
    }
    if (t1 - t0 < POLL_MS) t0 = t1 - POLL_MS;
    const ticks = niceTicks(Math.max(0, ...all.map((p) => p[1])), 4);
    const ymax = ticks[ticks.length - 1] || 1;
    const x = (t) => M.left + ((t - t0) / (t1 - t0)) * pw;
    const y = (v) => M.top + ph - (v / ymax) * ph;
    const latest = series.map((se) => {
      const last = [...se.points].reverse().find((p) => p[1] !== null);
      return `${se.name} ${last ? fmt(last[1]) : "–"} ${unit}`;
    });
    const svg = s("svg", {
      viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": `${id}-title ${id}-desc`,
      preserveAspectRatio: "xMidYMid meet",
    }, s("desc", { id: `${id}-desc`, text: all.length ? `Latest: ${latest.join(", ")}.` : "No data yet." }));
    for (const tv of ticks) {
      svg.appendChild(s("line", { class: "grid", x1: M.left, x2: W - M.right, y1: y(tv), y2: y(tv) }));
      svg.appendChild(s("text", { x: M.left - 6, y: y(tv) + 4, "text-anchor": "end", text: fmtNum(tv, 3) }));
    }
    for (let i = 0; i <= 3; i++) {
      const t = t0 + ((t1 - t0) * i) / 3;
      svg.appendChild(s("text", {
        x: x(t), y: H - 8, "text-anchor": i === 0 ? "start" : i === 3 ? "end" : "middle", text: fmtTime(t),
      }));
    }
    svg.appendChild(s("line", { class: "axis", x1: M.left, x2: W - M.right, y1: y(0), y2: y(0) }));
    for (const se of series) {
      let d = "";
      let pen = false;
      for (const [t, v] of se.points) {
        if (v === null || !Number.isFinite(v)) {
          pen = false;
          continue;
        }
        d += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
      }
      if (d) svg.appendChild(s("path", { class: `line ${se.cls}`, d }));
      const pts = se.points.filter((p) => p[1] !== null && Number.isFinite(p[1]));
      // Markers where a line has too few points to be visible.
      const marked = pts.length <= 3 ? pts : pts.slice(-1);
      for (const [t, v] of marked) {
        svg.appendChild(s("circle", { class: se.cls, cx: x(t), cy: y(v), r: 3 },
          s("title", { text: `${se.name} ${fmt(v)} ${unit} at ${fmtTime(t)}` })));
      }
    }
    if (!all.length) {
      const points = Math.max(0, ...series.map((se) => se.points.length));
      svg.appendChild(s("text", {
        class: "empty-chart", x: M.left + pw / 2, y: M.top + ph / 2, "text-anchor": "middle",
        text: points ? "No calls in these intervals" : "Collecting: the first interval appears after the next poll",
      }));
    }
    const legend = h("ul", { class: "legend" }, series.map((se) => h("li", { class: se.cls, text: se.name })));
    return figure(id, caption, svg, legend);
  }

  // counts[i]: observations <= bounds[i] (the last: above the last bound)
  function histogramChart(id, caption, bounds, counts, exemplars) {
    const pw = W - M.left - M.right;
    const ph = H - M.top - M.bottom;
    const n = counts.length;
    const bw = pw / n;
    const ticks = niceTicks(Math.max(0, ...counts), 4);
    const ymax = ticks[ticks.length - 1] || 1;
    const y = (v) => M.top + ph - (v / ymax) * ph;
    const label = (i) => (i < bounds.length ? `≤ ${fmtBound(bounds[i])}` : `> ${fmtBound(bounds[bounds.length - 1])}`);
    const svg = s("svg", {
      viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": `${id}-title ${id}-desc`,
    }, s("desc", {
      id: `${id}-desc`,
      text: counts.map((c, i) => `${label(i)} ms: ${c}`).filter((_, i) => counts[i] > 0).join("; ") || "No calls.",
    }));
    for (const tv of ticks) {
      svg.appendChild(s("line", { class: "grid", x1: M.left, x2: W - M.right, y1: y(tv), y2: y(tv) }));
      svg.appendChild(s("text", { x: M.left - 6, y: y(tv) + 4, "text-anchor": "end", text: fmtInt(tv) }));
    }
    counts.forEach((c, i) => {
      const x0 = M.left + i * bw;
      if (c > 0) {
        const top = y(c);
        svg.appendChild(s("rect", {
          class: "bar", x: (x0 + 1.5).toFixed(1), y: top.toFixed(1), width: (bw - 3).toFixed(1),
          height: Math.max(1, y(0) - top).toFixed(1),
        }, s("title", { text: `${label(i)} ms: ${fmtInt(c)} calls` })));
      }
      const ex = exemplars && exemplars[i];
      if (ex) {
        svg.appendChild(s("circle", { class: "exemplar", cx: x0 + bw / 2, cy: (c > 0 ? y(c) : y(0)) - 7, r: 4 },
          s("title", { text: `traced sample ${fmtMs(ex.value_ms)} ms, trace ${ex.trace_id}` })));
      }
      const short = i < bounds.length ? fmtBound(bounds[i]) : `>${fmtBound(bounds[bounds.length - 1])}`;
      svg.appendChild(s("text", { x: x0 + bw / 2, y: H - 14, "text-anchor": "middle", text: short }));
    });
    svg.appendChild(s("text", { x: W - M.right, y: H - 1, "text-anchor": "end", text: "bucket upper bound (ms)" }));
    svg.appendChild(s("line", { class: "axis", x1: M.left, x2: W - M.right, y1: y(0), y2: y(0) }));
    const data = h("details", { class: "data" }, h("summary", { text: "Bucket counts as a table" }),
      h("table", {},
        h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "Latency bucket (ms)" }), h("th", { scope: "col", class: "n", text: "Calls" }))),
        h("tbody", {}, counts.map((c, i) => h("tr", {}, h("td", { text: label(i) }), h("td", { class: "n", text: fmtInt(c) }))))));
    const legend = exemplars && exemplars.some(Boolean)
      ? h("ul", { class: "legend" }, h("li", { class: "ex", text: "latest traced sample in the bucket" }))
      : null;
    return figure(id, caption, svg, [legend, data]);
  }

  function quantile(bounds, counts, q) {
    const total = counts.reduce((a, b) => a + b, 0);
    if (!total) return null;
    const rank = q * total;
    let seen = 0;
    let lower = 0;
    for (let i = 0; i < counts.length; i++) {
      const n = counts[i];
      const upper = i < bounds.length ? bounds[i] : bounds[bounds.length - 1];
      if (n && seen + n >= rank) {
        if (i >= bounds.length) return bounds[bounds.length - 1];
        return lower + ((upper - lower) * (rank - seen)) / n;
      }
      seen += n;
      lower = upper;
    }
    return bounds[bounds.length - 1];
  }

  // --- navigation ------------------------------------------------------------------------
  const main = () => document.getElementById("main");
  function markNav(name) {
    for (const a of document.querySelectorAll("nav a[data-nav]")) {
      if (a.dataset.nav === name) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
  }
  function route() {
    const hash = window.location.hash || "#/";
    const m = hash.match(/^#\/query\/([^/?]+)$/);
    showError(null);
    if (m) return viewQuery(decodeURIComponent(m[1]));
    if (hash === "#/connections") return viewConnections();
    if (hash === "#/load") return viewLoad();
    if (hash === "#/findings") return viewFindings();
    if (hash === "#/settings") return viewSettings();
    return viewTop();
  }

  // --- top queries ------------------------------------------------------------------------
  const SORTS = [
    ["calls", "Calls"], ["total_time", "Total ms"], ["mean", "Mean ms"], ["p95", "p95 ms"],
    ["p99", "p99 ms"], ["rows_per_call", "Rows / call"], ["errors", "Errors"],
  ];
  function loadTopState() {
    const defaults = { sort: "total_time", database: "", user: "", kind: "", attribution: "" };
    try {
      return { ...defaults, ...JSON.parse(window.sessionStorage.getItem(SS_TOP) || "{}") };
    } catch (_) {
      return defaults;
    }
  }
  function saveTopState(state) {
    window.sessionStorage.setItem(SS_TOP, JSON.stringify(state));
  }
  function fillSelect(select, values, current, allLabel) {
    const wanted = [""].concat([...new Set(values)].sort());
    if (current && !wanted.includes(current)) wanted.push(current);
    const have = [...select.options].map((o) => o.value);
    if (have.join("\u0000") !== wanted.join("\u0000")) {
      clear(select);
      for (const v of wanted) select.appendChild(h("option", { value: v, text: v === "" ? allLabel : v }));
    }
    select.value = current;
  }
  function attributionValues(row) {
    const out = row.applications.map((a) => `application=${a.value}`);
    for (const [tag, values] of Object.entries(row.tags)) {
      for (const v of values) out.push(`${tag}=${v.value}`);
    }
    return out;
  }

  function viewTop() {
    markNav("top");
    document.title = "Top queries · dbproxy";
    const state = loadTopState();
    const selects = {
      database: h("select", { id: "f-database", name: "database" }),
      user: h("select", { id: "f-user", name: "user" }),
      kind: h("select", { id: "f-kind", name: "kind" }),
      attribution: h("select", { id: "f-attribution", name: "attribution" }),
    };
    const labels = { database: "Database", user: "User", kind: "Kind", attribution: "Application or tag" };
    const form = h("form", { class: "filters", "aria-label": "Filters", onsubmit: (e) => e.preventDefault() },
      Object.entries(selects).map(([k, el]) => h("label", { for: el.id }, labels[k], el)));
    for (const [k, el] of Object.entries(selects)) {
      el.addEventListener("change", () => {
        state[k] = el.value;
        saveTopState(state);
        startView(refresh);
      });
    }
    const caption = h("caption", {});
    const headRow = h("tr", {});
    headRow.appendChild(h("th", { scope: "col", text: "Query" }));
    headRow.appendChild(h("th", { scope: "col", text: "Database" }));
    headRow.appendChild(h("th", { scope: "col", text: "User" }));
    const sortHeaders = {};
    for (const [key, label] of SORTS) {
      const th = h("th", { scope: "col", class: "n", "data-sort": key },
        h("button", { type: "button", class: "sort", onclick: () => {
          state.sort = key;
          saveTopState(state);
          startView(refresh);
        } }, label));
      sortHeaders[key] = th;
      headRow.appendChild(th);
    }
    const tbody = h("tbody", {});
    const table = h("table", { id: "queries" }, caption, h("thead", {}, headRow), tbody);
    clear(main()).appendChild(h("section", { "aria-labelledby": "top-h" },
      h("h1", { id: "top-h", text: "Top queries" }),
      h("p", { class: "note", text: "Per normalized statement, database and user, since the statistics started. Sort with the column buttons (largest first); the kind and application/tag filters apply to the rows the server returned." }),
      form, h("div", { class: "table-wrap" }, table)));

    async function refresh(generation) {
      const q = new URLSearchParams({ sort: state.sort, limit: "1000" });
      if (state.database) q.set("database", state.database);
      if (state.user) q.set("user", state.user);
      // Filter choices come from the unfiltered list (a second request only when filtered).
      const filtered = Boolean(state.database || state.user);
      const [data, everything] = await Promise.all([
        getJSON(`/api/queries?${q}`),
        filtered ? getJSON(`/api/queries?sort=${state.sort}&limit=1000`) : null,
      ]);
      if (generation !== live.generation) return;
      const all = (everything || data).queries;
      fillSelect(selects.database, all.map((r) => r.database), state.database, "All databases");
      fillSelect(selects.user, all.map((r) => r.user), state.user, "All users");
      fillSelect(selects.kind, all.map((r) => r.kind), state.kind, "All kinds");
      fillSelect(selects.attribution, all.flatMap(attributionValues), state.attribution, "Any");
      const rows = data.queries.filter((r) => (!state.kind || r.kind === state.kind)
        && (!state.attribution || attributionValues(r).includes(state.attribution)));
      for (const [key, th] of Object.entries(sortHeaders)) {
        th.setAttribute("aria-sort", key === state.sort ? "descending" : "none");
      }
      const sortLabel = SORTS.find(([k]) => k === state.sort)[1];
      caption.textContent = `${rows.length} of ${data.total} rows, sorted by ${sortLabel} (largest first). Statistics since ${fmtIso(data.since)}.`;
      clear(tbody);
      if (!rows.length) {
        tbody.appendChild(h("tr", {}, h("td", { colspan: 3 + SORTS.length, class: "empty",
          text: data.total ? "No query matches these filters." : "No statements observed yet: connect through the proxy and run some queries." })));
        return;
      }
      for (const r of rows) {
        const href = `#/query/${encodeURIComponent(r.fingerprint)}`;
        tbody.appendChild(h("tr", { "data-fingerprint": r.fingerprint },
          h("td", { class: "q" },
            h("a", { href, title: r.query }, h("code", { text: r.query })),
            h("span", { class: "meta" }, r.summary || r.operation, h("span", { class: "badge", text: r.kind }),
              h("span", { class: "fp", text: r.fingerprint }))),
          h("td", { text: r.database }),
          h("td", { text: r.user }),
          h("td", { class: "n", text: fmtInt(r.calls) }),
          h("td", { class: "n", text: fmtMs(r.total_time_ms) }),
          h("td", { class: "n", text: fmtMs(r.mean_time_ms) }),
          h("td", { class: "n", text: fmtMs(r.p95_ms) }),
          h("td", { class: "n", text: fmtMs(r.p99_ms) }),
          h("td", { class: "n", text: fmtNum(r.rows_per_call) }),
          h("td", { class: r.error_count ? "n err" : "n", text: fmtInt(r.error_count) })));
      }
    }
    return startView(refresh);
  }

  // --- query page --------------------------------------------------------------------------
  const SQLSTATE_CLASSES = {
    "08": "connection exception", "0A": "feature not supported", 21: "cardinality violation",
    22: "data exception", 23: "integrity constraint violation", 25: "invalid transaction state",
    28: "invalid authorization", 40: "transaction rollback", 42: "syntax error or access rule violation",
    53: "insufficient resources", 54: "program limit exceeded", 55: "object not in prerequisite state",
    57: "operator intervention", 58: "system error", P0: "PL/pgSQL error", XX: "internal error",
  };

  function combine(rows) {
    const first = rows[0];
    const bounds = first.histogram ? first.histogram.bounds_ms : [];
    const counts = bounds.length ? new Array(bounds.length + 1).fill(0) : [];
    const exemplars = [];
    const errors = {};
    let calls = 0;
    let rowsN = 0;
    let total = 0;
    for (const r of rows) {
      calls += r.calls;
      rowsN += r.rows;
      total += r.total_time_ms || 0;
      for (const [code, n] of Object.entries(r.errors)) errors[code] = (errors[code] || 0) + n;
      if (r.histogram) {
        r.histogram.counts.forEach((c, i) => { counts[i] += c; });
        r.histogram.exemplars.forEach((e, i) => {
          if (e) exemplars.push({ ...e, bucket: i, database: r.database, user: r.user });
        });
      }
    }
    const errorCount = Object.values(errors).reduce((a, b) => a + b, 0);
    return { bounds, counts, exemplars, errors, errorCount, calls, rows: rowsN, total };
  }

  function statBox(label, value) {
    return h("div", {}, h("dt", { text: label }), h("dd", { text: value }));
  }

  function viewQuery(fp) {
    markNav(null);
    document.title = "Query · dbproxy";
    const openedAt = Date.now();
    const history = []; // {t, calls, rows, errors, counts}
    const root = h("article", { "aria-labelledby": "q-h" });
    clear(main()).appendChild(root);
    let built = null;

    function build(c, rows) {
      const r0 = rows[0];
      const parts = {
        stats: h("dl", { class: "stats" }),
        latency: h("div", {}),
        hist: h("div", {}),
        rates: h("div", { class: "charts" }),
        perRow: h("tbody", {}),
        errors: h("div", {}),
        samples: h("div", {}),
        attribution: h("div", { class: "two" }),
        plan: h("div", {}),
      };
      document.title = `${r0.summary || fp} · dbproxy`;
      append(clear(root), [
        h("p", {}, h("a", { href: "#/", text: "← Top queries" })),
        h("h1", { id: "q-h" }, r0.summary || r0.operation || "Query", " ", h("code", { class: "fp", text: fp }),
          h("span", { class: "badge", text: r0.kind })),
        h("p", { class: "muted" }, `Operation ${r0.operation || "?"}`,
          r0.tables.length ? ` · tables: ${r0.tables.join(", ")}` : " · no tables"),
        h("section", { "aria-labelledby": "sql-h" }, h("h2", { id: "sql-h", text: "Normalized SQL" }), highlightSql(r0.query)),
        parts.stats,
        h("section", { "aria-labelledby": "time-h" },
          h("h2", { id: "time-h", text: "Over time" }),
          h("p", { class: "notice", text: `The server keeps no history yet: these charts are built by this browser tab from what it polled every ${POLL_MS / 1000} s since ${fmtTime(openedAt)}. Each point covers one polling interval; reloading the page starts over. Percentiles are estimated inside the histogram's buckets, as PromQL's histogram_quantile does.` }),
          h("div", { class: "charts" }, parts.latency, parts.hist),
          parts.rates),
        h("section", { "aria-labelledby": "rows-h" },
          h("h2", { id: "rows-h", text: "By database and user" }),
          h("div", { class: "table-wrap" }, h("table", { id: "per-row" },
            h("thead", {}, h("tr", {}, ["Database", "User", "Calls", "Total ms", "Mean ms", "p50 ms", "p95 ms", "p99 ms", "Rows", "Errors", "Rolled back", "First seen", "Last seen"]
              .map((t, i) => h("th", { scope: "col", class: i >= 2 && i <= 10 ? "n" : null, text: t })))),
            parts.perRow))),
        h("section", { "aria-labelledby": "err-h" }, h("h2", { id: "err-h", text: "Errors by SQLSTATE" }), parts.errors),
        h("section", { "aria-labelledby": "ex-h" }, h("h2", { id: "ex-h", text: "Slowest traced samples" }), parts.samples),
        h("section", { "aria-labelledby": "attr-h" }, h("h2", { id: "attr-h", text: "Applications and tags" }), parts.attribution),
        h("section", { "aria-labelledby": "plan-h" }, h("h2", { id: "plan-h", text: "Plans, rows scanned and server statistics" }), parts.plan),
      ]);
      return parts;
    }

    function intervalSeries() {
      const lat = { p50: [], p95: [], p99: [] };
      const calls = [];
      const rowsS = [];
      const errs = [];
      for (let i = 1; i < history.length; i++) {
        const a = history[i - 1];
        const b = history[i];
        const dt = (b.t - a.t) / 1000;
        const delta = b.counts.map((v, k) => v - (a.counts[k] || 0));
        const has = delta.some((v) => v > 0);
        for (const [name, q] of [["p50", 0.5], ["p95", 0.95], ["p99", 0.99]]) {
          lat[name].push([b.t, has ? quantile(b.bounds, delta, q) : null]);
        }
        calls.push([b.t, (b.calls - a.calls) / dt]);
        rowsS.push([b.t, (b.rows - a.rows) / dt]);
        errs.push([b.t, (b.errors - a.errors) / dt]);
      }
      return { lat, calls, rowsS, errs };
    }

    let plans = null; // GET …/plans, when the side connection has taken some

    function render(c, rows) {
      if (!built) built = build(c, rows);
      const p = built;
      const mean = c.calls ? c.total / c.calls : null;
      const mins = rows.map((r) => r.min_time_ms).filter((v) => v !== null);
      const maxs = rows.map((r) => r.max_time_ms).filter((v) => v !== null);
      clear(p.stats);
      append(p.stats, [
        statBox("Calls", fmtInt(c.calls)),
        statBox("Total ms", fmtMs(c.total)),
        statBox("Mean ms", fmtMs(mean)),
        statBox("Min ms", fmtMs(mins.length ? Math.min(...mins) : null)),
        statBox("Max ms", fmtMs(maxs.length ? Math.max(...maxs) : null)),
        statBox("p50 ms", fmtMs(quantile(c.bounds, c.counts, 0.5))),
        statBox("p95 ms", fmtMs(quantile(c.bounds, c.counts, 0.95))),
        statBox("p99 ms", fmtMs(quantile(c.bounds, c.counts, 0.99))),
        statBox("Rows", fmtInt(c.rows)),
        statBox("Rows / call", fmtNum(c.calls ? c.rows / c.calls : null)),
        statBox("Errors", fmtInt(c.errorCount)),
        statBox("Rolled back", fmtInt(rows.reduce((a, r) => a + r.rolled_back, 0))),
      ]);

      const series = intervalSeries();
      clear(p.latency).appendChild(lineChart("chart-latency", "Latency percentiles per interval (ms)", [
        { name: "p50", cls: "s1", points: series.lat.p50 },
        { name: "p95", cls: "s2", points: series.lat.p95 },
        { name: "p99", cls: "s3", points: series.lat.p99 },
      ], "ms", fmtMs));
      clear(p.hist).appendChild(histogramChart("chart-histogram", "Latency histogram (calls per bucket, since the statistics started)",
        c.bounds, c.counts, c.counts.map((_, i) => {
          const inBucket = c.exemplars.filter((e) => e.bucket === i);
          return inBucket.length ? inBucket.reduce((a, b) => (a.at > b.at ? a : b)) : null;
        })));
      clear(p.rates);
      append(p.rates, [
        lineChart("chart-calls", "Calls and errors per second", [{ name: "calls/s", cls: "s1", points: series.calls },
          { name: "errors/s", cls: "s3", points: series.errs }], "/s", (v) => fmtNum(v, 2)),
        lineChart("chart-rows", "Rows per second", [{ name: "rows/s", cls: "s4", points: series.rowsS }], "/s", (v) => fmtNum(v, 1)),
      ]);

      clear(p.perRow);
      for (const r of rows) {
        p.perRow.appendChild(h("tr", {},
          h("td", { text: r.database }), h("td", { text: r.user }),
          h("td", { class: "n", text: fmtInt(r.calls) }), h("td", { class: "n", text: fmtMs(r.total_time_ms) }),
          h("td", { class: "n", text: fmtMs(r.mean_time_ms) }), h("td", { class: "n", text: fmtMs(r.p50_ms) }),
          h("td", { class: "n", text: fmtMs(r.p95_ms) }), h("td", { class: "n", text: fmtMs(r.p99_ms) }),
          h("td", { class: "n", text: fmtInt(r.rows) }), h("td", { class: r.error_count ? "n err" : "n", text: fmtInt(r.error_count) }),
          h("td", { class: "n", text: fmtInt(r.rolled_back) }),
          h("td", { text: fmtIso(r.first_seen) }), h("td", { text: fmtIso(r.last_seen) })));
      }

      clear(p.errors);
      const codes = Object.entries(c.errors).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
      if (!codes.length) {
        p.errors.appendChild(h("p", { class: "muted", text: "No errors." }));
      } else {
        const max = Math.max(...codes.map(([, n]) => n));
        p.errors.appendChild(h("div", { class: "table-wrap" }, h("table", { id: "errors" },
          h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "SQLSTATE" }), h("th", { scope: "col", text: "Class" }),
            h("th", { scope: "col", class: "n", text: "Count" }), h("th", { scope: "col", text: "Share" }))),
          h("tbody", {}, codes.map(([code, n]) => h("tr", {},
            h("td", {}, h("code", { text: code })),
            h("td", { text: SQLSTATE_CLASSES[code.slice(0, 2)] || `class ${code.slice(0, 2)}` }),
            h("td", { class: "n err", text: fmtInt(n) }),
            h("td", {}, s("svg", { viewBox: "0 0 200 12", width: 200, height: 12, role: "img", "aria-label": `${n} of ${c.errorCount}` },
              s("rect", { class: "bar-err", x: 0, y: 1, height: 10, width: Math.max(1, (n / max) * 200).toFixed(1) })))))))));
      }

      clear(p.samples);
      const samples = [...c.exemplars].sort((a, b) => b.value_ms - a.value_ms).slice(0, 20);
      if (!samples.length) {
        p.samples.appendChild(h("p", { class: "muted", text: "No traced samples for this query. With tracing on (--otlp-endpoint) and a traceparent in the statement's sqlcommenter comment, dbproxy keeps the latest traced call of each latency bucket here." }));
      } else {
        const tpl = traceTemplate();
        p.samples.appendChild(h("div", { class: "table-wrap" }, h("table", { id: "samples" },
          h("caption", { text: tpl ? "Latest traced call per latency bucket, slowest first. Trace ids link to your trace UI." : "Latest traced call per latency bucket, slowest first. Set a trace UI link under Settings to make trace ids clickable." }),
          h("thead", {}, h("tr", {}, ["Duration ms", "Bucket", "When", "Database", "User", "Trace id", "Span id"].map((t, i) => h("th", { scope: "col", class: i === 0 ? "n" : null, text: t })))),
          h("tbody", {}, samples.map((e) => {
            const url = traceUrl(e.trace_id, e.span_id);
            const bucket = e.bucket < c.bounds.length ? `≤ ${fmtBound(c.bounds[e.bucket])} ms` : `> ${fmtBound(c.bounds[c.bounds.length - 1])} ms`;
            return h("tr", {},
              h("td", { class: "n", text: fmtMs(e.value_ms) }), h("td", { text: bucket }), h("td", { text: fmtIso(e.at) }),
              h("td", { text: e.database }), h("td", { text: e.user }),
              h("td", {}, url ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, h("code", { text: e.trace_id }))
                : h("code", { text: e.trace_id })),
              h("td", {}, h("code", { text: e.span_id })));
          })))));
      }

      renderInspect(p.plan, rows, plans);

      clear(p.attribution);
      const lists = [["application_name", rows.flatMap((r) => r.applications)]];
      const tagNames = [...new Set(rows.flatMap((r) => Object.keys(r.tags)))].sort();
      for (const t of tagNames) lists.push([`tag ${t}`, rows.flatMap((r) => r.tags[t] || [])]);
      for (const [title, values] of lists) {
        const merged = {};
        for (const v of values) merged[v.value] = (merged[v.value] || 0) + v.calls;
        const entries = Object.entries(merged).sort((a, b) => b[1] - a[1]);
        p.attribution.appendChild(h("div", {}, h("h3", { text: title }), entries.length
          ? h("div", { class: "table-wrap" }, h("table", {},
            h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "Value" }), h("th", { scope: "col", class: "n", text: "Calls" }))),
            h("tbody", {}, entries.map(([v, n]) => h("tr", {}, v ? h("td", { text: v }) : h("td", { class: "muted", text: "(empty)" }), h("td", { class: "n", text: fmtInt(n) }))))))
          : h("p", { class: "muted", text: "None recorded." })));
      }
    }

    async function refresh(generation) {
      let data;
      try {
        data = await getJSON(`/api/queries/${encodeURIComponent(fp)}`);
      } catch (err) {
        if (err.status === 404 && generation === live.generation) {
          built = null;
          append(clear(root), [h("h1", { id: "q-h", text: "Query not found" }),
            h("p", {}, "No statistics for fingerprint ", h("code", { text: fp }),
              " (the statistics may have been reset). ", h("a", { href: "#/", text: "Back to top queries" }))]);
          return;
        }
        throw err;
      }
      if (generation !== live.generation) return;
      plans = null;
      if (data.queries.some((r) => r.plan)) {
        try {
          plans = await getJSON(`/api/queries/${encodeURIComponent(fp)}/plans`);
        } catch (err) {
          if (err.status !== 404) throw err;
        }
        if (generation !== live.generation) return;
      }
      const c = combine(data.queries);
      const last = history[history.length - 1];
      if (last && (c.calls < last.calls || c.counts.some((v, i) => v < last.counts[i]))) history.length = 0; // reset
      history.push({ t: Date.now(), calls: c.calls, rows: c.rows, errors: c.errorCount, counts: c.counts, bounds: c.bounds });
      if (history.length > HISTORY_POINTS) history.shift();
      render(c, data.queries);
    }
    return startView(refresh);
  }

  // What the side connection (--inspect-dsn) learned: sampled rows scanned, generic plans,
  // pg_stat_statements numbers and the slowest recent executions.
  function renderInspect(el, rows, plans) {
    clear(el);
    if (!rows.some((r) => "plan" in r)) {
      el.appendChild(h("p", { class: "muted", text: "Off: start dbproxy with an inspect DSN (DBPROXY_INSPECT_DSN) to collect generic plans, pg_stat_statements numbers and slow samples; --sample-analyze RATE adds rows scanned." }));
      return;
    }
    const fmtOr = (v, f) => (v === null || v === undefined ? "—" : f(v));
    el.appendChild(h("div", { class: "table-wrap" }, h("table", { id: "inspect" },
      h("caption", { text: "Rows scanned: mean of the recent sampled EXPLAIN ANALYZE executions. Server: pg_stat_statements rows with this fingerprint (server execution time, without network and the proxy)." }),
      h("thead", {}, h("tr", {}, ["Database", "User", "Rows scanned / call", "Scanned ÷ returned", "Samples", "Plan", "Plan changes", "Server mean ms", "Server calls", "Shared hit", "Shared read", "Temp blocks", "WAL bytes"]
        .map((t, i) => h("th", { scope: "col", class: i >= 2 && i !== 5 ? "n" : null, text: t })))),
      h("tbody", {}, rows.map((r) => {
        const sv = r.server;
        return h("tr", {},
          h("td", { text: r.database }), h("td", { text: r.user }),
          h("td", { class: "n", text: fmtOr(r.rows_scanned_per_call, (v) => fmtNum(v, 1)) }),
          h("td", { class: "n", text: fmtOr(r.rows_scanned_per_returned, (v) => fmtNum(v, 1)) }),
          h("td", { class: "n", text: fmtInt(r.rows_scanned_samples || 0) }),
          h("td", {}, r.plan ? h("code", { text: r.plan.summary }) : h("span", { class: "muted", text: "none yet" })),
          h("td", { class: r.plan_changes ? "n err" : "n", text: fmtInt(r.plan_changes || 0) }),
          h("td", { class: "n", text: sv ? fmtMs(sv.mean_exec_time_ms) : "—" }),
          h("td", { class: "n", text: sv ? fmtInt(sv.calls) : "—" }),
          h("td", { class: "n", text: sv ? fmtInt(sv.shared_blks_hit) : "—" }),
          h("td", { class: "n", text: sv ? fmtInt(sv.shared_blks_read) : "—" }),
          h("td", { class: "n", text: sv ? fmtInt(sv.temp_blks_read + sv.temp_blks_written) : "—" }),
          h("td", { class: "n", text: sv ? fmtInt(sv.wal_bytes) : "—" }));
      })))));
    if (plans) {
      for (const db of plans.databases) {
        el.appendChild(h("h3", { text: `Generic plans in ${db.database}` }));
        el.appendChild(h("div", { class: "table-wrap" }, h("table", { class: "plans" },
          h("thead", {}, h("tr", {}, ["Plan", "Summary", "First seen", "Last seen", "Seen"].map((t, i) => h("th", { scope: "col", class: i === 4 ? "n" : null, text: t })))),
          h("tbody", {}, db.plans.map((pl) => h("tr", {},
            h("td", {}, h("code", { text: pl.id }), pl.id === db.current ? h("span", { class: "badge", text: "current" }) : null),
            h("td", {}, h("code", { text: pl.summary })),
            h("td", { text: fmtIso(pl.first_seen) }), h("td", { text: fmtIso(pl.last_seen) }),
            h("td", { class: "n", text: fmtInt(pl.times_seen) })))))));
        const current = db.plans.find((pl) => pl.id === db.current);
        if (current) {
          el.appendChild(h("details", {}, h("summary", { text: "Current plan (EXPLAIN JSON)" }),
            h("pre", {}, h("code", { text: JSON.stringify(current.plan, null, 2) }))));
        }
      }
    }
    const slow = rows.flatMap((r) => (r.slow_samples || []).map((s) => ({ ...s, database: r.database })))
      .sort((a, b) => b.duration_ms - a.duration_ms);
    el.appendChild(h("h3", { text: "Slowest recent executions" }));
    el.appendChild(slow.length ? h("div", { class: "table-wrap" }, h("table", { id: "slow" },
      h("caption", { text: "Parameter types only: values are never kept." }),
      h("thead", {}, h("tr", {}, ["Duration ms", "When", "Database", "User", "Application", "Client", "Trace id", "Parameter type oids"]
        .map((t, i) => h("th", { scope: "col", class: i === 0 ? "n" : null, text: t })))),
      h("tbody", {}, slow.map((s) => h("tr", {},
        h("td", { class: "n", text: fmtMs(s.duration_ms) }), h("td", { text: fmtIso(s.at) }),
        h("td", { text: s.database }), h("td", { text: s.user }), h("td", { text: s.application_name }),
        h("td", { text: s.client }), h("td", {}, s.trace_id ? h("code", { text: s.trace_id }) : ""),
        h("td", { text: s.param_type_oids.join(", ") })))))) : h("p", { class: "muted", text: "None recorded." }));
  }

  // --- connections ---------------------------------------------------------------------------
  function viewConnections() {
    markNav("connections");
    document.title = "Connections · dbproxy";
    const body = h("div", {});
    clear(main()).appendChild(h("section", { "aria-labelledby": "c-h" },
      h("h1", { id: "c-h", text: "Connections and transactions" }), body));
    async function refresh(generation) {
      const d = await getJSON("/api/connections");
      if (generation !== live.generation) return;
      const table = (id, caption, heads, rows) => h("div", { class: "table-wrap" }, h("table", { id },
        h("caption", { text: caption }),
        h("thead", {}, h("tr", {}, heads.map((t, i) => h("th", { scope: "col", class: i >= 2 ? "n" : null, text: t })))),
        h("tbody", {}, rows.length ? rows.map((cells) => h("tr", {}, cells.map((v, i) => h("td", { class: i >= 2 ? "n" : null, text: v }))))
          : h("tr", {}, h("td", { colspan: heads.length, class: "empty", text: "None yet." })))));
      append(clear(body), [
        h("dl", { class: "stats" },
          statBox("Open client sessions", fmtInt(d.connections.reduce((a, c) => a + c.current, 0))),
          statBox("Sessions opened", fmtInt(d.connections.reduce((a, c) => a + c.total, 0))),
          statBox("Rejected by the server", fmtInt(d.connections.reduce((a, c) => a + c.rejected, 0))),
          statBox("Fingerprint rows tracked", fmtInt(d.fingerprints_tracked)),
          statBox("Folded into __other__", fmtInt(d.fingerprints_overflow)),
          statBox("Events processed", fmtInt(d.events_processed))),
        h("h2", { text: "Client sessions" }),
        table("connections", `Per database and user, since ${fmtIso(d.since)}.`,
          ["Database", "User", "Open", "Opened", "Rejected"],
          d.connections.map((c) => [c.database, c.user, fmtInt(c.current), fmtInt(c.total), fmtInt(c.rejected)])),
        h("h2", { text: "Transactions" }),
        table("transactions", "Explicit transactions (BEGIN … COMMIT/ROLLBACK); durations in ms.",
          ["Database", "User", "Commits", "Rollbacks", "Errors", "Mean ms", "p50 ms", "p95 ms", "p99 ms"],
          d.transactions.map((t) => [t.database, t.user, fmtInt(t.commits), fmtInt(t.rollbacks), fmtInt(t.errors),
            fmtMs(t.mean_ms), fmtMs(t.p50_ms), fmtMs(t.p95_ms), fmtMs(t.p99_ms)])),
      ]);
    }
    return startView(refresh);
  }

  // --- database load (the activity sampler) -----------------------------------------------
  function viewLoad() {
    markNav("load");
    document.title = "Load · dbproxy";
    const body = h("div", {});
    clear(main()).appendChild(h("section", { "aria-labelledby": "l-h" },
      h("h1", { id: "l-h", text: "Database load" }),
      h("p", { class: "muted", text: "Average active sessions of the proxied backends, sampled from pg_stat_activity and attributed to the statement each session runs; CPU = active with no wait event." }),
      body));
    async function refresh(generation) {
      let byFp;
      try {
        byFp = await getJSON("/api/load?by=fingerprint&window=300&limit=10");
      } catch (err) {
        if (err.status !== 404) throw err;
        append(clear(body), [h("p", { class: "notice", text: "Load sampling is off: it needs the side connection (--inspect-dsn) and --sample-activity-interval." })]);
        return;
      }
      const blocking = await getJSON("/api/blocking?window=900");
      if (generation !== live.generation) return;
      // stacked lines: each wait event type's line is its load plus the ones below it
      const totals = {};
      for (const p of byFp.series) for (const [k, v] of Object.entries(p.load)) totals[k] = (totals[k] || 0) + v;
      let types = Object.keys(totals).sort((a, b) => totals[b] - totals[a]);
      if (types.length > 4) types = [...types.slice(0, 3), "other"];
      const iv = byFp.interval_s || 1;
      const series = types.map((t, i) => ({ name: i ? `+ ${t}` : t, cls: `s${i + 1}`, points: byFp.series.map((p) => {
        let sum = 0;
        for (const [k, v] of Object.entries(p.load)) {
          const idx = types.indexOf(k) >= 0 ? types.indexOf(k) : types.indexOf("other");
          if (idx >= 0 && idx <= i) sum += v;
        }
        return [new Date(p.at).getTime(), sum / (p.weight_s || iv)];
      }) }));
      const heads = ["Query", "Database", "Avg active sessions", "Load s", "Wait events"];
      const rows = byFp.rows.map((r) => h("tr", { "data-fingerprint": r.fingerprint },
        h("td", {}, h("a", { href: `#/query/${encodeURIComponent(r.fingerprint)}` }, h("code", { class: "sql", text: r.query || r.fingerprint }))),
        h("td", { text: r.database }),
        h("td", { class: "n", text: fmtNum(r.average_active_sessions, 3) }),
        h("td", { class: "n", text: fmtNum(r.load_s, 1) }),
        h("td", { class: "waits", text: Object.entries(r.wait_events).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${fmtNum(v, 1)} s`).join(", ") })));
      const bheads = ["Waiting query", "Blocked by", "Lock wait ms", "Blocker transaction age s", "Last seen"];
      const brows = blocking.events.slice(0, 20).map((e) => h("tr", { class: e.ongoing ? "open" : "resolved" },
        h("td", {}, h("code", { class: "sql", text: e.query || e.fingerprint })),
        h("td", {}, e.blocker.behind_proxy
          ? [h("code", { class: "sql", text: e.blocker.query || e.blocker.fingerprint || "?" }), h("div", { class: "muted", text: `${e.blocker.state}, pid ${e.blocker.pid}` })]
          : h("span", { text: `not behind the proxy: ${e.blocker.application_name || "?"} (pid ${e.blocker.pid}, ${e.blocker.state})` })),
        h("td", { class: "n", text: fmtMs(e.lock_wait_ms) }),
        h("td", { class: "n", text: fmtNum(e.blocker.transaction_age_s, 1) }),
        h("td", { text: fmtIso(e.last_seen) })));
      append(clear(body), [
        h("div", { class: "charts" }, lineChart("load-chart", "Average active sessions by wait event type (stacked), last 5 minutes", series, "sessions", (v) => fmtNum(v, 2))),
        h("h2", { text: "Top queries by load" }),
        h("div", { class: "table-wrap" }, h("table", { id: "load" },
          h("caption", { text: `Last 5 minutes: ${fmtNum(byFp.average_active_sessions, 3)} average active sessions in all.` }),
          h("thead", {}, h("tr", {}, heads.map((t) => h("th", { scope: "col", text: t })))),
          h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: heads.length, class: "empty", text: "No load sampled yet." }))))),
        h("h2", { text: "Blocking" }),
        h("div", { class: "table-wrap" }, h("table", { id: "blocking" },
          h("caption", { text: `Lock waits longer than ${fmtNum(blocking.blocked_ms, 0)} ms, last 15 minutes.` }),
          h("thead", {}, h("tr", {}, bheads.map((t) => h("th", { scope: "col", text: t })))),
          h("tbody", {}, brows.length ? brows : h("tr", {}, h("td", { colspan: bheads.length, class: "empty", text: "No statement waited on a lock." }))))),
      ]);
    }
    return startView(refresh);
  }

  // --- findings ----------------------------------------------------------------------------
  const FINDING_TITLES = {
    latency_regression: "Latency regression", new_heavy: "New heavy query", error_spike: "Error spike",
    rows_per_call_jump: "Rows per call jump", throughput_drop: "Throughput drop",
    rows_scanned_jump: "Rows scanned jump", plan_change: "Plan change", n_plus_one: "N+1 queries",
  };
  function findingNumbers(f, side) {
    const n = f[side] || {};
    const parts = [];
    if (f.type === "n_plus_one") {
      if (side === "before") return "—";
      parts.push(`${fmtNum(n.executions_per_request_median, 0)} per request (max ${fmtNum(n.executions_per_request_max, 0)})`);
      parts.push(`${fmtMs(n.time_per_request_ms)} ms per request`);
      return parts.join(", ");
    }
    if (f.type === "plan_change" && f.plan) {
      return side === "before" ? f.plan.before_summary : f.plan.after_summary;
    }
    if (n.rows_scanned_per_call !== undefined) parts.push(`${fmtNum(n.rows_scanned_per_call, 1)} rows scanned / call`);
    if (n.p95_ms !== undefined && n.p95_ms !== null) parts.push(`p95 ${fmtMs(n.p95_ms)} ms`);
    if (n.calls_per_min !== undefined && n.calls_per_min !== null) parts.push(`${fmtNum(n.calls_per_min, 1)} calls/min`);
    if (f.type === "rows_per_call_jump" && n.rows_per_call !== null) parts.push(`${fmtNum(n.rows_per_call, 1)} rows/call`);
    return parts.length ? parts.join(", ") : "—";
  }
  function viewFindings() {
    markNav("findings");
    document.title = "Findings · dbproxy";
    const body = h("div", {});
    const deploysBody = h("div", {});
    const version = h("input", { type: "text", id: "deploy-version", name: "version", required: true, maxlength: "200",
      placeholder: "v1.2.3 or a commit", "aria-describedby": "deploy-help" });
    const posted = h("p", { role: "status", class: "muted" });
    const form = h("form", { class: "settings", id: "deploy-form", onsubmit: async (e) => {
      e.preventDefault();
      try {
        const r = await fetch("/api/deploys", { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ version: version.value.trim() }) });
        const d = await r.json();
        if (!r.ok) throw new Error(d.error || `${r.status}`);
        posted.textContent = `Deploy ${d.deploy.version} marked: findings now compare before and after it.`;
        version.value = "";
        tick(live.generation);
      } catch (err) {
        posted.textContent = `Could not mark the deploy: ${err.message}`;
      }
    } },
    h("label", { for: "deploy-version" }, "Mark a deploy", version),
    h("p", { id: "deploy-help", class: "muted" }, "Or send ", h("code", { text: "POST /api/deploys {\"version\": …}" }),
      " with the API token from your deploy pipeline, or a ", h("code", { text: "version" }), " sqlcommenter tag."),
    h("p", {}, h("button", { type: "submit", text: "Mark deploy" })), posted);
    clear(main()).appendChild(h("section", { "aria-labelledby": "f-h" },
      h("h1", { id: "f-h", text: "Findings" }),
      h("p", { class: "muted", text: "Per query, the recent window against its baseline (the same window a day ago, the median of earlier windows), or before against after a deploy; N+1 queries per request." }),
      body, h("h2", { text: "Deploys" }), deploysBody, form));
    async function refresh(generation) {
      let findings;
      try {
        findings = await getJSON("/api/findings");
      } catch (err) {
        if (err.status !== 404) throw err;
        append(clear(body), [h("p", { class: "notice", text: "Regression detection is off (dbproxy run --no-detect)." })]);
        return;
      }
      const deploys = await getJSON("/api/deploys");
      if (generation !== live.generation) return;
      const heads = ["State", "Finding", "Query", "Before", "After", "Deploy", "First seen", "Last seen"];
      const rows = findings.map((f) => h("tr", { "data-finding": f.id, class: f.state === "open" ? "open" : "resolved" },
        h("td", { text: f.state }),
        h("td", {}, FINDING_TITLES[f.type] || f.type, f.detail ? h("span", { class: "muted", text: ` ${f.detail}` }) : null),
        h("td", {}, h("a", { href: `#/query/${encodeURIComponent(f.fingerprint)}` }, h("code", { class: "sql", text: f.query || f.fingerprint })),
          f.trace_ids && f.trace_ids.length ? h("div", { class: "muted" }, "traces: ", f.trace_ids.map((t, i) => {
            const url = traceUrl(t, "");
            return [i ? ", " : "", url ? h("a", { href: url, rel: "noreferrer", text: t.slice(0, 8) }) : h("code", { text: t.slice(0, 8) })];
          })) : null),
        h("td", { class: "before", text: findingNumbers(f, "before") }),
        h("td", { class: "after", text: findingNumbers(f, "after") }),
        h("td", { class: "deploy", text: f.deploy ? `${f.deploy.version} (${fmtIso(new Date(f.deploy.at * 1000).toISOString())})` : "—" }),
        h("td", { text: fmtIso(f.first_seen_iso) }),
        h("td", { text: fmtIso(f.last_seen_iso) })));
      append(clear(body), [h("div", { class: "table-wrap" }, h("table", { id: "findings" },
        h("caption", { text: `${findings.filter((f) => f.state === "open").length} open, ${findings.filter((f) => f.state !== "open").length} resolved.` }),
        h("thead", {}, h("tr", {}, heads.map((t) => h("th", { scope: "col", text: t })))),
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: heads.length, class: "empty", text: "No findings: nothing regressed." })))))]);
      append(clear(deploysBody), [deploys.length
        ? h("ul", { id: "deploys" }, deploys.map((d) => h("li", {}, h("strong", { text: d.version }), ` at ${fmtIso(d.at_iso)} (${d.source})`)))
        : h("p", { class: "muted", id: "deploys", text: "No deploy marked yet." })]);
    }
    return startView(refresh);
  }

  // --- settings ----------------------------------------------------------------------------
  function viewSettings() {
    markNav("settings");
    document.title = "Settings · dbproxy";
    const input = h("input", { type: "url", id: "trace-url", name: "trace_url", value: window.localStorage.getItem(LS_TRACE) || "",
      placeholder: serverTraceTemplate || "https://grafana.example/explore?trace={trace_id}", "aria-describedby": "trace-help" });
    const saved = h("p", { role: "status", class: "muted" });
    const form = h("form", { class: "settings", onsubmit: (e) => {
      e.preventDefault();
      const v = input.value.trim();
      if (v) window.localStorage.setItem(LS_TRACE, v);
      else window.localStorage.removeItem(LS_TRACE);
      saved.textContent = v ? "Saved in this browser." : "Cleared: the server's setting applies.";
    } },
    h("label", { for: "trace-url" }, "Trace UI link template", input),
    h("p", { id: "trace-help", class: "muted" },
      "Use {trace_id} and {span_id} as placeholders; only http(s) links are made. Stored in this browser (localStorage); it overrides the server's setting",
      serverTraceTemplate ? h("code", { text: ` ${serverTraceTemplate}` }) : " (none set)",
      ". Opening the UI with ?trace_url=… sets it too."),
    h("p", {}, h("button", { type: "submit", text: "Save" })), saved);
    clear(main()).appendChild(h("section", { "aria-labelledby": "s-h" }, h("h1", { id: "s-h", text: "Settings" }), form));
    return startView(null);
  }

  // --- start -------------------------------------------------------------------------------
  async function init() {
    const fromUrl = params.get("trace_url");
    if (fromUrl !== null) {
      if (fromUrl) window.localStorage.setItem(LS_TRACE, fromUrl);
      else window.localStorage.removeItem(LS_TRACE);
    }
    setupPause();
    try {
      serverTraceTemplate = (await getJSON("/api/ui-config")).trace_url_template || null;
    } catch (_) {
      serverTraceTemplate = null;
    }
    window.addEventListener("hashchange", () => {
      route();
      main().focus({ preventScroll: true });
    });
    route();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
