// Small SVG charts: line charts over steps, horizontal bars, measured points with a fitted line.
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#1f6fb5", "#d9480f", "#2b8a3e", "#7048e8", "#c2255c", "#0b7285", "#5c940d",
    "#495057"];
  const DASHES = ["", "6 3", "2 3", "8 3 2 3"]; // series differ by dash too, not only colour
  const W = 480;
  const H = 220;
  const M = { top: 12, right: 14, bottom: 36, left: 56 };

  function svg(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(v) {
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (Number.isInteger(v) && a < 1e7) return String(v);
    if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
    return String(Number(v.toPrecision(3)));
  }

  // A round step (1, 2 or 5 times a power of ten) giving about `count` ticks over [lo, hi].
  // Tolerance: 0.08 / 4 must pick 0.02, not 0.05.
  function stepFor(lo, hi, count) {
    const raw = (hi - lo) / count;
    const mag = 10 ** Math.floor(Math.log10(raw));
    return [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw * (1 - 1e-9)) || raw;
  }

  // About `count` round tick values covering [lo, hi].
  function ticks(lo, hi, count = 5) {
    if (!(hi > lo)) return [lo];
    const step = stepFor(lo, hi, count);
    const out = [];
    // 0.9 / 0.02 is 45.00000000000001: the first tick must still be 0.9.
    for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) {
      out.push(Number(t.toPrecision(12)));
    }
    return out;
  }

  function extent(values, fallback) {
    const finite = values.filter((v) => Number.isFinite(v));
    if (!finite.length) return fallback;
    let lo = Math.min(...finite);
    let hi = Math.max(...finite);
    if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
    return [lo, hi];
  }

  // Widen a domain to round tick values at both ends, so the axis is labelled at its ends.
  function nice([lo, hi]) {
    if (!(hi > lo)) return [lo, hi];
    const step = stepFor(lo, hi, 4);
    return [Math.floor(lo / step + 1e-9) * step, Math.ceil(hi / step - 1e-9) * step];
  }

  // Keep at most `max` points, evenly spaced, always including the last.
  function thin(points, max = 600) {
    if (points.length <= max) return points;
    const stride = points.length / max;
    const out = [];
    for (let i = 0; i < max; i += 1) out.push(points[Math.floor(i * stride)]);
    out.push(points[points.length - 1]);
    return out;
  }

  function frame(container, title, summary) {
    container.replaceChildren();
    const root = svg("svg", {
      viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}: ${summary}`, class: "chart",
    });
    container.append(root);
    return root;
  }

  // yTicks: [[position, label], ...] when the y axis is not linear (log scale).
  function axes(root, sx, sy, xDomain, yDomain, xLabel, yLabel, yTicks, xTicks) {
    const g = svg("g", { class: "axes" });
    for (const [t, text] of yTicks || ticks(...yDomain, 4).map((v) => [v, fmt(v)])) {
      const y = sy(t);
      g.append(svg("line", { x1: M.left, x2: W - M.right, y1: y, y2: y, class: "grid" }));
      g.append(svg("text", { x: M.left - 6, y: y + 4, "text-anchor": "end" }, text));
    }
    for (const [t, text] of xTicks || ticks(...xDomain, 5).map((v) => [v, fmt(v)])) {
      const x = sx(t);
      g.append(svg("line", { x1: x, x2: x, y1: H - M.bottom, y2: H - M.bottom + 4, class: "tick" }));
      g.append(svg("text", { x, y: H - M.bottom + 16, "text-anchor": "middle" }, text));
    }
    g.append(svg("line", {
      x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "axis",
    }));
    g.append(svg("text", { x: (M.left + W - M.right) / 2, y: H - 4, "text-anchor": "middle",
      class: "label" }, xLabel));
    g.append(svg("text", { x: 12, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle",
      class: "label", transform: `rotate(-90 12 ${(M.top + H - M.bottom) / 2})` }, yLabel));
    root.append(g);
  }

  function scales(xDomain, yDomain) {
    const sx = (x) => M.left + ((x - xDomain[0]) / (xDomain[1] - xDomain[0])) * (W - M.left - M.right);
    const sy = (y) => H - M.bottom - ((y - yDomain[0]) / (yDomain[1] - yDomain[0])) * (H - M.top - M.bottom);
    return [sx, sy];
  }

  function legend(container, series) {
    const list = document.createElement("ul");
    list.className = "legend";
    series.forEach((s, i) => {
      const item = document.createElement("li");
      const key = svg("svg", { width: 22, height: 8, "aria-hidden": "true" });
      key.append(s.dot ? svg("circle", { cx: 11, cy: 4, r: 3.5, fill: COLORS[i % COLORS.length] })
        : svg("line", { x1: 0, x2: 22, y1: 4, y2: 4, stroke: COLORS[i % COLORS.length],
          "stroke-width": 2.5, "stroke-dasharray": DASHES[i % DASHES.length] }));
      item.append(key, " " + s.label);
      list.append(item);
    });
    container.append(list);
  }

  // Exponential moving average as TensorBoard draws it (debiased, so the start is not pulled
  // toward zero); weight 0 leaves the points as they are.
  function smooth(points, weight) {
    if (!weight) return points;
    let last = 0;
    let n = 0;
    return points.map(([x, y]) => {
      if (!Number.isFinite(y)) return [x, y];
      last = last * weight + (1 - weight) * y;
      n += 1;
      return [x, last / (1 - weight ** n)];
    });
  }

  // The chart's state survives redraws (new data every poll): zoom, log scale, and the page's
  // smoothing, which every line chart shares.
  const shared = { smoothing: 0, charts: new Set() };
  function stateOf(container) {
    if (!container.chartState) container.chartState = { zoom: null, logY: false };
    return container.chartState;
  }

  function setSmoothing(weight) {
    shared.smoothing = weight;
    for (const redraw of [...shared.charts]) redraw(); // a copy: each redraw re-registers
  }

  // Index of the point whose x is nearest to x (points sorted by x).
  function nearest(points, x) {
    let lo = 0;
    let hi = points.length - 1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (points[mid][0] < x) lo = mid; else hi = mid;
    }
    return Math.abs(points[lo][0] - x) <= Math.abs(points[hi][0] - x) ? lo : hi;
  }

  // x in data units for a mouse event over the chart's svg.
  function eventX(root, event, xDomain) {
    const box = root.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * W;
    const frac = (px - M.left) / (W - M.left - M.right);
    return xDomain[0] + Math.min(1, Math.max(0, frac)) * (xDomain[1] - xDomain[0]);
  }

  function tooltip(container) {
    let tip = container.querySelector(".chart-tip");
    if (!tip) {
      tip = document.createElement("div");
      tip.className = "chart-tip";
      tip.hidden = true;
      tip.setAttribute("role", "status");
      container.append(tip);
    }
    return tip;
  }

  function showTip(container, root, px, py, lines) {
    const tip = tooltip(container);
    tip.replaceChildren(...lines.map((text) => Object.assign(document.createElement("div"),
      { textContent: text })));
    tip.hidden = false;
    const box = root.getBoundingClientRect();
    const host = container.getBoundingClientRect();
    const x = box.left - host.left + (px / W) * box.width;
    const y = box.top - host.top + (py / H) * box.height;
    tip.style.left = `${Math.min(x + 12, host.width - tip.offsetWidth - 4)}px`;
    tip.style.top = `${Math.max(0, y - tip.offsetHeight - 8)}px`;
  }

  // A row of controls above a chart: log scale, and reset once zoomed.
  function controls(container, state, redraw, opts) {
    const bar = document.createElement("div");
    bar.className = "chart-controls";
    if (opts.logToggle !== false) {
      const id = `${container.id || "chart"}-log`;
      const box = Object.assign(document.createElement("input"),
        { type: "checkbox", id, checked: state.logY, className: "log-toggle" });
      box.addEventListener("change", () => {
        state.logY = box.checked;
        if (opts.logResetsZoom) state.zoom = null; // the zoomed range was on the other scale
        redraw();
      });
      const label = Object.assign(document.createElement("label"), { htmlFor: id });
      label.append(box, " log scale");
      bar.append(label);
    }
    const reset = Object.assign(document.createElement("button"),
      { type: "button", textContent: "Reset zoom", className: "zoom-reset" });
    reset.hidden = !state.zoom;
    reset.setAttribute("aria-label", `Reset zoom of ${opts.title}`);
    reset.addEventListener("click", () => { state.zoom = null; redraw(); });
    bar.append(reset);
    container.append(bar);
  }

  // Drag across the plot to zoom into that x range; a double click resets.
  function zoomable(root, state, xDomain, redraw) {
    const band = svg("rect", { y: M.top, height: H - M.top - M.bottom, class: "zoom-band",
      visibility: "hidden" });
    root.append(band);
    let from = null;
    const toPx = (x) => M.left + ((x - xDomain[0]) / (xDomain[1] - xDomain[0])) *
      (W - M.left - M.right);
    root.addEventListener("mousedown", (event) => {
      from = eventX(root, event, xDomain);
      event.preventDefault();
    });
    root.addEventListener("mousemove", (event) => {
      if (from === null) return;
      const to = eventX(root, event, xDomain);
      band.setAttribute("x", String(toPx(Math.min(from, to))));
      band.setAttribute("width", String(Math.abs(toPx(to) - toPx(from))));
      band.setAttribute("visibility", "visible");
    });
    const finish = (event) => {
      if (from === null) return;
      const to = eventX(root, event, xDomain);
      const lo = Math.min(from, to);
      const hi = Math.max(from, to);
      from = null;
      band.setAttribute("visibility", "hidden");
      if (toPx(hi) - toPx(lo) > 4) { state.zoom = [lo, hi]; redraw(); }
    };
    root.addEventListener("mouseup", finish);
    root.addEventListener("mouseleave", () => { from = null; band.setAttribute("visibility", "hidden"); });
    root.addEventListener("dblclick", () => { if (state.zoom) { state.zoom = null; redraw(); } });
  }

  // y axis on a log10 scale: positions are log10(y); ticks at powers of ten (or 1-2-5 steps
  // within one decade), labelled with the values.
  function logTicks(lo, hi) {
    const out = [];
    for (let e = Math.floor(lo); e <= Math.ceil(hi); e += 1) {
      for (const m of hi - lo < 1.5 ? [1, 2, 5] : [1]) {
        const t = e + Math.log10(m);
        if (t >= lo - 1e-9 && t <= hi + 1e-9) out.push(t);
      }
    }
    return out.length >= 2 ? out : ticks(lo, hi, 4);
  }

  // series: [{label, points: [[x, y], ...]}]; opts: {title, xLabel, yLabel, yDomain, empty,
  // legend}. Hover shows the values at the nearest step; drag zooms; controls toggle a log y
  // axis and reset the zoom; the page's smoothing (setSmoothing) applies.
  function line(container, series, opts) {
    const state = stateOf(container);
    const redraw = () => line(container, series, opts);
    container.chartRedraw && shared.charts.delete(container.chartRedraw);
    container.chartRedraw = redraw;
    shared.charts.add(redraw);
    const drawn = series.filter((s) => s.points.length);
    if (!drawn.length) {
      container.replaceChildren(Object.assign(document.createElement("p"),
        { className: "empty", textContent: opts.empty || "No data yet." }));
      return;
    }
    const logY = state.logY && drawn.every((s) => s.points.some(([, y]) => y > 0));
    const ty = (y) => (logY ? (y > 0 ? Math.log10(y) : NaN) : y);
    const all = drawn.flatMap((s) => s.points);
    const full = extent(all.map((p) => p[0]), [0, 1]);
    const xDomain = state.zoom || full;
    const inView = (p) => p[0] >= xDomain[0] && p[0] <= xDomain[1];
    const lines = drawn.map((s) => {
      const smoothed = smooth(s.points, shared.smoothing);
      return { ...s, raw: s.points, points: smoothed };
    });
    const visible = lines.flatMap((s) => s.points.filter(inView).map((p) => ty(p[1])));
    const yDomain = !logY && opts.yDomain && !state.zoom ? opts.yDomain
      : (logY ? extent(visible, [0, 1]) : nice(extent(visible, [0, 1])));
    const last = drawn.map((s) => `${s.label} ${fmt(s.points[s.points.length - 1][1])}`);
    const root = frame(container, opts.title, `latest ${last.join(", ")}`);
    controls(container, state, redraw, opts);
    container.append(root); // below the controls
    const [sx, sy] = scales(xDomain, yDomain);
    axes(root, sx, sy, xDomain, yDomain, opts.xLabel || "step",
      logY ? `${opts.yLabel || ""} (log)` : opts.yLabel || "",
      logY ? logTicks(...yDomain).map((t) => [t, fmt(Number((10 ** t).toPrecision(6)))]) : null);
    const clip = svg("clipPath", { id: `${container.id || "c"}-clip` });
    clip.append(svg("rect", { x: M.left, y: M.top, width: W - M.left - M.right,
      height: H - M.top - M.bottom }));
    root.append(clip);
    const path = (points) => thin(points.filter(inView)).filter((p) => Number.isFinite(ty(p[1])))
      .map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(ty(p[1])).toFixed(1)}`).join("");
    lines.forEach((s, i) => {
      if (shared.smoothing) {
        root.append(svg("path", { d: path(s.raw), fill: "none", stroke: COLORS[i % COLORS.length],
          "stroke-width": 1, opacity: 0.25, class: "raw", "clip-path": `url(#${clip.id})` }));
      }
      root.append(svg("path", { d: path(s.points), fill: "none", stroke: COLORS[i % COLORS.length],
        "stroke-width": 2, "stroke-dasharray": DASHES[i % DASHES.length], class: "series",
        "data-label": s.label, "clip-path": `url(#${clip.id})` }));
    });
    if (drawn.length > 1 || opts.legend) legend(container, drawn);

    const cursor = svg("g", { class: "cursor", visibility: "hidden" });
    cursor.append(svg("line", { y1: M.top, y2: H - M.bottom, class: "cursor-line" }));
    root.append(cursor);
    root.addEventListener("mousemove", (event) => {
      const x = eventX(root, event, xDomain);
      const parts = [];
      cursor.querySelectorAll("circle").forEach((c) => c.remove());
      let at = null;
      lines.forEach((s, i) => {
        const p = s.points[nearest(s.points, x)];
        if (!inView(p) || !Number.isFinite(ty(p[1]))) return;
        at = at === null ? p[0] : at;
        parts.push(`${s.label} ${fmt(Number(p[1].toPrecision(4)))}`);
        cursor.append(svg("circle", { cx: sx(p[0]), cy: sy(ty(p[1])), r: 3.5, fill: COLORS[i % COLORS.length] }));
      });
      if (at === null) return;
      const line = cursor.querySelector("line");
      line.setAttribute("x1", String(sx(at)));
      line.setAttribute("x2", String(sx(at)));
      cursor.setAttribute("visibility", "visible");
      showTip(container, root, sx(at), M.top + 10, [`${opts.xLabel || "step"} ${fmt(at)}`, ...parts]);
    });
    root.addEventListener("mouseleave", () => {
      cursor.setAttribute("visibility", "hidden");
      tooltip(container).hidden = true;
    });
    zoomable(root, state, xDomain, redraw);
  }

  // items: [{label, value, total?}] drawn as horizontal bars; a bar's track is `total` (or max).
  // opts: {title, format, marker: {value, label}} (marker: a vertical line, e.g. the budget).
  function bars(container, items, opts) {
    if (!items.length) {
      container.replaceChildren(Object.assign(document.createElement("p"),
        { className: "empty", textContent: "No data yet." }));
      return;
    }
    const rowH = 20;
    const left = 150;
    const right = 70;
    const height = items.length * rowH + 24;
    const max = opts.max || Math.max(...items.map((it) => it.total ?? it.value), 1e-12);
    container.replaceChildren();
    const root = svg("svg", { viewBox: `0 0 ${W} ${height}`, role: "img", class: "chart bars",
      "aria-label": `${opts.title}: ${items.map((it) => `${it.label} ${opts.format(it.value)}`)
        .join(", ")}` });
    const sx = (v) => left + (v / max) * (W - left - right);
    items.forEach((it, i) => {
      const y = 4 + i * rowH;
      root.append(svg("text", { x: left - 6, y: y + 13, "text-anchor": "end", class: "bar-label" },
        it.label.length > 24 ? "…" + it.label.slice(-23) : it.label));
      if (it.total !== undefined) {
        root.append(svg("rect", { x: left, y: y + 2, width: Math.max(0, sx(it.total) - left),
          height: rowH - 6, class: "track" }));
      }
      root.append(svg("rect", { x: left, y: y + 2, width: Math.max(0.5, sx(it.value) - left),
        height: rowH - 6, class: "fill", "data-value": it.value }));
      root.append(svg("text", { x: W - right + 6, y: y + 13, class: "bar-value" },
        opts.format(it.value)));
    });
    if (opts.marker) {
      const x = sx(opts.marker.value);
      root.append(svg("line", { x1: x, x2: x, y1: 0, y2: height - 20, class: "marker" }));
      root.append(svg("text", { x, y: height - 6, "text-anchor": "middle", class: "marker-label" },
        opts.marker.label));
    }
    container.append(root);
  }

  // Measured samples as dots and the fitted line intercept + slope * x.
  function fit(container, samples, model, opts) {
    const xs = samples.map((s) => s[0]);
    const xDomain = extent([0, ...xs], [0, 1]);
    const fitted = (x) => model.intercept + model.slope * x;
    const yDomain = nice(extent([0, ...samples.map((s) => s[1]), fitted(xDomain[0]),
      fitted(xDomain[1])], [0, 1]));
    const root = frame(container, opts.title,
      `${samples.length} measured samples; fitted ${fmt(model.intercept)} + ${fmt(model.slope)} x`);
    const [sx, sy] = scales(xDomain, yDomain);
    axes(root, sx, sy, xDomain, yDomain, opts.xLabel, opts.yLabel);
    root.append(svg("line", { x1: sx(xDomain[0]), y1: sy(fitted(xDomain[0])), x2: sx(xDomain[1]),
      y2: sy(fitted(xDomain[1])), stroke: COLORS[1], "stroke-width": 2, "stroke-dasharray": DASHES[1],
      class: "series fitted" }));
    for (const [x, y] of samples) {
      root.append(svg("circle", { cx: sx(x), cy: sy(y), r: 3.5, fill: COLORS[0], class: "sample" }));
    }
    legend(container, [{ label: "measured", dot: true }, { label: "fitted" }]);
  }

  const util = { svg, fmt, ticks, extent, nice, scales, axes, frame, tooltip, showTip, controls,
    stateOf, zoomable, logTicks, COLORS, W, H, M };
  return { line, bars, fit, smooth, setSmoothing, util };
})();
