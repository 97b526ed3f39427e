// The compare view at "/compare?ids=a,b,...": the curves of several jobs overlaid (loss,
// accuracy, budget fraction, beta), and their specs and results side by side, the fields
// that differ highlighted.
"use strict";

(() => {
  const { el, fmtNum, fmtPct } = Spartan;
  const ids = (new URLSearchParams(location.search).get("ids") || "").split(",")
    .map((s) => s.trim()).filter(Boolean).slice(0, 8);

  // All records of a job's metrics.jsonl (pages of `limit` until none are left).
  async function metricsOf(id) {
    const out = [];
    let since = -1;
    for (;;) {
      const page = await Spartan.getJSON(`/v1/jobs/${id}/metrics?since=${since}`);
      out.push(...page.data);
      if (!page.data.length || page.data.length >= page.count) return out;
      since = page.data[page.data.length - 1].step;
    }
  }

  // A job's curve for one quantity: per-step records where there are any, else per-epoch.
  function curve(records, key) {
    const steps = records.filter((r) => r.kind !== "epoch" && typeof r[key] === "number");
    const use = steps.length ? steps : records.filter((r) => typeof r[key] === "number");
    return use.map((r) => [r.step, r[key]]);
  }

  function label(job) {
    return job.name || `${(job.spec.model || {}).arch} ${job.id.slice(0, 6)}`;
  }

  // {"sparsity.budget": 0.1, ...}: nested objects flattened to dotted keys; lists as JSON.
  function flatten(value, prefix, out) {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
    } else {
      out[prefix] = value;
    }
    return out;
  }

  function show(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "number") return fmtNum(value);
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  function resultRows(job) {
    const r = job.results || {};
    return {
      "result.status": job.status,
      "result.accuracy": r.accuracy === undefined ? null : fmtPct(r.accuracy),
      "result.measured_latency_ms": r.measured_latency,
      "result.predicted_latency_ms": r.predicted_latency,
      "result.density": r.density,
    };
  }

  function drawTable(jobs) {
    const flat = jobs.map((j) => ({ ...resultRows(j), ...flatten(j.spec, "", {}) }));
    const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))];
    const head = document.querySelector("#spec-table thead tr");
    head.replaceChildren(el("th", { scope: "col", text: "Field" }), ...jobs.map((j) =>
      el("th", { scope: "col" }, el("a", { href: `/jobs/${j.id}`, text: label(j) }))));
    const onlyDiff = document.getElementById("only-diff").checked;
    document.querySelector("#spec-table tbody").replaceChildren(...keys.flatMap((key) => {
      const values = flat.map((f) => show(f[key]));
      const differs = new Set(values).size > 1;
      if (onlyDiff && !differs) return [];
      return [el("tr", { class: differs ? "differs" : null, "data-field": key },
        el("th", { scope: "row", class: "mono", text: key }),
        ...values.map((v) => el("td", { text: v })))];
    }));
  }

  function drawCharts(jobs, records) {
    const charts = [["chart-loss", "loss", "Loss", "loss"],
      ["chart-accuracy", "accuracy", "Accuracy", "accuracy"],
      ["chart-budget", "budget_fraction", "Budget fraction", "fraction of cost kept"],
      ["chart-beta", "beta", "Beta", "beta"]];
    for (const [id, key, title, yLabel] of charts) {
      Charts.line(document.getElementById(id), jobs.map((j, i) => ({
        label: label(j), points: curve(records[i], key) })),
      { title, yLabel, legend: true, empty: "Nothing logged yet." });
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const slider = document.getElementById("smoothing");
    slider.addEventListener("input", () => {
      document.getElementById("smoothing-value").textContent = slider.value;
      Charts.setSmoothing(Number(slider.value));
    });
    if (ids.length < 2) {
      document.getElementById("compare-empty").hidden = false;
      return;
    }
    let jobs = [];
    document.getElementById("only-diff").addEventListener("change", () => drawTable(jobs));
    Spartan.poll(async () => {
      jobs = await Promise.all(ids.map((id) => Spartan.getJSON(`/v1/jobs/${id}`)));
      const records = await Promise.all(ids.map(metricsOf));
      document.getElementById("compare-title").textContent = `Compare ${jobs.length} jobs`;
      drawTable(jobs);
      drawCharts(jobs, records);
      return jobs.some((j) => !["succeeded", "failed", "cancelled"].includes(j.status));
    }, 3000);
  });
})();
