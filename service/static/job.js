// The job page at "/jobs/{id}": status, spec, live training charts, report and artifacts.
"use strict";

(() => {
  const { el, fmtNum, fmtPct } = Spartan;
  const TERMINAL = ["succeeded", "failed", "cancelled"];
  const jobId = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
  const metrics = []; // records of metrics.jsonl, in step order
  let lastStep = -1;
  let bar = null;
  let ended = false;
  let lastJob = null;
  let reportDevice = null; // the device the job ran on, from its report

  // The task's metric (training.task): accuracy, r2 or perplexity; accuracy is a percentage.
  function metricOf(job) {
    const p = (job && job.progress) || {};
    if (p.metric) return p.metric;
    const task = (((job && job.spec) || {}).training || {}).task;
    return { regression: "r2", causal_lm: "perplexity" }[task] || "accuracy";
  }
  const metricTitle = (m) => ({ accuracy: "Accuracy", r2: "R²", perplexity: "Perplexity" }[m] || m);
  const fmtMetric = (m, v) => (m === "accuracy" ? fmtPct(v) : fmtNum(v));

  function row(label, value) {
    return el("div", {}, el("dt", { text: label }), el("dd", {}, value ?? "—"));
  }

  function renderSummary(job) {
    const spec = job.spec || {};
    const model = spec.model || {};
    const data = spec.data || {};
    const sp = spec.sparsity || {};
    const tr = spec.training || {};
    const cost = spec.cost_model || {};
    const kwargs = Object.keys(model.kwargs || {}).length ? ` ${JSON.stringify(model.kwargs)}` : "";
    const costNode = cost.kind === "fitted" && cost.id
      ? el("a", { href: `/cost-models/${cost.id}`, text: `fitted ${cost.id.slice(0, 8)}` })
      : cost.kind || "params";
    document.getElementById("summary").replaceChildren(
      row("Model", model.arch + kwargs + (model.weights ? " (pretrained)" : "")),
      row("Dataset", data.dataset + (data.upload ? ` ${data.upload.slice(0, 8)}` : "")),
      row("Method", sp.method),
      row("Budget", Spartan.budgetText(spec)),
      row("Block", sp.block ? sp.block.join("×") : "—"),
      row("Allocation", sp.allocation),
      row("Beta", sp.beta_init !== undefined ? `${sp.beta_init} → ${sp.beta_final}` : "—"),
      row("Cost model", costNode),
      row("Epochs", String(tr.epochs ?? "—")),
      row("Batch size", String(tr.batch_size ?? "—")),
      row("Optimizer", tr.optimizer ? `${tr.optimizer}, lr ${tr.lr}` : "—"),
      row("Device", (job.progress || {}).device || reportDevice || tr.device),
      row("Worker", job.worker || "—"),
      row("Attempts", String(job.attempts ?? 0) +
        (job.resumed_from_step ? ` (resumed at step ${job.resumed_from_step})` : "")),
      row("Created", Spartan.fmtTime(job.created_at)),
      row("Duration", Spartan.fmtDuration(Spartan.jobDuration(job))),
    );
  }

  // The latest values the worker reported, in one line.
  function nowText(job) {
    const p = job.progress || {};
    const parts = [];
    if (p.epoch) parts.push(`epoch ${p.epoch}${p.epochs ? "/" + p.epochs : ""}`);
    if (p.phase) parts.push(p.phase);
    if (typeof p.loss === "number") parts.push(`loss ${fmtNum(p.loss)}`);
    const m = metricOf(job);
    const now = p[m] ?? p.accuracy;
    const val = p[`val_${m}`] ?? p.val_accuracy;
    if (typeof now === "number") parts.push(`${m} ${fmtMetric(m, now)}`);
    if (typeof val === "number") parts.push(`val ${m} ${fmtMetric(m, val)}`);
    if (typeof p.budget_fraction === "number") parts.push(`budget ${fmtPct(p.budget_fraction)}`);
    if (typeof p.beta === "number") parts.push(`beta ${fmtNum(p.beta)}`);
    if (typeof p.steps_per_s === "number") parts.push(`${fmtNum(p.steps_per_s)} steps/s`);
    return parts.length ? `Now: ${parts.join(" · ")}` : "";
  }

  function renderJob(job) {
    lastJob = job;
    const title = job.name || (job.spec || {}).name || `Job ${job.id.slice(0, 8)}`;
    document.getElementById("job-title").textContent = title;
    document.title = `${title} · Spartan`;
    document.getElementById("job-status").replaceChildren(Spartan.statusBadge(job.status));
    if (!bar) {
      bar = Spartan.progressBar();
      document.getElementById("job-progress").append(bar.node);
    }
    bar.update(job);
    const cancel = document.getElementById("cancel");
    cancel.hidden = TERMINAL.includes(job.status);
    if (job.cancel_requested && !cancel.hidden) {
      cancel.disabled = true;
      cancel.textContent = "Cancelling…";
    }
    document.getElementById("job-now").textContent = job.status === "running" ? nowText(job) : "";
    const failed = job.status === "failed" && job.error;
    document.getElementById("job-error").hidden = !failed;
    document.getElementById("job-error-text").textContent = failed ? job.error : "";
    const sweepTag = ((job.spec || {}).tags || []).find((t) => t.startsWith("sweep:"));
    const sweepBox = document.getElementById("job-sweep");
    sweepBox.hidden = !sweepTag;
    if (sweepTag && !sweepBox.firstChild) {
      const id = sweepTag.slice("sweep:".length);
      sweepBox.append("Part of ", el("a", { href: `/sweeps/${encodeURIComponent(id)}`,
        text: `sweep ${id.slice(0, 8)}` }), ".");
    }
    const warnings = job.warnings || [];
    const warnBox = document.getElementById("job-warnings");
    warnBox.hidden = !warnings.length;
    warnBox.replaceChildren(...warnings.map((w) => el("p", { text: "Warning: " + w })));
    renderSummary(job);
  }

  // New records since the last step shown; `reload` starts over (the job has ended, and the
  // worker's final metrics.jsonl replaces what was served while it ran).
  async function loadMetrics(reload) {
    if (reload) {
      metrics.length = 0;
      lastStep = -1;
    }
    let changed = reload;
    for (;;) {
      const page = await Spartan.getJSON(`/v1/jobs/${jobId}/metrics?since=${lastStep}`);
      for (const rec of page.data) {
        metrics.push(rec);
        lastStep = Math.max(lastStep, rec.step);
      }
      changed = changed || page.data.length > 0;
      if (!page.data.length || page.data.length >= page.count) break;
    }
    if (changed) drawCurves();
  }

  // Per-step records ("kind": "step") carry the training curve, per-epoch ones add validation;
  // the epoch means of loss and accuracy are left out when per-step values exist.
  function series(keys) {
    const steps = metrics.some((m) => m.kind !== "epoch");
    return keys.map((key) => ({
      label: key.replace(/_/g, " "),
      points: metrics
        .filter((m) => typeof m[key] === "number" &&
          (m.kind !== "epoch" || !steps || key.startsWith("val_")))
        .map((m) => [m.step, m[key]]),
    }));
  }

  // Fractions get the whole [0, 1] axis; anything else is scaled to its data.
  const unitDomain = (list) => (list.every((s) => s.points.every(([, y]) => y >= 0 && y <= 1))
    ? [0, 1] : undefined);

  function drawCurves() {
    const keys = [...new Set(metrics.flatMap((m) => Object.keys(m)))];
    const empty = ended ? "Nothing was logged." : "No data yet.";
    const lossKeys = keys.filter((k) => /loss/.test(k));
    // The task's own metric; records also repeat it under "accuracy" (the report's contract).
    const m = metricOf(lastJob);
    const accKeys = keys.filter((k) => (m === "accuracy" ? /acc/.test(k)
      : k === m || k.endsWith(`val_${m}`)));
    Charts.line(document.getElementById("chart-loss"), series(lossKeys),
      { title: "Loss", yLabel: "loss", legend: true, empty });
    const acc = series(accKeys);
    document.getElementById("h-acc").textContent = metricTitle(m);
    Charts.line(document.getElementById("chart-accuracy"), acc,
      { title: metricTitle(m), yLabel: m, legend: true,
        yDomain: m === "accuracy" ? unitDomain(acc) : undefined, empty });
    const budget = series(keys.filter((k) => k === "budget" || k === "budget_fraction"));
    Charts.line(document.getElementById("chart-budget"), budget,
      { title: "Budget fraction", yLabel: "fraction of cost kept", yDomain: unitDomain(budget),
        empty });
    Charts.line(document.getElementById("chart-beta"), series(keys.filter((k) => k === "beta")),
      { title: "Beta", yLabel: "beta", empty });
  }

  // report.json as the worker writes it: sparsity.layers (the Sparsifier's per-layer rows:
  // kept_fraction, cost = the layer's dense cost, kept_cost), cost (unit, budget, predicted,
  // dense, measured when timed) and accuracy (dense, sparse, final, dense_source).
  // Measured latency of the exported model and of dense, from the job's results.
  function latencyRows(job) {
    const r = (job && job.results) || {};
    const ms = (v) => (typeof v === "number" ? `${fmtNum(v)} ms` : "—");
    const rows = [["Measured latency", ms(r.dense_latency), ms(r.measured_latency)]];
    if (typeof r.dense_latency === "number" && typeof r.measured_latency === "number" &&
      r.measured_latency > 0) {
      rows.push(["Measured speedup", "1×", `${fmtNum(r.dense_latency / r.measured_latency)}×`]);
    }
    if (typeof r.predicted_latency === "number") rows.push(["Predicted latency", "—", ms(r.predicted_latency)]);
    return rows;
  }

  function renderReport(report) {
    const sparsity = report.sparsity || {};
    const cost = report.cost || {};
    const acc = report.accuracy || {};
    const unit = cost.unit ? ` ${cost.unit}` : "";
    const c = (v) => (typeof v === "number" ? `${fmtNum(v)}${unit}` : "—");
    const a = (v) => (typeof v === "number" ? fmtPct(v) : "—");
    const m = acc.metric || "accuracy";
    const mv = (v) => (typeof v === "number" ? fmtMetric(m, v) : "—");
    const within = cost.within_budget === undefined ? "" : cost.within_budget
      ? " (within)" : " (over)";
    const rows = [
      [metricTitle(m) + (acc.higher_is_better === false ? " (lower is better)" : ""),
        mv(acc.dense), mv(acc.sparse ?? acc.final)],
      ["Predicted cost", c(cost.dense), c(cost.predicted)],
      ["Budget", "—", typeof cost.budget === "number" ? c(cost.budget) + within : "—"],
      ["Kept weights (target / in saved model)", "100%",
        `${a(sparsity.density)} / ${a(sparsity.measured_density)}`],
      ...latencyRows(lastJob),
      ...(report.latency && typeof report.latency.promised === "number"
        ? [["Promised latency", "—", `${fmtNum(report.latency.promised)} ms` +
          (report.latency.kept === false ? " (missed)" : report.latency.kept ? " (kept)" : "")]]
        : []),
    ];
    document.querySelector("#report-table tbody").replaceChildren(...rows.map(([q, d, s]) =>
      el("tr", {}, el("th", { scope: "row", text: q }), el("td", { class: "num", text: d }),
        el("td", { class: "num", text: s }))));
    document.getElementById("report-note").textContent = acc.dense_source
      ? `Dense ${m}: ${acc.dense_source}.` : "";
    // The latency promise in one sentence: kept, or by how much it was missed and why.
    const lat = report.latency || {};
    const note = document.getElementById("latency-note");
    note.hidden = !lat.note;
    note.textContent = lat.note || "";
    note.className = lat.kept === false ? "warning-box" : "muted";

    const layers = (sparsity.layers || []).filter((l) => l && l.name !== undefined);
    Charts.bars(document.getElementById("chart-kept"),
      layers.filter((l) => typeof l.kept_fraction === "number").map((l) => ({
        label: String(l.name), value: l.kept_fraction, total: 1 })),
      { title: "Kept fraction per layer", format: fmtPct, max: 1 });
    const box = document.getElementById("chart-cost");
    Charts.bars(box, layers.filter((l) => typeof l.kept_cost === "number").map((l) => ({
      label: String(l.name), value: l.kept_cost,
      total: typeof l.cost === "number" ? l.cost : undefined })),
    { title: "Kept cost per layer", format: (v) => fmtNum(v) });
    if (typeof cost.predicted === "number" && typeof cost.budget === "number") {
      const total = el("div");
      const dense = typeof cost.dense === "number" ? cost.dense : undefined;
      box.append(el("p", { class: "muted",
        text: `Whole model: ${c(cost.predicted)} predicted against a budget of ${c(cost.budget)}` +
          (dense !== undefined ? `; dense ${c(dense)}.` : ".") }), total);
      Charts.bars(total, [{ label: "whole model", value: cost.predicted, total: dense }], {
        title: "Predicted cost against the budget", format: (v) => fmtNum(v),
        max: Math.max(cost.predicted, cost.budget, dense || 0),
        marker: { value: cost.budget, label: "budget" },
      });
    }
    document.querySelector("#layers-table tbody").replaceChildren(...layers.map((l) =>
      el("tr", {}, el("th", { scope: "row", class: "mono", text: String(l.name) }),
        el("td", { class: "num", text: fmtPct(l.kept_fraction) }),
        el("td", { class: "num", text: fmtNum(l.kept_cost) }),
        el("td", { class: "num", text: fmtNum(l.cost) }))));
    document.getElementById("report").hidden = false;
    reportDevice = (report.training || {}).device || null;
    if (reportDevice && lastJob) renderSummary(lastJob);
  }

  async function loadArtifacts() {
    const page = await Spartan.getJSON(`/v1/jobs/${jobId}/artifacts`);
    const list = page.data || [];
    document.getElementById("artifacts-section").hidden = !list.length;
    document.querySelector("#artifacts tbody").replaceChildren(...list.map((art) => {
      const href = `/v1/jobs/${jobId}/artifacts/${encodeURIComponent(art.name)}`;
      const link = el("a", { href, download: art.name, text: "Download",
        "aria-label": `Download ${art.name}` });
      link.addEventListener("click", (event) => {
        if (!Spartan.token()) return; // the plain link works without a token
        event.preventDefault();
        Spartan.download(href, art.name);
      });
      return el("tr", {}, el("th", { scope: "row", class: "mono", text: art.name }),
        el("td", { class: "num", text: Spartan.fmtBytes(art.size) }), el("td", {}, link));
    }));
    if (list.some((art) => art.name === "report.json")) {
      renderReport(await Spartan.getJSON(`/v1/jobs/${jobId}/artifacts/report.json`));
    }
  }

  let logSince = 0;
  async function loadLogs() {
    const box = document.getElementById("logs");
    for (;;) {
      const page = await Spartan.getJSON(`/v1/jobs/${jobId}/logs?since=${logSince}`);
      for (const rec of page.data) {
        const line = el("span", { class: `log-line level-${rec.level.toLowerCase()}`,
          text: `${Spartan.fmtTime(rec.created_at)} ${rec.level} ${rec.logger}: ${rec.message}\n` });
        box.append(line);
        logSince = Math.max(logSince, rec.id);
      }
      if (!page.data.length || page.data.length >= page.count) break;
    }
    box.hidden = !box.childNodes.length;
    document.getElementById("logs-empty").hidden = !box.hidden;
  }

  let poller = null;
  async function tick() {
    let job;
    try {
      job = await Spartan.getJSON(`/v1/jobs/${jobId}`);
    } catch (err) {
      if (err.status === 404) {
        document.getElementById("job-title").textContent = "Job not found";
        Spartan.notice(`No job ${jobId} is visible with this token.`);
        return false;
      }
      throw err;
    }
    renderJob(job);
    ended = TERMINAL.includes(job.status);
    if (job.status !== "queued" || metrics.length) await loadMetrics(ended);
    if (job.status !== "queued") await loadLogs();
    if (ended) {
      if (job.status !== "succeeded") {
        for (const id of ["chart-kept", "chart-cost"]) {
          document.getElementById(id).replaceChildren(el("p", { class: "empty",
            text: `No report: the job ${job.status === "failed" ? "failed" : "was cancelled"}.` }));
        }
      }
      await loadArtifacts();
      return false; // nothing changes after the end
    }
    return true;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const slider = document.getElementById("smoothing");
    slider.addEventListener("input", () => {
      document.getElementById("smoothing-value").textContent = slider.value;
      Charts.setSmoothing(Number(slider.value));
    });
    drawCurves();
    const cancel = document.getElementById("cancel");
    Spartan.cancelButton(cancel, jobId, "Cancel this job", () => poller && poller.now());
    poller = Spartan.poll(tick, 1500);
  });
})();
