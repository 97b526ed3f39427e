// Shared helpers of the dashboard pages: authenticated fetch, the token form, polling, formatting.
"use strict";

const Spartan = (() => {
  const TOKEN_KEY = "spartan-token";
  const waiting = []; // callbacks to run once a token has been entered

  class AuthError extends Error {}

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function notice(message) {
    const box = document.getElementById("notice");
    if (box) box.textContent = message || "";
  }

  function askToken(message) {
    const form = document.getElementById("token-form");
    form.hidden = false;
    document.getElementById("token-message").textContent = message || "";
    document.getElementById("token-input").focus();
  }

  function setupTokenForm() {
    const form = document.getElementById("token-form");
    const signOut = document.getElementById("sign-out");
    signOut.hidden = !token();
    signOut.addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      location.reload();
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const input = document.getElementById("token-input");
      const value = input.value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      input.value = "";
      form.hidden = true;
      signOut.hidden = false;
      waiting.splice(0).forEach((resume) => resume());
    });
  }

  // fetch with the bearer token; a 401 asks for a (new) token and throws AuthError.
  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const current = token();
    if (current) headers.set("Authorization", "Bearer " + current);
    const resp = await fetch(path, { ...options, headers });
    if (resp.status === 401) {
      if (current) sessionStorage.removeItem(TOKEN_KEY);
      askToken(current ? "That token was refused; enter another." : "");
      throw new AuthError("unauthorised");
    }
    if (!resp.ok) {
      let detail = resp.statusText;
      try {
        const body = await resp.json();
        detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (_) { /* not JSON */ }
      const error = new Error(`${resp.status}: ${detail}`);
      error.status = resp.status;
      throw error;
    }
    return resp;
  }

  async function getJSON(path) {
    return (await api(path)).json();
  }

  // Runs task now and then every intervalMs after it settles; waits for a token after a 401.
  // task returns false to stop polling (e.g. the job has finished).
  function poll(task, intervalMs) {
    let timer = null;
    let stopped = false;
    async function run() {
      clearTimeout(timer);
      if (stopped) return;
      let again = true;
      try {
        again = (await task()) !== false;
        notice("");
      } catch (err) {
        if (err instanceof AuthError) {
          waiting.push(run);
          return;
        }
        notice("Could not update: " + err.message);
      }
      if (again && !stopped) timer = setTimeout(run, document.hidden ? intervalMs * 5 : intervalMs);
    }
    run();
    return { now: run, stop: () => { stopped = true; clearTimeout(timer); } };
  }

  // Saves an artifact; a fetch (not a plain link) so that the Authorization header goes along.
  async function download(path, name) {
    try {
      const blob = await (await api(path)).blob();
      const url = URL.createObjectURL(blob);
      const link = el("a", { href: url, download: name });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      if (!(err instanceof AuthError)) notice("Download failed: " + err.message);
    }
  }

  // Turns button into a cancel button that asks for a second press (no modal dialog).
  function cancelButton(button, jobId, label, after) {
    let armed = null;
    const reset = () => {
      armed = null;
      button.textContent = "Cancel";
      button.setAttribute("aria-label", label);
    };
    reset();
    button.addEventListener("click", async () => {
      if (!armed) {
        button.textContent = "Confirm cancel";
        button.setAttribute("aria-label", `Confirm: ${label}`);
        armed = setTimeout(reset, 4000);
        return;
      }
      clearTimeout(armed);
      reset();
      button.disabled = true;
      try {
        await api(`/v1/jobs/${jobId}/cancel`, { method: "POST" });
      } catch (err) {
        if (!(err instanceof AuthError)) notice("Cancel failed: " + err.message);
      }
      after();
    });
  }

  const STATUS_TEXT = {
    queued: "Queued", running: "Running", succeeded: "Succeeded",
    failed: "Failed", cancelled: "Cancelled",
  };

  function statusBadge(status) {
    return el("span", { class: "badge status-" + status, text: STATUS_TEXT[status] || status });
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (n) => String(n).padStart(2, "0");
    if (h) return `${h}h ${pad(m)}m`;
    if (m) return `${m}m ${pad(s % 60)}s`;
    return `${s}s`;
  }

  // Today's times without the date; older ones with it.
  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    const time = { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
    if (d.toDateString() === new Date().toDateString()) {
      return d.toLocaleTimeString(undefined, time);
    }
    return d.toLocaleString(undefined, { month: "short", day: "numeric", ...time });
  }

  // Three significant digits, but never rounding away integer digits (5043.2 -> "5043").
  function fmtNum(value, digits = 3) {
    if (value === null || value === undefined || value === "") return "—";
    if (typeof value !== "number") return String(value);
    const a = Math.abs(value);
    if (a >= 1e7 || (a !== 0 && a < 1e-3)) return value.toExponential(2);
    if (a >= 10 ** digits) return String(Math.round(value));
    return String(Number(value.toPrecision(digits)));
  }

  function fmtPct(fraction) {
    return typeof fraction === "number" ? `${Number((fraction * 100).toPrecision(3))}%` : "—";
  }

  function fmtBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }

  // Seconds the job has run: started to finished, or to now while it runs.
  function jobDuration(job) {
    if (!job.started_at) return null;
    const end = job.finished_at ? new Date(job.finished_at) : new Date();
    return (end - new Date(job.started_at)) / 1000;
  }

  function budgetText(spec) {
    const cost = spec.cost_model || {};
    if (cost.budget_ms) return `${fmtNum(cost.budget_ms)} ms`;
    const sparsity = spec.sparsity || {};
    return typeof sparsity.budget === "number" ? fmtPct(sparsity.budget) : "—";
  }

  // A progress bar (div with role=progressbar) and its text; update(job) refreshes both.
  function progressBar() {
    const fill = el("div", { class: "bar-fill" });
    const bar = el("div", {
      class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
      "aria-label": "Progress",
    }, fill);
    const text = el("span", { class: "bar-text" });
    const node = el("div", { class: "progress" }, bar, text);
    function update(job) {
      const p = job.progress || {};
      const total = p.total_steps;
      let frac = total ? Math.min(1, (p.step || 0) / total) : 0;
      if (job.status === "succeeded") frac = 1;
      const pct = Math.round(frac * 100);
      fill.style.width = pct + "%";
      bar.setAttribute("aria-valuenow", String(pct));
      let label = total ? `${pct}% · ${p.step || 0}/${total}` : job.status === "queued"
        ? "waiting" : `${pct}%`;
      if (job.status === "running" && typeof p.eta_s === "number") {
        label += ` · ETA ${fmtDuration(p.eta_s)}`;
      }
      text.textContent = label;
      node.dataset.status = job.status;
    }
    return { node, update };
  }

  // Every page has the same header (_header.html); the link to the page shown is marked.
  function markCurrentPage() {
    for (const link of document.querySelectorAll("header.top a[data-nav]")) {
      if (link.pathname === location.pathname) link.setAttribute("aria-current", "page");
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    markCurrentPage();
    setupTokenForm();
  });

  return {
    AuthError, api, getJSON, poll, download, cancelButton, el, notice, statusBadge, progressBar,
    fmtDuration, fmtTime, fmtNum, fmtPct, fmtBytes, jobDuration, budgetText, token,
  };
})();
