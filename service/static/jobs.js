// The job list at "/": polls GET /v1/jobs and updates rows in place (focus stays put).
"use strict";

(() => {
  const { el } = Spartan;
  const rows = new Map(); // job id -> {tr, update}
  const LIMIT = 100;

  function makeRow(job, refresh) {
    const cells = {};
    const names = ["name", "id", "status", "progress", "method", "budget", "model", "dataset",
      "where", "created", "duration", "action"];
    const tr = el("tr", { "data-job-id": job.id });
    for (const name of names) {
      cells[name] = el(name === "name" ? "th" : "td", { class: "col-" + name });
      if (name === "name") cells[name].setAttribute("scope", "row");
      tr.append(cells[name]);
    }
    const link = el("a", { href: `/jobs/${job.id}` });
    cells.name.append(link);
    cells.id.append(el("span", { class: "mono", title: job.id, text: job.id.slice(0, 8) }));
    const bar = Spartan.progressBar();
    cells.progress.append(bar.node);
    const cancel = el("button", { type: "button", class: "danger" });
    Spartan.cancelButton(cancel, job.id, `Cancel job ${job.name || job.id}`, refresh);
    cells.action.append(cancel);
    let lastStatus = null;

    function update(j) {
      const spec = j.spec || {};
      link.textContent = j.name || spec.name || `${(spec.model || {}).arch || "job"} ${j.id.slice(0, 6)}`;
      if (j.status !== lastStatus) {
        const badge = Spartan.statusBadge(j.status);
        if (j.error) badge.title = j.error;
        cells.status.replaceChildren(badge);
        lastStatus = j.status;
      }
      bar.update(j);
      cells.method.textContent = (spec.sparsity || {}).method || "—";
      cells.budget.textContent = Spartan.budgetText(spec);
      cells.model.textContent = (spec.model || {}).arch || "—";
      cells.dataset.textContent = (spec.data || {}).dataset || "—";
      const device = (j.progress || {}).device || (spec.training || {}).device || "—";
      cells.where.replaceChildren(device, el("span", { class: "worker", text: j.worker || "" }));
      cells.created.textContent = Spartan.fmtTime(j.created_at);
      cells.created.title = new Date(j.created_at).toString();
      cells.duration.textContent = Spartan.fmtDuration(Spartan.jobDuration(j));
      cancel.hidden = !(j.status === "queued" || j.status === "running");
      if (j.cancel_requested && !cancel.hidden) {
        cancel.disabled = true;
        cancel.textContent = "Cancelling…";
      }
    }
    update(job);
    return { tr, update };
  }

  document.addEventListener("DOMContentLoaded", () => {
    const tbody = document.querySelector("#jobs tbody");
    const filter = document.getElementById("status-filter");
    filter.value = new URLSearchParams(location.search).get("status") || "";
    let poller = null;
    const refresh = () => poller && poller.now();

    async function loadJobs() {
      const params = new URLSearchParams({ limit: String(LIMIT) });
      if (filter.value) params.set("status", filter.value);
      const page = await Spartan.getJSON(`/v1/jobs?${params}`);
      const seen = new Set();
      page.data.forEach((job, index) => {
        seen.add(job.id);
        let row = rows.get(job.id);
        if (!row) {
          row = makeRow(job, refresh);
          rows.set(job.id, row);
        } else {
          row.update(job);
        }
        if (tbody.children[index] !== row.tr) tbody.insertBefore(row.tr, tbody.children[index] || null);
      });
      for (const [id, row] of rows) {
        if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
      }
      document.getElementById("no-jobs").hidden = page.count > 0;
      document.getElementById("job-count").textContent = page.count > page.data.length
        ? `showing ${page.data.length} of ${page.count}` : `${page.count} job${page.count === 1 ? "" : "s"}`;
    }

    filter.addEventListener("change", () => {
      const url = new URL(location.href);
      if (filter.value) url.searchParams.set("status", filter.value);
      else url.searchParams.delete("status");
      history.replaceState(null, "", url);
      refresh();
    });
    poller = Spartan.poll(loadJobs, 2000);
    Spartan.poll(loadCostModels, 5000);
  });

  async function loadCostModels() {
    let page;
    try {
      page = await Spartan.getJSON("/v1/cost-models?limit=50");
    } catch (err) {
      if (err.status === 404 || err.status === 405) return false; // no list route: no section
      throw err;
    }
    const section = document.getElementById("cost-models-section");
    section.hidden = !page.data.length;
    document.querySelector("#cost-models tbody").replaceChildren(...page.data.map((cm) => {
      const data = cm.data || {};
      return el("tr", {},
        el("th", { scope: "row" }, el("a", { href: `/cost-models/${cm.id}`,
          text: cm.name || cm.id.slice(0, 8) })),
        el("td", { class: "mono", text: cm.id.slice(0, 8) }),
        el("td", { text: data.device || "—" }),
        el("td", { class: "num", text: String(Object.keys(data.layers || {}).length) }),
        el("td", { text: Spartan.fmtTime(cm.created_at) }));
    }));
    return false; // cost models change rarely: loaded once, not polled
  }
})();
