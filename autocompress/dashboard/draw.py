"""The page's drawing code: JavaScript that turns the JSON from :func:`autocompress.dashboard.data.dashboard_data`
into Plotly figures and a table. It computes nothing about the study; it only lays out what it is given.

Kept in Python strings so the installed package carries it and the HTML stays one self-contained file.

After every draw the page records on ``<body>``: ``data-rendered="1"``, ``data-front-points`` (trial markers
drawn in the front plot), ``data-heatmap-columns`` (columns of the sparsity heatmap), ``data-draws``,
``data-3d-points`` (in the 3-D view, drawn once it is scrolled near the viewport; 0 before), and
milliseconds from navigation start: ``data-script-ms`` (drawing code starts, plotly.js parsed),
``data-first-ms`` (front plot drawn), ``data-render-ms`` (last figure drawn), with ``data-timings`` per figure
(Chromium's --virtual-time-budget freezes that clock at times: there, load the page with "#timing" in its address
and read the console messages' timestamps instead, as ``benchmarks/dashboard.py`` does).
``data-js-errors`` counts JavaScript errors (also listed in ``#js-errors``). Tests and the benchmark read these.
"""

from __future__ import annotations

# Runs first, before plotly.js, so that errors anywhere on the page are counted.
ERROR_HOOK_JS = r"""
(function () {
  if (/[#&]timing\b/.test(location.hash)) console.info("autocompress-dashboard start");
  var errors = [];
  function report(msg) {
    errors.push(String(msg));
    document.body.setAttribute("data-js-errors", String(errors.length));
    var el = document.getElementById("js-errors");
    if (el) { el.hidden = false; el.textContent = "JavaScript errors:\n" + errors.join("\n"); }
  }
  window.__dashboardError = report;
  var consoleError = console.error;
  console.error = function () {
    report("console.error: " + Array.prototype.map.call(arguments, String).join(" "));
    return consoleError.apply(console, arguments);
  };
  window.addEventListener("error", function (e) {
    report((e.message || "error") + (e.filename ? " (" + e.filename + ":" + e.lineno + ")" : ""));
  });
  window.addEventListener("unhandledrejection", function (e) {
    var r = e.reason;
    report("unhandled rejection: " + (r && r.message ? r.message : String(r)));
  });
})();
"""

