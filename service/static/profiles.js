// The profiles page at "/profiles": every profile job, its progress, the hardware it ran on
// and the cost model it made, refreshed while any is queued or running.
"use strict";

(() => {
  const { el, statusBadge } = Spartan;

  function hardwareText(hw) {
    if (!hw) return "—";
    return hw.device === "cuda" ? `${hw.gpu} · CUDA ${hw.cuda} · torch ${hw.torch}`
      : `${hw.cpu} · ${hw.threads} thread${hw.threads === 1 ? "" : "s"} · torch ${hw.torch}`;
  }

  function progressText(p) {
    const progress = p.progress || {};
    if (p.status === "succeeded") return "done";
    if (p.status === "failed") return p.error || "failed";
    if (progress.phase === "profiling" && progress.layers) {
      return `batch ${progress.batch}: layer ${progress.layers_done}/${progress.layers}`;
    }
    return progress.phase || p.status;
  }

  function row(p) {
    const spec = p.spec || {};
    const model = p.cost_model_id
      ? el("a", { href: `/cost-models/${encodeURIComponent(p.cost_model_id)}`,
                  text: p.cost_model_id.slice(0, 8) })
      : el("span", { class: "muted", text: "—" });
    return el("tr", { "data-profile-id": p.id },
      el("td", { class: "col-status" }, statusBadge(p.status)),
      el("td", { class: "col-name", text: p.name || p.id.slice(0, 8) }),
      el("td", { class: "col-model mono", text: (spec.model || {}).arch || "" }),
      el("td", { class: "col-structure", text: spec.structure || "weights" }),
      el("td", { class: "col-progress", text: progressText(p) }),
      el("td", { class: "col-hardware", text: hardwareText(p.hardware) }),
      el("td", { class: "col-cost-model" }, model));
  }

  async function load() {
    const page = await Spartan.getJSON("/v1/profiles?limit=100");
    document.querySelector("#profiles tbody").replaceChildren(...page.data.map(row));
    document.getElementById("no-profiles").hidden = page.count > 0;
    document.getElementById("profile-count").textContent =
      `${page.count} profile${page.count === 1 ? "" : "s"}`;
    return true;
  }

  document.addEventListener("DOMContentLoaded", () => Spartan.poll(load, 2000));
})();
