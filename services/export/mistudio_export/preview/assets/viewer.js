// miStudio dashboard preview: a feature list over data/index.js and, per feature, a dashboard
// read from data/chunk-N.js. Data arrive through <script> tags (browsers refuse to fetch local
// files under file://). Every string from the data goes through textContent, never innerHTML.
"use strict";

(function () {
  const PAGE = 200; // list rows rendered at a time; more on "Show more"
  const SVG = "http://www.w3.org/2000/svg";
  const state = { metadata: {}, rows: [], byIndex: new Map(), shown: [], limit: PAGE, current: null };
  const chunks = new Map(); // chunk number -> {promise, resolve, reject, features}

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    return node;
  }

  function fmt(value, digits) {
    if (typeof value !== "number" || !isFinite(value)) return "–";
    if (value !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e5)) return value.toExponential(2);
    return value.toFixed(digits === undefined ? 3 : digits);
  }

  function percent(value) {
    return typeof value === "number" ? (value * 100).toPrecision(3) + "%" : "–";
  }

  // ---- data loading -------------------------------------------------------------------

  function loadIndex(index) {
    state.metadata = index.metadata || {};
    const at = Object.fromEntries(index.columns.map((name, i) => [name, i]));
    state.rows = index.features.map((r) => {
      const row = {
        index: r[at.index],
        chunk: r[at.chunk],
        frequency: r[at.frequency],
        max: r[at.max_activation],
        explanations: r[at.explanations],
        topTokens: r[at.top_tokens],
      };
      row.label = row.explanations[0] || "";
      row.haystack = [row.label, ...row.explanations, ...row.topTokens].join("\n").toLowerCase();
      return row;
    });
    for (const row of state.rows) state.byIndex.set(row.index, row);
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
    else start();
  }

  function chunkEntry(n) {
    if (!chunks.has(n)) {
      const entry = {};
      entry.promise = new Promise((resolve, reject) => {
        entry.resolve = resolve;
        entry.reject = reject;
      });
      chunks.set(n, entry);
    }
    return chunks.get(n);
  }

  function loadChunk(n, features) {
    const entry = chunkEntry(n);
    entry.features = new Map(features.map((f) => [f.feature_index, f]));
    entry.resolve(entry.features);
  }

  function chunk(n) {
    const entry = chunkEntry(n);
    if (!entry.requested) {
      entry.requested = true;
      const script = el("script", { src: "data/chunk-" + n + ".js" });
      script.onerror = () => entry.reject(new Error("could not load data/chunk-" + n + ".js"));
      document.body.append(script);
    }
    return entry.promise;
  }

  // ---- the feature list -----------------------------------------------------------------

  const SORTS = {
    index: (a, b) => a.index - b.index,
    "frequency-desc": (a, b) => b.frequency - a.frequency || a.index - b.index,
    "frequency-asc": (a, b) => a.frequency - b.frequency || a.index - b.index,
    "max-desc": (a, b) => b.max - a.max || a.index - b.index,
    "max-asc": (a, b) => a.max - b.max || a.index - b.index,
  };

  function matches(row, query) {
    if (!query) return true;
    if (/^\d+$/.test(query) && String(row.index).startsWith(query)) return true;
    return row.haystack.includes(query);
  }

  function refreshList() {
    const query = document.getElementById("search").value.trim().toLowerCase();
    const sort = SORTS[document.getElementById("sort").value] || SORTS.index;
    state.shown = state.rows.filter((row) => matches(row, query)).sort(sort);
    if (/^\d+$/.test(query)) {
      const exact = state.shown.findIndex((row) => String(row.index) === query);
      if (exact > 0) state.shown.unshift(...state.shown.splice(exact, 1));
    }
    state.limit = PAGE;
    renderList();
  }

  function renderList() {
    const list = document.getElementById("feature-list");
    const visible = state.shown.slice(0, state.limit);
    list.replaceChildren(
      ...visible.map((row) =>
        el(
          "li",
          {},
          el(
            "a",
            {
              href: "#feature=" + row.index,
              "data-feature": row.index,
              class: row.index === state.current ? "current" : "",
            },
            el("span", { class: "idx" }, "#" + row.index),
            el("span", { class: "label" }, row.label || row.topTokens.map(quote).join(" ") || "—"),
            el(
              "span",
              { class: "meta" },
              "frequency " + percent(row.frequency) + " · max " + fmt(row.max, 2)
            )
          )
        )
      )
    );
    const total = state.rows.length;
    document.getElementById("count").textContent =
      state.shown.length === total
        ? total + " features"
        : state.shown.length + " of " + total + " features match";
    document.getElementById("more").hidden = state.shown.length <= state.limit;
  }

  function quote(token) {
    return "“" + token + "”";
  }

  // ---- one feature's dashboard ---------------------------------------------------------------

  async function openFeature(index) {
    const started = performance.now();
    const pane = document.getElementById("feature");
    const row = state.byIndex.get(index);
    if (!row) {
      pane.replaceChildren(el("p", { class: "error" }, "This export has no feature " + index + "."));
      return;
    }
    state.current = index;
    let feature;
    try {
      feature = (await chunk(row.chunk)).get(index);
    } catch (error) {
      pane.replaceChildren(el("p", { class: "error" }, error.message));
      return;
    }
    if (state.current !== index) return; // another feature was chosen meanwhile
    pane.replaceChildren(...dashboard(feature));
    pane.scrollTop = 0;
    pane.setAttribute("data-feature-index", String(index));
    pane.setAttribute("data-open-ms", (performance.now() - started).toFixed(1));
    for (const link of document.querySelectorAll("#feature-list a")) {
      link.classList.toggle("current", Number(link.dataset.feature) === index);
    }
  }

  function dashboard(f) {
    const s = f.statistics || {};
    const logits = f.logits || {};
    const m = state.metadata;
    const parts = [
      el("h2", {}, "Feature " + f.feature_index),
      el("p", { class: "muted" }, [m.model_id, m.hook_point, m.sae_id].filter(Boolean).join(" · ")),
      el("h3", {}, "Explanations"),
      explanations(f.explanations || []),
      keyNumbers(s),
      el(
        "div",
        { class: "grid" },
        el("div", {}, el("h3", {}, "Activation histogram (non-zero)"), histogram(f.histogram, "activations")),
        el("div", {}, el("h3", {}, "Logit histogram"), histogram(f.logit_histogram, "logits")),
        el(
          "div",
          { class: "pair" },
          el("div", {}, el("h3", {}, "Negative logits"), logitTable(logits.top_negative || [], "negative")),
          el("div", {}, el("h3", {}, "Positive logits"), logitTable(logits.top_positive || [], "positive"))
        )
      ),
      el("h3", {}, "Top activations"),
      examples(f.activations || [], s.max_activation, "top"),
    ];
    for (const [n, group] of (f.quantile_groups || []).entries()) {
      parts.push(
        el(
          "h3",
          { class: "quantile" },
          "Interval " + fmt(group.bin_min) + " – " + fmt(group.bin_max) + " · contains " + percent(group.bin_contains)
        ),
        examples(group.examples || [], s.max_activation, "quantile-" + n)
      );
    }
    parts.push(
      el(
        "div",
        { class: "grid" },
        el("div", {}, el("h3", {}, "Statistics"), statistics(s)),
        el("div", {}, el("h3", {}, "Top tokens (by " + (f.top_tokens_metric || "sum") + ")"), topTokens(f.top_tokens || []))
      )
    );
    return parts;
  }

  function keyNumbers(s) {
    const items = [
      ["frequency", percent(s.activation_frequency)],
      ["max", fmt(s.max_activation)],
      ["mean", fmt(s.mean_activation)],
      ["non-zero", String(s.nonzero_count ?? "–")],
    ];
    if (s.dead_feature) items.push(["dead", "yes"]);
    return el(
      "p",
      { class: "key-numbers" },
      ...items.map(([k, v]) => el("span", { class: "chip" }, el("span", { class: "muted" }, k + " "), v))
    );
  }

  function explanations(list) {
    if (!list.length) return el("p", { class: "muted" }, "No explanations.");
    return el(
      "div",
      { id: "explanations" },
      ...list.map((e) =>
        el(
          "p",
          { class: "explanation" },
          el("strong", {}, e.description),
          " ",
          el("span", { class: "by" }, [e.method, e.model, e.score !== undefined ? "score " + fmt(e.score, 2) : ""].filter(Boolean).join(" · "))
        )
      )
    );
  }

  function statistics(s) {
    const rows = [
      ["Activation frequency", percent(s.activation_frequency)],
      ["Max activation", fmt(s.max_activation)],
      ["Mean (when active)", fmt(s.mean_activation)],
      ["Std (when active)", fmt(s.std_activation)],
      ["L0 contribution", fmt(s.l0_contribution, 4)],
      ["Non-zero / tokens", (s.nonzero_count ?? "–") + " / " + (s.token_count ?? "–")],
      ["Dead", s.dead_feature ? "yes" : "no"],
      ...(s.quantiles || []).map((q) => ["p" + Math.round(q.level * 100), fmt(q.value)]),
    ];
    return el(
      "table",
      { id: "statistics" },
      el("tbody", {}, ...rows.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, v))))
    );
  }

  function histogram(h, kind) {
    const width = 400;
    const height = 140;
    const pad = { left: 6, right: 6, top: 8, bottom: 20 };
    const chart = svg("svg", {
      class: "chart " + kind,
      viewBox: "0 0 " + width + " " + height,
      "data-chart": kind,
      role: "img",
    });
    const counts = (h && h.counts) || [];
    const edges = (h && h.bin_edges) || [];
    if (!counts.length) {
      const text = svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle" });
      text.textContent = "no non-zero values";
      chart.append(text);
      return chart;
    }
    const peak = Math.max(...counts, 1);
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const barW = plotW / counts.length;
    counts.forEach((count, i) => {
      const barH = (count / peak) * plotH;
      const bar = svg("rect", {
        class: "bar",
        x: (pad.left + i * barW + 0.5).toFixed(2),
        y: (pad.top + plotH - barH).toFixed(2),
        width: Math.max(barW - 1, 0.5).toFixed(2),
        height: barH.toFixed(2),
        "data-count": count,
      });
      const title = svg("title");
      title.textContent = "[" + fmt(edges[i]) + ", " + fmt(edges[i + 1]) + "): " + count;
      bar.append(title);
      chart.append(bar);
    });
    const low = svg("text", { x: pad.left, y: height - 6 });
    low.textContent = fmt(edges[0], 2);
    const high = svg("text", { x: width - pad.right, y: height - 6, "text-anchor": "end" });
    high.textContent = fmt(edges[edges.length - 1], 2) + (h.scale === "log" ? " (log bins)" : "");
    chart.append(low, high);
    return chart;
  }

  function logitTable(entries, sign) {
    return el(
      "table",
      { class: "logits " + sign },
      el(
        "tbody",
        {},
        ...entries.map((e) =>
          el("tr", {}, el("td", { class: "token" }, quote(e.token)), el("td", { class: "num " + sign }, fmt(e.value)))
        )
      )
    );
  }

  function topTokens(entries) {
    if (!entries.length) return el("p", { class: "muted" }, "None.");
    return el(
      "table",
      { id: "top-tokens" },
      el("thead", {}, el("tr", {}, ...["token", "id", "total", "count", "mean", "max"].map((h, i) => el("th", { class: i > 1 ? "num" : "" }, h)))),
      el(
        "tbody",
        {},
        ...entries.map((t) =>
          el(
            "tr",
            {},
            el("td", {}, quote(t.token)),
            el("td", {}, String(t.token_id)),
            el("td", { class: "num" }, fmt(t.total_activation, 2)),
            el("td", { class: "num" }, String(t.count)),
            el("td", { class: "num" }, fmt(t.mean_activation)),
            el("td", { class: "num" }, fmt(t.max_activation))
          )
        )
      )
    );
  }

  function examples(list, maxActivation, group) {
    if (!list.length) return el("p", { class: "muted" }, "No examples.");
    const scale = maxActivation > 0 ? maxActivation : Math.max(...list.map((e) => e.max_value), 1e-9);
    return el(
      "div",
      { class: "examples", "data-group": group },
      ...list.map((e, n) => example(e, n, scale))
    );
  }

  function example(e, n, scale) {
    const src = e.source || {};
    const source =
      (src.dataset || "tokens") + " · row " + src.row + ", offset " + src.offset +
      " · max " + fmt(e.max_value) + " at “" + (e.tokens[e.max_token_index] ?? "") + "”";
    const tokens = e.tokens.map((token, i) => {
      const value = e.values[i];
      const span = el(
        "span",
        {
          class: "tok" + (i === e.max_token_index ? " peak" : ""),
          "data-value": String(value),
          "data-token-id": String(e.token_ids[i]),
          "data-position": String(i),
        },
        token.replace(/\n/g, "↵\n")
      );
      const alpha = Math.min(Math.abs(value) / scale, 1);
      if (alpha > 0) {
        span.style.backgroundColor = value > 0 ? "rgba(253, 126, 20, " + alpha.toFixed(3) + ")" : "rgba(28, 126, 214, " + alpha.toFixed(3) + ")";
      }
      return span;
    });
    return el(
      "div",
      { class: "example", "data-example": n },
      el("div", { class: "source" }, source),
      el("div", { class: "tokens" }, ...tokens)
    );
  }

  // ---- hover: value and token id of a token ----------------------------------------------

  function showTooltip(event) {
    const tip = document.getElementById("tooltip");
    const tok = event.target.closest && event.target.closest(".tok");
    if (!tok) {
      tip.hidden = true;
      return;
    }
    tip.textContent =
      "“" + tok.textContent + "” · token id " + tok.dataset.tokenId + " · activation " + fmt(Number(tok.dataset.value), 4);
    tip.style.left = event.clientX + 12 + "px";
    tip.style.top = event.clientY + 14 + "px";
    tip.hidden = false;
  }

  // ---- keys: j / k (or arrows, outside the search box) step through the listed features -----

  function step(event) {
    if (event.target.tagName === "INPUT" || event.target.tagName === "SELECT") return;
    const offset = { j: 1, ArrowDown: 1, k: -1, ArrowUp: -1 }[event.key];
    if (!offset || !state.shown.length) return;
    event.preventDefault();
    // The hash, not state.current: keys pressed before the last hashchange fired count too.
    const from = hashedFeature() ?? state.current;
    const at = state.shown.findIndex((row) => row.index === from);
    const next = state.shown[Math.min(Math.max(at + offset, 0), state.shown.length - 1)];
    location.hash = "feature=" + next.index;
  }

  // ---- wiring ----------------------------------------------------------------------------

  function hashedFeature() {
    const match = /feature=(\d+)/.exec(location.hash);
    return match ? Number(match[1]) : null;
  }

  function fromHash() {
    const index = hashedFeature();
    if (index !== null) openFeature(index);
  }

  function start() {
    const m = state.metadata;
    document.getElementById("title").textContent = "Feature dashboards: " + (m.sae_id || "export");
    document.getElementById("subtitle").textContent = [
      m.model_id,
      m.hook_point,
      m.d_sae ? "d_sae " + m.d_sae : "",
      state.rows.length + " features in this export",
      m.dashboard_dataset ? "examples from " + m.dashboard_dataset : "",
    ]
      .filter(Boolean)
      .join(" · ");
    document.getElementById("search").addEventListener("input", refreshList);
    document.getElementById("sort").addEventListener("change", refreshList);
    document.getElementById("more").addEventListener("click", () => {
      state.limit += PAGE;
      renderList();
    });
    const pane = document.getElementById("feature");
    pane.addEventListener("mouseover", showTooltip);
    pane.addEventListener("mouseleave", () => (document.getElementById("tooltip").hidden = true));
    window.addEventListener("hashchange", fromHash);
    document.addEventListener("keydown", step);
    refreshList();
    if (location.hash) fromHash();
    else if (state.rows.length) location.hash = "feature=" + state.shown[0].index;
    document.body.setAttribute("data-ready", "true");
  }

  window.miStudioPreview = { loadIndex, loadChunk };
})();
