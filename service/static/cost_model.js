// The cost-model page at "/cost-models/{id}": per-layer fit table and measured vs fitted charts.
"use strict";

(() => {
  const { el, fmtNum, fmtPct } = Spartan;
  const modelId = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");

  function render(cm) {
    const data = cm.data || {};
    const unit = data.unit || "ms";
    const layers = Object.entries(data.layers || {});
    const profile = {};
    for (const layer of (cm.profile || {}).layers || []) profile[layer.name] = layer;
    const title = cm.name || `Cost model ${cm.id.slice(0, 8)}`;
    document.getElementById("cm-title").textContent = title;
    document.title = `${title} · Spartan`;
    document.getElementById("cm-meta").textContent =
      `Version ${cm.version} · ${cm.hardware_label || "device " + (data.device || "unknown")}` +
      (cm.batch ? ` · batch ${cm.batch}` : "") + ` · unit ${unit} · ${layers.length} layers` +
      ` · ${cm.source}` + (cm.fingerprint ? ` · fingerprint ${cm.fingerprint}` : "") +
      ` · created ${Spartan.fmtTime(cm.created_at)}`;
    renderDeployment(cm);
    document.getElementById("cm-no-profile").hidden = Boolean(cm.profile);
    // Poor fits, flagged when the model was fitted (spartan_service.costmodels.checks.fit_warnings).
    const warnings = Array.isArray(data.warnings) ? data.warnings.map(String) : [];
    const box = document.getElementById("cm-warnings");
    box.hidden = warnings.length === 0;
    box.replaceChildren(...warnings.map((w) => el("p", { text: w })));
    document.querySelector("#cm-table tbody").replaceChildren(...layers.map(([name, fit]) => {
      const samples = (profile[name] || {}).samples || [];
      return el("tr", {},
        el("th", { scope: "row", class: "mono", text: name }),
        el("td", { text: (fit.block || [1, 1]).join("×") }),
        el("td", { class: "num", text: `${fmtNum(fit.intercept)} ${unit}` }),
        el("td", { class: "num", text: `${fmtNum(fit.slope)} ${unit}` +
          (fit.structure === "channels" ? " per channel pair" : "") }),
        el("td", { class: "num", text: fmtNum(fit.r2) }),
        el("td", { class: "num", text: typeof fit.mape === "number" ? fmtPct(fit.mape) : "—" }),
        el("td", { class: "num", text: String(samples.length || "—") }));
    }));
    document.getElementById("cm-charts").replaceChildren(...layers.map(([name, fit]) => {
      const samples = ((profile[name] || {}).samples || [])
        .map((s) => [s.nnz_blocks, s.latency]).filter(([x, y]) => isFinite(x) && isFinite(y));
      const box = el("div");
      const card = el("section", { class: "card", "aria-label": `Layer ${name}` },
        el("h3", { class: "mono", text: name }), box);
      Charts.fit(box, samples, fit, { title: `Layer ${name}`, xLabel: "nonzero blocks",
        yLabel: `latency (${unit})` });
      return card;
    }));
  }

  // Its error on the trained models measured against it (held-out points), and the refit
  // offered when that error is over the tolerance.
  function renderDeployment(cm) {
    const dep = cm.deployment || {};
    const text = document.getElementById("cm-deployment");
    if (dep.points) {
      text.textContent = `Error on ${dep.points} deployed model${dep.points === 1 ? "" : "s"}: ` +
        `${fmtPct(dep.mape)} on average (worst ${fmtPct(dep.max_error)}), per layer ` +
        `${dep.layer_mape == null ? "—" : fmtPct(dep.layer_mape)}; tolerance ` +
        `${fmtPct(dep.threshold)}.`;
    }
    if (cm.refit) {
      text.textContent += ` Refitted from version ${cm.refit.from_version}: error on its ` +
        `${cm.refit.points} points ${fmtPct(cm.refit.mape_before)} → ${fmtPct(cm.refit.mape_after)}.`;
    }
    const box = document.getElementById("cm-refit-box");
    box.hidden = !dep.needs_refit;
    document.getElementById("cm-refit-text").textContent = dep.message || "";
  }

  async function refit() {
    const button = document.getElementById("cm-refit");
    button.disabled = true;
    try {
      const resp = await Spartan.api(`/v1/cost-models/${modelId}/refit`, { method: "POST" });
      const made = await resp.json();
      location.assign(`/cost-models/${encodeURIComponent(made.id)}`);
    } catch (err) {
      button.disabled = false;
      Spartan.notice(`Refit failed: ${err.message}`);
    }
  }

  async function load() {
    try {
      render(await Spartan.getJSON(`/v1/cost-models/${modelId}`));
    } catch (err) {
      if (err.status !== 404) throw err;
      document.getElementById("cm-title").textContent = "Cost model not found";
      Spartan.notice(`No cost model ${modelId} is visible with this token.`);
    }
    return false; // a stored cost model does not change
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("cm-refit").addEventListener("click", refit);
    Spartan.poll(load, 5000);
  });
})();