DRAW_JS = r"""
(function () {
  "use strict";
  // WebGL at the screen's own pixel ratio (Plotly's default 2 quadruples the pixels on ordinary screens).
  var CONFIG = {displaylogo: false, responsive: true,
                plotGlPixelRatio: Math.min(2, Math.max(1, window.devicePixelRatio || 1))};
  var C = {front: "#1d4ed8", feasible: "rgba(100,116,139,0.30)", infeasible: "rgba(220,38,38,0.30)",
           teacher: "#f59e0b", line: "#1d4ed8", constraint: "#dc2626", band: "rgba(29,78,216,0.12)"};
  var HEAT = [[0, "#fff7ec"], [0.35, "#fdd49e"], [0.65, "#fc8d59"], [1, "#990000"]];
  var FIDELITY_COLORS = ["#1d4ed8", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2"];
  var D = null, LIVE = null, byTrial = {}, hover = [], draws = 0, polls = 0, busy = false, timings = {};
  var state = {x: "latency_ms", y: "accuracy"};
  // Above this many markers in one plot, draw them with WebGL (where the browser has it): SVG gets slow.
  var GL_POINTS = 2000, HAS_GL = false;
  // With "#timing" in the address, milestones go to the console (the benchmark reads the browser's log clock).
  var TIMING = /[#&]timing\b/.test(location.hash);
  function mark(name) { if (TIMING) console.info("autocompress-dashboard " + name); }

  function readJson(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }
  function $(id) { return document.getElementById(id); }
  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }
  function num(v, digits) { return v === null || v === undefined ? "–" : Number(v).toPrecision(digits); }
  function fmt(metric, v) {
    if (v === null || v === undefined) return "–";
    if (metric === "accuracy" || metric === "test_accuracy") return Number(v).toFixed(4);
    if (metric === "latency_ms") return Number(v).toPrecision(4) + " ms";
    if (metric === "size_bytes") return Number(v).toLocaleString("en-US") + " B";
    if (metric === "compression_ratio") return Number(v).toFixed(1) + "×";
    if (metric === "cost_s") return Number(v).toPrecision(3) + " s";
    return String(v);
  }
  // Plan summaries ("layer:keep0.5/w4; layer2:...") broken into lines of about 90 characters for hover boxes.
  function wrap(text) { return esc(text).replace(/(.{60,90}?;) /g, "$1<br>"); }
  function note(id, text) {
    var el = $(id);
    if (!el) return;
    el.textContent = text || "";
    el.hidden = !text;
  }
  function show(id, visible) { var el = $(id); if (el) el.hidden = !visible; }
  function label(m) { return D.labels[m] || m; }
  function metricName() { return (D.metric && D.metric.name) || "accuracy"; }
  function pick(col, idx) { var out = new Array(idx.length); for (var i = 0; i < idx.length; i++) out[i] = col[idx[i]]; return out; }
  function axis(m, extra) {
    var a = {title: {text: label(m)}, type: m === "size_bytes" ? "log" : "linear", zeroline: false, automargin: true};
    for (var k in extra) a[k] = extra[k];
    return a;
  }
  function webgl() {
    try {
      var c = document.createElement("canvas");
      var gl = window.WebGLRenderingContext && (c.getContext("webgl") || c.getContext("experimental-webgl"));
      var lose = gl && gl.getExtension("WEBGL_lose_context");
      if (lose) lose.loseContext();  // only asked whether it exists: give the context back
      return !!gl;
    } catch (e) { return false; }
  }
  function markerType(n) {
    return n > GL_POINTS && HAS_GL ? "scattergl" : "scatter";
  }
  function purge(id) { var el = $(id); if (el && el.data) Plotly.purge(el); }
  function plot(id, data, layout) {
    layout.paper_bgcolor = "#fff";
    layout.plot_bgcolor = "#fff";
    layout.font = {family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12};
    var t0 = performance.now();
    mark("draw " + id);
    return Plotly.react($(id), data, layout, CONFIG).then(function (gd) {
      timings[id] = Math.round(performance.now() - t0);
      mark("drawn " + id);
      return gd;
    });
  }

  // --- indexes shared by the figures ------------------------------------------------------------------------
  function prepare() {
    var T = D.trials, n = T.trial.length, plans = T.summaries.map(wrap);
    byTrial = {};
    hover = new Array(n);
    for (var i = 0; i < n; i++) {
      byTrial[T.trial[i]] = i;
      var test = T.test_accuracy[i] === null ? "" : " (test " + fmt("accuracy", T.test_accuracy[i]) + ")";
      hover[i] = "<b>trial " + T.trial[i] + "</b> · " + D.status_names[T.status[i]] +
        "<br>" + metricName() + " " + fmt("accuracy", T.accuracy[i]) + test +
        "<br>latency " + fmt("latency_ms", T.latency_ms[i]) +
        "<br>size " + fmt("size_bytes", T.size_bytes[i]) + " · compression " + fmt("compression_ratio", T.compression_ratio[i]) +
        "<br>plan: " + plans[T.summary[i]];
    }
  }
  function statusIndex(code) {
    var s = D.trials.status, out = [];
    for (var i = 0; i < s.length; i++) if (s[i] === code) out.push(i);
    return out;
  }
  // Trial traces in drawing order (dimmed first, front on top): [status code, name, marker].
  function trialGroups(small) {
    return [
      [1, "feasible, dominated", {color: C.feasible, size: small ? 3 : 6}],
      [2, "infeasible (violates a constraint)", {color: C.infeasible, size: small ? 3 : 6, symbol: "x"}],
      [0, "Pareto front (all objectives)", {color: C.front, size: small ? 5 : 10, line: {color: "#fff", width: 1}}]
    ];
  }

  // --- Pareto front, any two metrics ------------------------------------------------------------------------
  function setupSelects() {
    ["x", "y"].forEach(function (a) {
      var sel = $("front-" + a);
      if (sel.options.length) return;
      D.metrics.forEach(function (m) {
        var o = document.createElement("option");
        o.value = m; o.textContent = label(m);
        sel.appendChild(o);
      });
      sel.value = state[a];
      sel.addEventListener("change", function () {
        var other = a === "x" ? "y" : "x";
        state[a] = sel.value;
        if (state[other] === state[a]) {
          state[other] = D.metrics.filter(function (m) { return m !== state[a]; })[0];
          $("front-" + other).value = state[other];
        }
        drawFront().then(finish);
      });
    });
  }
  function staircase() {
    var key = D.metrics.indexOf(state.x) < D.metrics.indexOf(state.y) ? state.x + "|" + state.y : state.y + "|" + state.x;
    var idx = (D.pair_fronts[key] || []).map(function (t) { return byTrial[t]; }).filter(function (i) { return i !== undefined; });
    var T = D.trials;
    idx.sort(function (a, b) { return T[state.x][a] - T[state.x][b]; });
    return idx;
  }
  function drawFront() {
    var T = D.trials, x = state.x, y = state.y, traces = [], type = markerType(T.trial.length);
    trialGroups(false).forEach(function (g) {
      var idx = statusIndex(g[0]);
      traces.push({type: type, meta: "trials", mode: "markers", name: g[1] + " (" + idx.length + ")", x: pick(T[x], idx),
                   y: pick(T[y], idx), text: pick(hover, idx), hovertemplate: "%{text}<extra></extra>", marker: g[2]});
    });
    var st = staircase();
    traces.push({type: "scatter", mode: "lines", name: "front of these two only", x: pick(T[x], st), y: pick(T[y], st),
                 hoverinfo: "skip", line: {color: C.line, width: 1.5, dash: "dot",
                 shape: D.directions[x] === "minimize" ? "hv" : "vh"}});
    if (D.teacher[x] !== undefined && D.teacher[y] !== undefined) {
      traces.push({type: "scatter", mode: "markers", name: "teacher (uncompressed)", x: [D.teacher[x]], y: [D.teacher[y]],
                   marker: {symbol: "star", size: 16, color: C.teacher, line: {color: "#78350f", width: 1}},
                   hovertemplate: "<b>teacher</b> (uncompressed)<br>" + esc(label(x)) + " %{x}<br>" + esc(label(y)) + " %{y}<extra></extra>"});
    }
    var shapes = [], annotations = [];
    D.constraints.forEach(function (c) {
      var text = c.name + " = " + c.value;
      if (c.metric === x) {
        shapes.push({type: "line", xref: "x", yref: "paper", x0: c.value, x1: c.value, y0: 0, y1: 1, line: {color: C.constraint, dash: "dash", width: 1.5}});
        annotations.push({xref: "x", yref: "paper", x: c.value, y: 1, text: esc(text), showarrow: false, yanchor: "bottom", font: {color: C.constraint}});
      }
      if (c.metric === y) {
        shapes.push({type: "line", xref: "paper", yref: "y", x0: 0, x1: 1, y0: c.value, y1: c.value, line: {color: C.constraint, dash: "dash", width: 1.5}});
        annotations.push({xref: "paper", yref: "y", x: 1, y: c.value, text: esc(text), showarrow: false, xanchor: "right", yanchor: "bottom", font: {color: C.constraint}});
      }
    });
    note("front-note", T.trial.length ? "" : "No completed trial yet.");
    return plot("front-plot", traces, {height: 560, margin: {t: 30, r: 20, b: 60, l: 70}, hovermode: "closest",
      xaxis: axis(x), yaxis: axis(y), shapes: shapes, annotations: annotations, uirevision: x + "|" + y,
      legend: {orientation: "h", y: -0.16}});
  }

  // --- 3-D view (WebGL: drawn only once its section is near the viewport, then kept up to date) ----------------------
  var near3d = false, watching3d = false;
  function isNear(el) { return el.getBoundingClientRect().top < (window.innerHeight || 1000) + 300; }
  function lazy3d() {
    if (!HAS_GL) {
      note("front3d-note", "The 3-D view needs WebGL, which this browser does not offer.");
      show("front3d-plot", false);
      return null;
    }
    if (near3d || isNear($("sec-3d"))) { near3d = true; return draw3d(); }
    if (!watching3d) {
      watching3d = true;
      var check = function () {
        if (near3d || !isNear($("sec-3d"))) return;
        near3d = true;
        window.removeEventListener("scroll", check);
        window.removeEventListener("resize", check);
        Promise.resolve(draw3d()).then(function () {
          document.body.setAttribute("data-3d-points", String(points3d()));
          mark("drawn 3d");
        });
      };
      window.addEventListener("scroll", check, {passive: true});
      window.addEventListener("resize", check);
    }
    return null;
  }
  function draw3d() {
    if (!HAS_GL) return null;
    var T = D.trials, traces = [];
    trialGroups(true).forEach(function (g) {
      var idx = statusIndex(g[0]), marker = {};
      for (var k in g[2]) marker[k] = g[2][k];
      delete marker.line;
      traces.push({type: "scatter3d", meta: "trials", mode: "markers", name: g[1], x: pick(T.latency_ms, idx),
                   y: pick(T.size_bytes, idx), z: pick(T.accuracy, idx), text: pick(hover, idx),
                   hovertemplate: "%{text}<extra></extra>", marker: marker});
    });
    if (D.teacher.accuracy !== undefined && D.teacher.latency_ms !== undefined && D.teacher.size_bytes !== undefined) {
      traces.push({type: "scatter3d", mode: "markers", name: "teacher", x: [D.teacher.latency_ms], y: [D.teacher.size_bytes],
                   z: [D.teacher.accuracy], marker: {symbol: "diamond", size: 7, color: C.teacher},
                   hovertemplate: "<b>teacher</b> (uncompressed)<extra></extra>"});
    }
    note("front3d-note", T.trial.length ? "" : "No completed trial yet.");
    return plot("front3d-plot", traces, {height: 620, margin: {t: 10, r: 10, b: 10, l: 10}, uirevision: "3d",
      legend: {orientation: "h"}, scene: {xaxis: {title: {text: label("latency_ms")}},
      yaxis: {title: {text: label("size_bytes")}, type: "log"}, zaxis: {title: {text: label("accuracy")}}}});
  }

  // --- per-layer heatmaps ---------------------------------------------------------------------------------------
  // One panel per knob the method registry marks for a heatmap (D.heatmaps.specs: field, title, range, log2).
  function heatmapSpecs() {
    return (D.heatmaps.specs || []).map(function (s) {
      var ticks = [];
      for (var t = s.zmin; s.log2 && t <= s.zmax; t++) { ticks.push(t); }
      return {field: s.field, title: s.title, zmin: s.zmin, zmax: s.zmax, reverse: s.reverse,
        value: s.log2 ? function (v) { return Math.log2(v); } : function (v) { return v; },
        text: s.log2 ? function (v) { return String(v); } : function (v) { return num(v, 2); },
        colorbar: s.log2 ? {tickvals: ticks, ticktext: ticks.map(function (t) { return String(Math.pow(2, t)); })} : null};
    });
  }
  // One figure, one row of cells per layer and one column per front member in each stacked panel.
  function drawHeatmaps() {
    var H = D.heatmaps, members = H.members, HEATMAPS = heatmapSpecs();
    if (!members.length || !H.layers.length) {
      purge("heatmaps"); show("heatmaps", false);
      note("heatmap-note", members.length ? "The study records no layers and the plans name none." :
        "No feasible front member yet: nothing to compare.");
      return null;
    }
    note("heatmap-note", "");
    show("heatmaps", true);
    var cols = members.map(function (t) { return "#" + t; });
    var rows = H.layers.map(function (name, i) { return H.layer_types[i] ? name + " (" + H.layer_types[i] + ")" : name; });
    var small = members.length * H.layers.length <= 600 && members.length <= 40;
    // Pixel layout: each panel gets its rows' height, plus room for its title above and tick labels below.
    var panel = Math.max(90, Math.min(500, 24 * rows.length)), title = 30, ticks = members.length > 20 ? 60 : 36;
    var top = 10, bottom = 50, height = top + bottom + HEATMAPS.length * (title + panel + ticks);
    var traces = [], layout = {height: height, margin: {t: top, r: 20, b: bottom, l: 10}, uirevision: "heat", annotations: []};
    HEATMAPS.forEach(function (h, k) {
      var y1 = height - top - k * (title + panel + ticks) - title, y0 = y1 - panel;  // pixels from the bottom
      var dom = [(y0 - bottom) / (height - top - bottom), (y1 - bottom) / (height - top - bottom)];
      var sfx = k ? String(k + 1) : "";
      var raw = H[h.field];
      var bar = {thickness: 14, len: dom[1] - dom[0], y: (dom[0] + dom[1]) / 2, yanchor: "middle"};
      if (h.colorbar) { bar.tickvals = h.colorbar.tickvals; bar.ticktext = h.colorbar.ticktext; }
      var trace = {type: "heatmap", x: cols, y: rows, xaxis: "x" + sfx, yaxis: "y" + sfx,
        z: raw.map(function (row) { return row.map(h.value); }), text: raw.map(function (row) { return row.map(h.text); }),
        zmin: h.zmin, zmax: h.zmax, colorscale: HEAT, reversescale: h.reverse, colorbar: bar, xgap: 1, ygap: 1,
        hovertemplate: "%{y}<br>front member trial %{x}<br>" + esc(h.field.replace("_", " ")) + " %{text}<extra></extra>"};
      if (small) { trace.texttemplate = "%{text}"; trace.textfont = {size: 10}; }
      traces.push(trace);
      layout["xaxis" + sfx] = {type: "category", anchor: "y" + sfx, automargin: true,
        title: k === HEATMAPS.length - 1 ? {text: "front members (trial), smallest first"} : undefined};
      layout["yaxis" + sfx] = {type: "category", autorange: "reversed", automargin: true, domain: dom, anchor: "x" + sfx};
      layout.annotations.push({text: "<b>" + esc(h.title) + "</b>", xref: "paper", yref: "paper", x: 0, xanchor: "left",
        y: dom[1], yanchor: "bottom", yshift: 4, showarrow: false, font: {size: 13}});
    });
    return plot("heatmaps", traces, layout);
  }

  // One row per layer (or shared group), one column per knob value: the study's one-layer divergences.
  function drawSensitivity() {
    var S = D.sensitivity;
    if (!S || !S.sections.length) {
      purge("sensitivity"); show("sensitivity", false);
      note("sensitivity-note", "The study did not score its layers (sensitivity: false, or it was started before).");
      return null;
    }
    note("sensitivity-note", S.probes + " probes in " + num(S.seconds, 1) + " s.");
    show("sensitivity", true);
    var z = S.z.map(function (row) { return row.map(function (v) { return v === null ? null : Math.log10(v + 1e-6); }); });
    var text = S.z.map(function (row) { return row.map(function (v) { return v === null ? "not probed" : num(v, 3); }); });
    var trace = {type: "heatmap", x: S.choices, y: S.sections, z: z, text: text, colorscale: HEAT, xgap: 1, ygap: 1,
      colorbar: {title: {text: "log10 div."}, thickness: 14},
      hovertemplate: "%{y}<br>%{x}<br>divergence %{text}<extra></extra>"};
    var layout = {height: Math.max(200, Math.min(1200, 80 + 16 * S.sections.length)), margin: {t: 10, r: 20, b: 90, l: 10},
      uirevision: "sens", xaxis: {type: "category", automargin: true, tickangle: -45},
      yaxis: {type: "category", autorange: "reversed", automargin: true}};
    return plot("sensitivity", [trace], layout);
  }

  // --- progress: hypervolume and evaluation cost ------------------------------------------------------------------
  function drawHypervolume() {
    var S = D.hypervolume_series;
    if (!S.trial.length) {
      purge("hv-plot"); show("hv-plot", false);
      note("hv-note", S.note || "No completed trial yet.");
      return null;
    }
    show("hv-plot", true);
    var ref = S.reference || {}, refText = Object.keys(ref).map(function (k) {
      var cost = k === "latency_ms" || k === "size_bytes", ranged = D.metric && D.metric.range;
      return !cost && ranged ? k + " error " + ref[k] : k + " " + ref[k] + "× teacher";
    }).join(", ");
    note("hv-note", "Objectives normalised (the task's metric as its distance from the best end of its range, or " +
      "as a ratio to the teacher's; latency and size as ratios to the teacher); reference point: " +
      refText + "." + (S.sampled ? " Evaluated at " + S.trial.length + " trials spread over the study." : ""));
    return plot("hv-plot", [{type: "scatter", mode: S.trial.length > 200 ? "lines" : "lines+markers", x: S.trial,
      y: S.hypervolume, line: {shape: "hv", color: C.front}, marker: {size: 4}, name: "hypervolume",
      hovertemplate: "after trial %{x}<br>hypervolume %{y:.4f}<extra></extra>"}],
      {height: 360, margin: {t: 36, r: 20, b: 50, l: 60}, title: {text: "hypervolume over trials", x: 0, font: {size: 14}},
       xaxis: {title: {text: "trial"}}, yaxis: {title: {text: "hypervolume"}, rangemode: "tozero"}, uirevision: "hv"});
  }
  function drawCost() {
    var S = D.cost, traces = [], i;
    if (!S.trial.length) {
      purge("cost-plot"); show("cost-plot", false); note("cost-note", "No finished trial yet.");
      return null;
    }
    show("cost-plot", true);
    var groups = {}, order = [], LAST = {"pruned (stopped early)": 1, "failed": 2};
    for (i = 0; i < S.trial.length; i++) {
      if (S.cost_s[i] === null) continue;
      var key = S.state[i] === "FAIL" ? "failed" : S.state[i] === "PRUNED" ? "pruned (stopped early)" :
        (S.fidelity ? (S.fidelity[i] === null ? "fidelity not recorded" : "fidelity " + S.fidelity[i]) : "completed");
      if (!groups[key]) { groups[key] = {x: [], y: []}; order.push(key); }
      groups[key].x.push(S.trial[i]); groups[key].y.push(S.cost_s[i]);
    }
    order.sort(function (a, b) { return (LAST[a] || 0) - (LAST[b] || 0) || (a < b ? -1 : a > b ? 1 : 0); });
    order.forEach(function (key, k) {
      var kind = LAST[key] || 0;
      traces.push({type: markerType(S.trial.length), mode: "markers", name: key + " (" + groups[key].x.length + ")", x: groups[key].x, y: groups[key].y,
        marker: {size: S.trial.length > 2000 ? 3 : 6, symbol: kind === 2 ? "x" : kind === 1 ? "circle-open" : "circle",
                 color: kind === 2 ? C.constraint : kind === 1 ? "#64748b" : FIDELITY_COLORS[k % FIDELITY_COLORS.length]},
        hovertemplate: "trial %{x}<br>" + esc(key) + "<br>cost %{y:.3g} s<extra></extra>"});
    });
    note("cost-note", S.fidelity ? "Colour: the fidelity level each trial recorded." :
      "This study records no fidelity level per trial (user attribute \"fidelity\"): every trial is shown alike.");
    return plot("cost-plot", traces, {height: 360, margin: {t: 36, r: 20, b: 50, l: 60},
      title: {text: "evaluation cost per trial", x: 0, font: {size: 14}}, hovermode: "closest",
      xaxis: {title: {text: "trial"}}, yaxis: {title: {text: "seconds"}, rangemode: "tozero"}, uirevision: "cost",
      legend: {orientation: "h", y: -0.25}});
  }

  // --- predictions vs measurements ---------------------------------------------------------------------------------
  function identityPanel(id, noteId, P, xs, ys, opts) {
    if (!P) {
      purge(id); show(id, false); note(noteId, opts.absent);
      return null;
    }
    show(id, true);
    var lo = Infinity, hi = -Infinity, i;
    for (i = 0; i < xs.length; i++) { lo = Math.min(lo, xs[i], ys[i]); hi = Math.max(hi, xs[i], ys[i]); }
    var pad = (hi - lo) * 0.05 || Math.abs(hi) * 0.05 || 0.01;
    lo = opts.fromZero ? 0 : lo - pad; hi = hi + pad;
    var traces = [];
    if (opts.band) {
      traces.push({type: "scatter", mode: "lines", x: [lo, hi], y: [lo * (1 - opts.band), hi * (1 - opts.band)],
        line: {width: 0}, hoverinfo: "skip", showlegend: false});
      traces.push({type: "scatter", mode: "lines", x: [lo, hi], y: [lo * (1 + opts.band), hi * (1 + opts.band)],
        line: {width: 0}, fill: "tonexty", fillcolor: C.band, hoverinfo: "skip", name: "±" + Math.round(opts.band * 100) + " %"});
    }
    traces.push({type: "scatter", mode: "lines", x: [lo, hi], y: [lo, hi], line: {color: "#475569", dash: "dash", width: 1},
      hoverinfo: "skip", name: "equal"});
    traces.push({type: markerType(xs.length), mode: "markers", x: xs, y: ys, name: "trials (" + xs.length + ")", text: P.trial,
      marker: {size: xs.length > 2000 ? 3 : 6, color: C.front, opacity: 0.7},
      hovertemplate: "trial %{text}<br>" + esc(opts.xname) + " %{x:.4g}<br>" + esc(opts.yname) + " %{y:.4g}<extra></extra>"});
    note(noteId, opts.summary);
    return plot(id, traces, {height: 380, margin: {t: 36, r: 20, b: 50, l: 60}, title: {text: esc(opts.title), x: 0, font: {size: 14}},
      xaxis: {title: {text: opts.xname}, range: [lo, hi]}, yaxis: {title: {text: opts.yname}, range: [lo, hi]},
      hovermode: "closest", uirevision: id, legend: {orientation: "h", y: -0.2}});
  }
  function drawCalibration() {
    var L = D.latency_calibration, A = D.accuracy_calibration;
    var a = identityPanel("latency-cal-plot", "latency-cal-note", L, L ? L.predicted : [], L ? L.measured : [], {
      title: "predicted vs measured latency", xname: "predicted latency (ms)", yname: "measured latency (ms)",
      band: L ? L.band : 0.1, fromZero: true,
      absent: "This study records no latency predictions (trial attributes latency_predicted_ms and latency_measured_ms).",
      summary: L ? (Math.round(L.within_band * 1000) / 10) + " % of " + L.n + " trials predicted within ±" +
        Math.round(L.band * 100) + " % of the measurement." : ""});
    var b = identityPanel("accuracy-cal-plot", "accuracy-cal-note", A, A ? A.proxy : [], A ? A.full : [], {
      title: "proxy vs full accuracy", xname: "proxy accuracy (short fine-tune)", yname: "full accuracy",
      band: 0, fromZero: false,
      absent: "This study records no proxy/full accuracy pairs (trial attributes proxy_accuracy and full_accuracy).",
      summary: A ? A.n + " trials with both; Spearman rank correlation " + (A.spearman === null ? "n/a" : A.spearman.toFixed(3)) + "." : ""});
    return [a, b];
  }

  // --- summary and front table ----------------------------------------------------------------------------------------
  function drawSummary() {
    var c = D.counts, t = D.teacher, parts = [];
    $("study-name").textContent = D.study;
    document.title = "autocompress · " + D.study;
    parts.push((D.task ? "task " + D.task + " · " : "") + c.complete + " completed trials, " + c.failed + " failed" + (c.pruned ? ", " + c.pruned + " pruned" : "") +
      (c.running ? ", " + c.running + " running" : "") + " · " + c.feasible + " feasible · " + c.front + " on the Pareto front" +
      (D.hypervolume === null ? "" : " · hypervolume " + Number(D.hypervolume).toFixed(4)));
    if (t.accuracy !== undefined) {
      parts.push("teacher: " + metricName() + " " + fmt("accuracy", t.accuracy) + " (validation)" +
        (t.test_accuracy !== undefined ? ", test " + fmt("accuracy", t.test_accuracy) : "") +
        ", latency " + fmt("latency_ms", t.latency_ms) + ", size " + fmt("size_bytes", t.size_bytes));
    }
    parts.push("objectives: " + Object.keys(D.objectives).map(function (k) { return k + " (" + D.objectives[k] + ")"; }).join(", ") +
      (D.constraints.length ? " · constraints: " + D.constraints.map(function (x) { return x.name + " = " + x.value; }).join(", ") : "") +
      " · " + metricName() + " is on the validation split; on test it is reported only.");
    if (D.last_error) parts.push("last failure: " + D.last_error);
    var el = $("summary");
    el.textContent = "";
    parts.forEach(function (p) { var d = document.createElement("div"); d.textContent = p; el.appendChild(d); });
    $("generated").textContent = D.generated_at ? "Generated " + D.generated_at + " from " + D.target + "." : "";
  }
  function copyText(text, button) {
    function done(ok) { button.textContent = ok ? "copied" : "select and copy"; setTimeout(function () { button.textContent = "copy"; }, 1500); }
    try {
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(function () { done(true); }, function () { done(false); });
        return;
      }
    } catch (e) { /* fall through */ }
    done(false);
  }
  function drawTable() {
    var table = $("front-table"), rows = D.front_rows;
    table.textContent = "";
    note("table-note", rows.length ? "" : "No feasible front member yet.");
    if (!rows.length) return;
    var head = table.createTHead().insertRow();
    ["trial", metricName(), "test", "latency", "size", "compression", "plan", "export"].forEach(function (h) {
      var th = document.createElement("th"); th.textContent = h; head.appendChild(th);
    });
    var body = table.createTBody();
    rows.forEach(function (r) {
      var tr = body.insertRow();
      [String(r.trial), fmt("accuracy", r.accuracy), fmt("accuracy", r.test_accuracy), fmt("latency_ms", r.latency_ms),
       fmt("size_bytes", r.size_bytes), fmt("compression_ratio", r.compression_ratio), r.plan_summary].forEach(function (v, k) {
        var td = tr.insertCell(); td.textContent = v; if (k === 6) td.className = "plan";
      });
      var cell = tr.insertCell(), code = document.createElement("code"), btn = document.createElement("button");
      code.textContent = r.export; btn.textContent = "copy"; btn.type = "button";
      btn.addEventListener("click", function () { copyText(r.export, btn); });
      cell.appendChild(code); cell.appendChild(btn);
    });
  }

  // --- orchestration ----------------------------------------------------------------------------------------------------
  // Trial markers actually drawn in the front plot: SVG markers in the DOM, or the points WebGL was given.
  function countFrontPoints() {
    var gd = $("front-plot"), n = 0, i;
    var groups = gd.querySelectorAll(".scatterlayer .trace");
    for (i = 0; i < groups.length; i++) {
      var cd = groups[i].__data__, tr = cd && cd[0] && cd[0].trace;
      if (tr && tr.meta === "trials") n += groups[i].querySelectorAll("path.point").length;
    }
    (gd._fullData || []).forEach(function (tr) { if (tr.meta === "trials" && tr.type === "scattergl") n += tr._length || 0; });
    return n;
  }
  function points3d() {
    var n = 0;
    ($("front3d-plot")._fullData || []).forEach(function (tr) { if (tr.meta === "trials") n += tr._length || 0; });
    return n;
  }
  function heatmapColumns() {
    var gd = $("heatmaps");  // the first trace is the sparsity panel
    if (!gd || !gd.calcdata || !gd.calcdata[0] || !gd.offsetParent) return 0;
    var cd = gd.calcdata[0][0];
    return cd && cd.z && cd.z[0] ? cd.z[0].length : 0;
  }
  function finish() {
    var b = document.body;
    b.setAttribute("data-front-points", String(countFrontPoints()));
    b.setAttribute("data-heatmap-columns", String(heatmapColumns()));
    b.setAttribute("data-3d-points", String(points3d()));
    b.setAttribute("data-trials", String(D.counts.complete));
    b.setAttribute("data-front-members", String(D.counts.front));
    b.setAttribute("data-draws", String(draws));
    b.setAttribute("data-render-ms", String(Math.round(performance.now())));
    b.setAttribute("data-timings", JSON.stringify(timings));
    b.setAttribute("data-rendered", "1");
    mark("rendered");
  }
  // The front first; then each other figure in its own task, so the first screen shows (and responds) early.
  function drawAll() {
    draws += 1;
    timings = {};
    prepare();
    setupSelects();
    drawSummary();
    drawTable();
    var rest = [drawHeatmaps, drawSensitivity, function () { return [drawHypervolume(), drawCost()].concat(drawCalibration(), [lazy3d()]); }];
    return Promise.resolve(drawFront()).then(function () {
      document.body.setAttribute("data-first-ms", String(Math.round(performance.now())));
      mark("first");
      return rest.reduce(function (chain, f) {
        return chain.then(function () {
          return new Promise(function (r) { setTimeout(r, 0); }).then(function () { return Promise.all([].concat(f())); });
        });
      }, Promise.resolve());
    }).then(finish, function (e) { window.__dashboardError("drawing failed: " + (e && e.message || e)); });
  }

  // --- live view: poll the server, redraw when the study changed -----------------------------------------------------------
  function liveStatus(text) { var el = $("live-status"); el.hidden = false; el.textContent = text; }
  function poll() {
    if (busy) return;
    busy = true;
    fetch(LIVE.endpoint, {cache: "no-store"}).then(function (r) {
      return r.json().then(function (j) { return {ok: r.ok, j: j}; });
    }).then(function (res) {
      polls += 1;
      document.body.setAttribute("data-live-polls", String(polls));
      var now = new Date().toLocaleTimeString();
      if (!res.ok || res.j.error) { liveStatus("live · " + now + " · cannot read the study: " + (res.j.error || "server error")); return null; }
      liveStatus("live · checked " + now + " · refreshes every " + Math.round(LIVE.interval_ms / 1000) + " s");
      if (res.j.fingerprint !== D.fingerprint) { D = res.j; return drawAll(); }
      return null;
    }).catch(function (e) {
      liveStatus("live · server unreachable (" + (e && e.message || e) + "); retrying");
    }).then(function () { busy = false; });
  }

  function start() {
    document.body.setAttribute("data-script-ms", String(Math.round(performance.now())));
    mark("script");
    D = readJson("dashboard-data");
    LIVE = readJson("dashboard-live");
    if (typeof Plotly === "undefined") { window.__dashboardError("plotly.js did not load"); return; }
    HAS_GL = webgl();
    document.body.setAttribute("data-webgl", HAS_GL ? "1" : "0");
    drawAll();
    if (LIVE) {
      document.body.setAttribute("data-live", "1");
      liveStatus("live · refreshes every " + Math.round(LIVE.interval_ms / 1000) + " s");
      setInterval(poll, LIVE.interval_ms);
    }
  }
  start();
})();
"""

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #0f172a; background: #f1f5f9; }
header { background: #0f172a; color: #e2e8f0; padding: 14px 24px; }
header h1 { margin: 0 0 6px 0; font-size: 20px; font-weight: 600; }
#summary div { font-size: 13px; line-height: 1.5; }
#live-status { margin-top: 6px; font-size: 12px; color: #86efac; }
main { padding: 12px 24px 32px; max-width: 1600px; margin: 0 auto; }
section { background: #fff; border-radius: 8px; padding: 12px 16px; margin: 14px 0; box-shadow: 0 1px 2px rgba(15,23,42,.08); }
section h2 { font-size: 16px; margin: 4px 0 8px; }
.controls { font-size: 13px; margin-bottom: 4px; }
.controls select { margin: 0 12px 0 4px; font-size: 13px; }
.note { font-size: 12.5px; color: #475569; margin: 4px 0; }
.grid2 { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 12px; }
@media (max-width: 1000px) { .grid2 { grid-template-columns: minmax(0, 1fr); } }
table { border-collapse: collapse; width: 100%; font-size: 12.5px; }
th, td { border-bottom: 1px solid #e2e8f0; padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #f8fafc; position: sticky; top: 0; }
td { white-space: nowrap; }
td.plan { white-space: normal; min-width: 260px; max-width: 520px; word-break: break-word; color: #334155; }
td code { font-size: 12px; background: #f1f5f9; padding: 2px 4px; border-radius: 4px; }
td button { margin-left: 6px; font-size: 11px; }
.table-box { overflow: auto; max-height: 640px; }
#js-errors { background: #fee2e2; color: #7f1d1d; padding: 8px 12px; white-space: pre-wrap; margin: 12px 24px; }
footer { font-size: 12px; color: #64748b; padding: 0 24px 24px; }
"""
