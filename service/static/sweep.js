// The sweep page at "/sweeps/{id}": the accuracy-latency scatter with its frontier, the points'
// table, cancel. Polls GET /v1/sweeps/{id} until every point has ended.
"use strict";

(() => {
  const { el, fmtNum, fmtPct } = Spartan;
  const sweepId = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
  const TERMINAL = ["succeeded", "failed", "cancelled"];
  let poller = null;

  function budgetText(sweep, point) {
    if (point.budget === null) return "dense";
    return sweep.budget_kind === "budget_ms" ? `${fmtNum(point.budget)} ms` : fmtPct(point.budget);
  }

  function pointName(sweep, p) {
    return `${p.method}${p.structure ? " " + p.structure : ""} ${budgetText(sweep, p)}`;
  }

  function render(sweep) {
    const title = sweep.name || `Sweep ${sweep.id.slice(0, 8)}`;
    document.getElementById("sweep-title").textContent = title;
    document.title = `${title} · Spartan`;
    document.getElementById("sweep-status").replaceChildren(Spartan.statusBadge(sweep.status));
    document.getElementById("sweep-counts").textContent = Object.entries(sweep.counts)
      .map(([status, n]) => `${n} ${status}`).join(" · ");
    const cancel = document.getElementById("cancel-sweep");
    cancel.hidden = TERMINAL.includes(sweep.status) || sweep.cancel_requested;
    const spec = sweep.spec || {};
    document.getElementById("sweep-summary").textContent =
      `${(spec.model || {}).arch} on ${(spec.data || {}).dataset}, ` +
      `${sweep.points.length} points, budgets ${sweep.budget_kind === "budget_ms" ? "in ms" : "as fractions of the cost"}.`;
    const compare = document.getElementById("compare-link");
    compare.href = `/compare?ids=${sweep.points.map((p) => p.job_id).join(",")}`;
    compare.hidden = sweep.points.length < 2;

    const unit = sweep.latency_unit || "ms";
    const dense = sweep.dense;
    const items = sweep.points.map((p) => ({
      x: p.measured_latency, y: p.accuracy, label: budgetText(sweep, p),
      href: `/jobs/${p.job_id}`, frontier: p.pareto, dense: p.method === "dense",
      tip: [pointName(sweep, p), `accuracy ${fmtPct(p.accuracy)}`,
        `measured ${fmtNum(p.measured_latency)} ${unit}`,
        ...(p.predicted_latency !== null ? [`predicted ${fmtNum(p.predicted_latency)} ${unit}`] : [])],
    }));
    if (dense && dense.job_id === null && dense.accuracy !== null && dense.measured_latency !== null) {
      items.push({ x: dense.measured_latency, y: dense.accuracy, label: "dense", href: "#dense-note",
        frontier: false, dense: true,
        tip: ["dense model", `accuracy ${fmtPct(dense.accuracy)}`,
          `measured ${fmtNum(dense.measured_latency)} ${unit}`] });
    }
    Scatter.draw(document.getElementById("chart-frontier"), items, {
      title: "Accuracy against measured latency", xLabel: `measured latency (${unit})`,
      yLabel: "accuracy", logResetsZoom: true });
    document.getElementById("dense-note").textContent = !dense ? "" :
      `Dense model: ${dense.accuracy === null ? "accuracy not measured" : "accuracy " + fmtPct(dense.accuracy)}` +
      `${dense.measured_latency === null ? "" : `, ${fmtNum(dense.measured_latency)} ${unit}`}` +
      ` (from ${dense.source}).`;

    document.querySelector("#points tbody").replaceChildren(...sweep.points.map((p) => el("tr",
      { "data-job-id": p.job_id, class: p.pareto ? "frontier-row" : null },
      el("th", { scope: "row" }, el("a", { href: `/jobs/${p.job_id}`, text: p.job_id.slice(0, 8),
        class: "mono" })),
      el("td", { text: p.method + (p.structure ? ` (${p.structure})` : "") }),
      el("td", { class: "num", text: budgetText(sweep, p) }),
      el("td", {}, Spartan.statusBadge(p.status)),
      el("td", { class: "num", text: fmtPct(p.accuracy) }),
      el("td", { class: "num", text: p.measured_latency === null ? "—" : `${fmtNum(p.measured_latency)} ${unit}` }),
      el("td", { class: "num", text: p.predicted_latency === null ? "—" : `${fmtNum(p.predicted_latency)} ${unit}` }),
      el("td", { text: p.pareto ? "on the frontier" : "" }))));
  }

  async function tick() {
    let sweep;
    try {
      sweep = await Spartan.getJSON(`/v1/sweeps/${encodeURIComponent(sweepId)}`);
    } catch (err) {
      if (err.status === 404) {
        document.getElementById("sweep-title").textContent = "Sweep not found";
        Spartan.notice(`No sweep ${sweepId} is visible with this token.`);
        return false;
      }
      throw err;
    }
    render(sweep);
    return !TERMINAL.includes(sweep.status);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const cancel = document.getElementById("cancel-sweep");
    let armed = null;
    cancel.addEventListener("click", async () => {
      if (!armed) {
        cancel.textContent = "Confirm cancel sweep";
        armed = setTimeout(() => { armed = null; cancel.textContent = "Cancel sweep"; }, 4000);
        return;
      }
      clearTimeout(armed);
      armed = null;
      cancel.disabled = true;
      try {
        await Spartan.api(`/v1/sweeps/${encodeURIComponent(sweepId)}/cancel`, { method: "POST" });
      } catch (err) {
        if (!(err instanceof Spartan.AuthError)) Spartan.notice("Cancel failed: " + err.message);
      }
      poller && poller.now();
    });
    poller = Spartan.poll(tick, 2000);
  });
})();
