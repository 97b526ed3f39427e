// Small SVG charts: line charts over steps, horizontal bars, measured points with a fitted line.
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#1f6fb5", "#d9480f", "#2b8a3e", "#7048e8"];
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

  // About `count` round tick values covering [lo, hi].
  function ticks(lo, hi, count = 5) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / count;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
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
    const t = ticks(lo, hi, 4);
    const step = t.length > 1 ? t[1] - t[0] : 0;
    if (!step) return [lo, hi];
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

  function axes(root, sx, sy, xDomain, yDomain, xLabel, yLabel) {
    const g = svg("g", { class: "axes" });
    for (const t of ticks(...yDomain, 4)) {
      const y = sy(t);
      g.append(svg("line", { x1: M.left, x2: W - M.right, y1: y, y2: y, class: "grid" }));
      g.append(svg("text", { x: M.left - 6, y: y + 4, "text-anchor": "end" }, fmt(t)));
    }
    for (const t of ticks(...xDomain, 5)) {
      const x = sx(t);
      g.append(svg("line", { x1: x, x2: x, y1: H - M.bottom, y2: H - M.bottom + 4, class: "tick" }));
      g.append(svg("text", { x, y: H - M.bottom + 16, "text-anchor": "middle" }, fmt(t)));
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
      key.append(s.dot ? svg("circle", { cx: 11, cy: 4, r: 3.5, fill: COLORS[i % 4] })
        : svg("line", { x1: 0, x2: 22, y1: 4, y2: 4, stroke: COLORS[i % 4],
          "stroke-width": 2.5, "stroke-dasharray": DASHES[i % 4] }));
      item.append(key, " " + s.label);
      list.append(item);
    });
    container.append(list);
  }

  // series: [{label, points: [[x, y], ...]}]; opts: {title, xLabel, yLabel, yDomain}
  function line(container, series, opts) {
    const drawn = series.filter((s) => s.points.length);
    if (!drawn.length) {
      container.replaceChildren(Object.assign(document.createElement("p"),
        { className: "empty", textContent: opts.empty || "No data yet." }));
      return;
    }
    const all = drawn.flatMap((s) => s.points);
    const xDomain = extent(all.map((p) => p[0]), [0, 1]);
    const yDomain = opts.yDomain || nice(extent(all.map((p) => p[1]), [0, 1]));
    const last = drawn.map((s) => `${s.label} ${fmt(s.points[s.points.length - 1][1])}`);
    const root = frame(container, opts.title, `latest ${last.join(", ")}`);
    const [sx, sy] = scales(xDomain, yDomain);
    axes(root, sx, sy, xDomain, yDomain, opts.xLabel || "step", opts.yLabel || "");
    drawn.forEach((s, i) => {
      const d = thin(s.points).filter((p) => Number.isFinite(p[1]))
        .map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
      root.append(svg("path", { d, fill: "none", stroke: COLORS[i % 4], "stroke-width": 2,
        "stroke-dasharray": DASHES[i % 4], class: "series", "data-label": s.label }));
    });
    if (drawn.length > 1 || opts.legend) legend(container, drawn);
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

  return { line, bars, fit };
})();
