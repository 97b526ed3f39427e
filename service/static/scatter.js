// The sweep's accuracy against measured latency: one dot per point (a link to its job), the
// Pareto frontier as a line through its points, the dense model as a square. Hover shows a
// point's figures; drag zooms into a latency range; "log scale" puts latency on a log axis.
"use strict";

const Scatter = (() => {
  const { svg, fmt, extent, nice, scales, axes, frame, tooltip, showTip, controls, stateOf,
    zoomable, logTicks, COLORS, W, H, M } = Charts.util;

  // items: [{x, y, label, href, frontier, dense, tip: [lines]}]; opts: {title, xLabel, yLabel}
  function draw(container, items, opts) {
    const state = stateOf(container);
    const redraw = () => draw(container, items, opts);
    const shown = items.filter((it) => Number.isFinite(it.x) && Number.isFinite(it.y));
    if (!shown.length) {
      container.replaceChildren(Object.assign(document.createElement("p"),
        { className: "empty", textContent: opts.empty || "No measured points yet." }));
      return;
    }
    const logX = state.logY && shown.every((it) => it.x > 0); // the toggle: latency axis
    const tx = (x) => (logX ? Math.log10(x) : x);
    const fullX = extent(shown.map((it) => tx(it.x)), [0, 1]);
    const pad = (fullX[1] - fullX[0]) * 0.06;
    const xDomain = state.zoom || (logX ? [fullX[0] - pad, fullX[1] + pad]
      : nice([Math.max(0, fullX[0] - pad), fullX[1] + pad]));
    const inView = (it) => tx(it.x) >= xDomain[0] && tx(it.x) <= xDomain[1];
    const yDomain = nice(extent(shown.filter(inView).map((it) => it.y), [0, 1]));
    const frontier = shown.filter((it) => it.frontier).sort((a, b) => a.x - b.x);
    const root = frame(container, opts.title, `${shown.length} points; frontier ` +
      frontier.map((it) => `${it.label}: ${fmt(it.y)} at ${fmt(it.x)}`).join(", "));
    controls(container, state, redraw, opts);
    container.append(root);
    const [sx, sy] = scales(xDomain, yDomain);
    const px = (it) => sx(tx(it.x));
    axes(root, sx, sy, xDomain, yDomain, logX ? `${opts.xLabel} (log)` : opts.xLabel,
      opts.yLabel, null,
      logX ? logTicks(...xDomain).map((t) => [t, fmt(Number((10 ** t).toPrecision(6)))]) : null);
    const clip = svg("clipPath", { id: `${container.id || "s"}-clip` });
    clip.append(svg("rect", { x: M.left - 6, y: M.top - 6, width: W - M.left - M.right + 12,
      height: H - M.top - M.bottom + 12 }));
    root.append(clip);
    const layer = svg("g", { "clip-path": `url(#${clip.id})` });
    root.append(layer);
    if (frontier.length > 1) {
      layer.append(svg("path", { class: "frontier", fill: "none", stroke: COLORS[1],
        "stroke-width": 2, d: frontier.map((it, i) =>
          `${i ? "L" : "M"}${px(it).toFixed(1)},${sy(it.y).toFixed(1)}`).join("") }));
    }
    for (const it of shown) {
      const link = svg("a", { href: it.href, class: "point", "aria-label": it.tip.join(", ") });
      const x = px(it);
      const y = sy(it.y);
      const mark = it.dense
        ? svg("rect", { x: x - 5, y: y - 5, width: 10, height: 10, class: "dense-mark" })
        : svg("circle", { cx: x, cy: y, r: it.frontier ? 5.5 : 4.5,
          class: it.frontier ? "on-frontier" : "off-frontier" });
      link.append(mark, svg("title", {}, it.tip.join("\n")));
      if (it.dense || it.frontier) {
        link.append(svg("text", { x: x + 8, y: y - 7, class: "point-label" },
          it.dense ? "dense" : it.label));
      }
      link.addEventListener("mouseenter", () => showTip(container, root, x, y, it.tip));
      link.addEventListener("mouseleave", () => { tooltip(container).hidden = true; });
      link.addEventListener("focus", () => showTip(container, root, x, y, it.tip));
      link.addEventListener("blur", () => { tooltip(container).hidden = true; });
      layer.append(link);
    }
    const key = document.createElement("ul");
    key.className = "legend";
    for (const [cls, text] of [["on-frontier", "on the frontier"], ["off-frontier", "other points"],
      ["dense-mark", "dense model"]]) {
      const item = document.createElement("li");
      const icon = svg("svg", { width: 14, height: 12, "aria-hidden": "true" });
      icon.append(cls === "dense-mark" ? svg("rect", { x: 2, y: 1, width: 10, height: 10, class: cls })
        : svg("circle", { cx: 7, cy: 6, r: 4.5, class: cls }));
      item.append(icon, " " + text);
      key.append(item);
    }
    container.append(key);
    zoomable(root, state, xDomain, redraw);
  }

  return { draw };
})();
