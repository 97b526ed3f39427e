// The job list at "/": polls GET /v1/jobs and updates rows in place (focus stays put); sorts
// and filters the loaded jobs in the page; selected jobs open in the compare view.
"use strict";

(() => {
  const { el } = Spartan;
  const rows = new Map(); // job id -> {tr, update, job}
  const selected = new Set();
  const LIMIT = 200;
  const sort = { key: null, dir: 1 }; // null: the API's order, newest first

  const results = (job) => job.results || {};
  const SORT_KEYS = {
    name: (j) => (j.name || "").toLowerCase(),
    status: (j) => j.status,
    budget: (j) => (j.spec.cost_model || {}).budget_ms ?? (j.spec.sparsity || {}).budget,
    accuracy: (j) => results(j).accuracy,
    latency: (j) => results(j).measured_latency,
    created: (j) => j.created_at,
  };

  // Missing values sort last whichever the direction.
  function compare(a, b) {
    const get = SORT_KEYS[sort.key];
    const x = get(a);
    const y = get(b);
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * sort.dir;
  }

  function filters() {
    const text = document.getElementById("filter-text").value.trim().toLowerCase();
    const acc = parseFloat(document.getElementById("filter-accuracy").value);
    const lat = parseFloat(document.getElementById("filter-latency").value);
    return (job) => {
      const tags = (job.spec.tags || []).map((t) => t.toLowerCase());
      if (text && !(job.name || "").toLowerCase().includes(text) && !job.id.startsWith(text) &&
        !tags.some((t) => t.includes(text))) return false;
      if (Number.isFinite(acc) && !(results(job).accuracy * 100 >= acc)) return false;
      if (Number.isFinite(lat) && !(results(job).measured_latency <= lat)) return false;
      return true;
    };
  }

  function makeRow(job, refresh) {
    const cells = {};
    const names = ["select", "name", "id", "status", "progress", "method", "budget", "accuracy",
      "latency", "model", "dataset", "tags", "where", "created", "duration", "action"];
    const tr = el("tr", { "data-job-id": job.id });
    for (const name of names) {
      cells[name] = el(name === "name" ? "th" : "td", {
        class: "col-" + name + (name === "accuracy" || name === "latency" ? " num" : "") });
      if (name === "name") cells[name].setAttribute("scope", "row");
      tr.append(cells[name]);
    }
    const pick = el("input", { type: "checkbox", class: "pick" });
    pick.addEventListener("change", () => {
      if (pick.checked) selected.add(job.id); else selected.delete(job.id);
      updateCompare();
    });
    cells.select.append(pick);
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
      pick.setAttribute("aria-label", `Select ${link.textContent} to compare`);
      row.job = j;
      if (j.status !== lastStatus) {
        const badge = Spartan.statusBadge(j.status);
        if (j.error) badge.title = j.error;
        cells.status.replaceChildren(badge);
        lastStatus = j.status;
      }
      bar.update(j);
      cells.method.textContent = (spec.sparsity || {}).method || "—";
      cells.budget.textContent = Spartan.budgetText(spec);
      // The task's metric: accuracy as a percentage, r2 and perplexity as numbers, named.
      const r = results(j);
      cells.accuracy.textContent = !r.metric || r.metric === "accuracy" ? Spartan.fmtPct(r.accuracy)
        : typeof r.accuracy === "number" ? `${r.metric} ${Spartan.fmtNum(r.accuracy)}` : "—";
      const ms = results(j).measured_latency;
      cells.latency.textContent = typeof ms === "number" ? `${Spartan.fmtNum(ms)} ms` : "—";
      cells.tags.replaceChildren(...(spec.tags || []).map((t) => (t.startsWith("sweep:")
        ? el("a", { class: "tag", href: `/sweeps/${encodeURIComponent(t.slice(6))}`, title: t,
          text: `sweep ${t.slice(6, 14)}` })
        : el("span", { class: "tag", text: t }))));
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
    const row = { tr, update, job };
    update(job);
    return row;
  }

  function updateCompare() {
    const button = document.getElementById("compare");
    button.disabled = selected.size < 2;
    button.textContent = selected.size ? `Compare selected (${selected.size})` : "Compare selected";
  }

  // Sorted and filtered in the page: the rows keep their elements (and focus), only move.
  function arrange(tbody, order) {
    const keep = filters();
    let list = order.map((id) => rows.get(id)).filter(Boolean);
    if (sort.key) list = [...list].sort((a, b) => compare(a.job, b.job));
    let shown = 0;
    list.forEach((row, index) => {
      row.tr.hidden = !keep(row.job);
      shown += row.tr.hidden ? 0 : 1;
      if (tbody.children[index] !== row.tr) tbody.insertBefore(row.tr, tbody.children[index] || null);
    });
    document.getElementById("no-match").hidden = shown > 0 || !list.length;
    return shown;
  }

  function setupSorting(rearrange) {
    document.querySelectorAll("#jobs th[data-sort]").forEach((th) => {
      const key = th.dataset.sort;
      const button = el("button", { type: "button", class: "sort", text: th.textContent });
      th.replaceChildren(button);
      button.addEventListener("click", () => {
        // ascending, descending, then back to the API's order
        if (sort.key !== key) { sort.key = key; sort.dir = 1; }
        else if (sort.dir === 1) sort.dir = -1;
        else sort.key = null;
        document.querySelectorAll("#jobs th[data-sort]").forEach((other) => {
          other.setAttribute("aria-sort", other.dataset.sort === sort.key
            ? (sort.dir === 1 ? "ascending" : "descending") : "none");
        });
        rearrange();
      });
      th.setAttribute("aria-sort", "none");
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const tbody = document.querySelector("#jobs tbody");
    const filter = document.getElementById("status-filter");
    filter.value = new URLSearchParams(location.search).get("status") || "";
    let poller = null;
    const refresh = () => poller && poller.now();

    let order = []; // job ids in the API's order
    const rearrange = () => {
      const shown = arrange(tbody, order);
      const count = document.getElementById("job-count");
      const total = count.dataset.total ? Number(count.dataset.total) : order.length;
      const base = total > order.length ? `showing ${order.length} of ${total}`
        : `${total} job${total === 1 ? "" : "s"}`;
      count.textContent = shown < order.length ? `${base} (${shown} match)` : base;
    };

    async function loadJobs() {
      const params = new URLSearchParams({ limit: String(LIMIT) });
      if (filter.value) params.set("status", filter.value);
      const page = await Spartan.getJSON(`/v1/jobs?${params}`);
      const seen = new Set();
      page.data.forEach((job) => {
        seen.add(job.id);
        const row = rows.get(job.id);
        if (!row) rows.set(job.id, makeRow(job, refresh));
        else row.update(job);
      });
      for (const [id, row] of rows) {
        if (!seen.has(id)) { row.tr.remove(); rows.delete(id); selected.delete(id); }
      }
      order = page.data.map((job) => job.id);
      document.getElementById("no-jobs").hidden = page.count > 0;
      document.getElementById("job-count").dataset.total = String(page.count);
      rearrange();
      updateCompare();
    }

    setupSorting(rearrange);
    for (const id of ["filter-text", "filter-accuracy", "filter-latency"]) {
      document.getElementById(id).addEventListener("input", rearrange);
    }
    document.getElementById("compare").addEventListener("click", () => {
      location.href = `/compare?ids=${[...selected].join(",")}`;
    });

    filter.addEventListener("change", () => {
      const url = new URL(location.href);
      if (filter.value) url.searchParams.set("status", filter.value);
      else url.searchParams.delete("status");
      history.replaceState(null, "", url);
      refresh();
    });
    poller = Spartan.poll(loadJobs, 2000);
    Spartan.poll(loadCostModels, 5000);
    Spartan.poll(loadSweeps, 5000);
  });

  async function loadSweeps() {
    const page = await Spartan.getJSON("/v1/sweeps?limit=20");
    document.getElementById("sweeps-section").hidden = !page.data.length;
    document.querySelector("#sweeps tbody").replaceChildren(...page.data.map((sw) => el("tr",
      { "data-sweep-id": sw.id },
      el("th", { scope: "row" }, el("a", { href: `/sweeps/${sw.id}`,
        text: sw.name || `sweep ${sw.id.slice(0, 8)}` })),
      el("td", { class: "mono", text: sw.id.slice(0, 8) }),
      el("td", {}, Spartan.statusBadge(sw.status)),
      el("td", { text: Object.entries(sw.counts).map(([k, n]) => `${n} ${k}`).join(", ") }),
      el("td", { text: sw.budgets.map((b) => (sw.budget_kind === "budget_ms" ? `${b} ms`
        : Spartan.fmtPct(b))).join(", ") }),
      el("td", { text: Spartan.fmtTime(sw.created_at) }))));
    return true; // new sweeps appear without a reload
  }

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
