// baton's dashboard: the public API and its live stream, nothing else.
// No build step: this file is served as it is, embedded in the binary.
"use strict";

const POINTS = 60; // chart points kept per version (one a second)
const state = {
  token: sessionStorage.getItem("baton-token") || "",
  who: null,
  apps: [],
  selected: location.hash.slice(1) || null,
  series: {}, // "app/version" -> [{rps, err, p99}]
  lastResult: {}, // app -> history id of its last finished rollout
  abort: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") e.addEventListener("click", v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c ?? ""));
  return e;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(method, path, body) {
  const resp = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  let value = null;
  try { value = text ? JSON.parse(text) : null; } catch { value = null; }
  if (!resp.ok) {
    throw new Error((value && value.error) || `${resp.status} ${text}`);
  }
  return value;
}

// ---- login ----------------------------------------------------------------

async function login(token) {
  state.token = token;
  try {
    state.who = await api("GET", "/v1/whoami");
  } catch (e) {
    state.token = "";
    sessionStorage.removeItem("baton-token");
    showError(`log in failed: ${e.message}`);
    return;
  }
  sessionStorage.setItem("baton-token", token);
  showError("");
  const apps = state.who.apps.length ? `apps ${state.who.apps.join(", ")}` : "every app";
  $("who").textContent = `${state.who.name} (${state.who.role}, ${apps})`;
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = false;
  stream();
  refreshAudit();
}

function logout() {
  sessionStorage.removeItem("baton-token");
  location.reload();
}

// ---- the live stream -------------------------------------------------------

async function stream() {
  if (state.abort) state.abort.abort();
  const ctrl = new AbortController();
  state.abort = ctrl;
  try {
    const resp = await fetch("/v1/stream", {
      headers: { Authorization: `Bearer ${state.token}` },
      signal: ctrl.signal,
    });
    if (!resp.ok) throw new Error(`stream: ${resp.status}`);
    $("live").classList.add("on");
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let event = "message";
        let data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (event === "snapshot" && data) onSnapshot(JSON.parse(data));
      }
    }
  } catch (e) {
    if (ctrl.signal.aborted) return;
  }
  $("live").classList.remove("on");
  setTimeout(stream, 2000);
}

function onSnapshot(snap) {
  state.apps = snap.apps;
  for (const t of snap.traffic) {
    const key = `${t.app}/${t.version}`;
    const s = (state.series[key] ||= []);
    s.push({ rps: t.requests_per_s, err: t.error_rate * 100, p50: t.p50_ms, p99: t.p99_ms });
    if (s.length > POINTS) s.shift();
  }
  if (!state.selected && state.apps.length) state.selected = state.apps[0].app;
  render();
}

// ---- views -----------------------------------------------------------------

function trafficText(a) {
  return a.traffic.map((t) => `${t.version} ${t.weight}%`).join(", ") || "none";
}

function render() {
  const waiting = state.apps.filter((a) => a.phase === "awaiting_approval" || a.phase === "paused");
  $("waiting").hidden = waiting.length === 0;
  $("waiting-list").replaceChildren(
    ...waiting.map((a) =>
      el("li", {}, el("a", { href: `#${a.app}` }, a.app), " — ", a.step ? a.step.text : a.phase),
    ),
  );
  const body = $("apps").tBodies[0];
  body.replaceChildren(
    ...state.apps.map((a) => {
      const ready = a.instances.filter((i) => i.ready).length;
      const row = el(
        "tr",
        { "data-app": a.app, class: a.app === state.selected ? "selected" : null },
        el("td", {}, a.app),
        el("td", {}, a.environment),
        el("td", { class: a.phase === "rolling_back" ? "bad" : null }, a.phase),
        el("td", {}, a.stable_version || "-"),
        el("td", {}, a.target_version || "-"),
        el("td", {}, trafficText(a)),
        el("td", {}, `${ready} of ${a.instances.length}`),
      );
      row.addEventListener("click", () => select(a.app));
      return row;
    }),
  );
  renderApp();
}

function select(app) {
  state.selected = app;
  location.hash = app;
  refreshHistory(app);
  render();
}

function renderApp() {
  const a = state.apps.find((x) => x.app === state.selected);
  $("app-view").hidden = !a;
  if (!a) return;
  $("app-title").textContent = `${a.app} — ${a.phase}${a.rollout ? ` → ${a.target_version}` : ""}`;
  $("step").textContent = a.step ? a.step.text : a.rollout ? "" : `stable on ${a.stable_version || "nothing"}`;
  const bar = $("progress-bar");
  bar.style.width = a.step ? `${Math.min(100, (100 * a.step.number) / Math.max(1, a.step.count))}%` : "0";
  const steps = a.step ? a.step.steps || [] : [];
  $("timeline").replaceChildren(
    ...steps.map((text, i) =>
      el("li", { class: i + 1 < a.step.number ? "done" : i + 1 === a.step.number ? "current" : null }, `${i + 1}. ${text}`),
    ),
  );
  $("check").textContent = a.last_check ? `last analysis: ${a.last_check.passed ? "passed" : "failed"} — ${a.last_check.text}` : "";
  $("check").className = a.last_check && !a.last_check.passed ? "bad" : "";
  renderActions(a);
  renderCharts(a);
  renderMirror(a);
  $("instances").tBodies[0].replaceChildren(
    ...a.instances.map((i) =>
      el(
        "tr",
        {},
        el("td", {}, i.id),
        el("td", {}, i.version),
        el("td", {}, i.state),
        el("td", { class: i.ready ? "good" : "bad" }, i.ready ? "yes" : "no"),
        el("td", {}, i.address || "-"),
        el("td", {}, i.cpu_cores == null ? "-" : `${(i.cpu_cores * 100).toFixed(0)}%`),
        el("td", {}, i.memory_bytes == null ? "-" : `${(i.memory_bytes / 1048576).toFixed(1)} MiB`),
      ),
    ),
  );
  const last = a.last_result ? a.last_result.history_id : null;
  if (state.lastResult[a.app] !== last) {
    state.lastResult[a.app] = last;
    refreshHistory(a.app);
    refreshAudit();
  }
}

function renderCharts(a) {
  const versions = a.traffic.map((t) => t.version);
  const charts = [
    ["chart-rps", "rps"],
    ["chart-errors", "err"],
    ["chart-p50", "p50"],
    ["chart-p99", "p99"],
  ];
  for (const [id, field] of charts) {
    const svg = $(id);
    const lines = versions.map((v, i) => {
      const pts = state.series[`${a.app}/${v}`] || [];
      return { cls: `v${i % 3}`, pts: pts.map((p) => p[field]), version: v };
    });
    const max = Math.max(1, ...lines.flatMap((l) => l.pts));
    svg.replaceChildren(
      ...lines.map((l) => {
        const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
        line.setAttribute("class", l.cls);
        line.setAttribute("data-version", l.version);
        line.setAttribute("data-points", String(l.pts.length));
        const step = 300 / (POINTS - 1);
        const x0 = 300 - step * (l.pts.length - 1);
        line.setAttribute(
          "points",
          l.pts.map((y, i) => `${(x0 + i * step).toFixed(1)},${(98 - (96 * y) / max).toFixed(1)}`).join(" "),
        );
        return line;
      }),
    );
  }
  $("legend").replaceChildren(
    ...versions.map((v, i) => {
      const pts = state.series[`${a.app}/${v}`] || [];
      const now = pts[pts.length - 1];
      return el(
        "span",
        { class: `v${i % 3}` },
        `■ ${v}: ${now ? `${now.rps.toFixed(1)} req/s, ${now.err.toFixed(1)}% errors, p99 ${now.p99.toFixed(1)} ms` : "no traffic"}   `,
      );
    }),
  );
}

function renderMirror(a) {
  const m = a.mirror;
  if (!m) {
    $("mirror").replaceChildren();
    return;
  }
  const rate = (m.mismatch_rate * 100).toFixed(1);
  $("mirror").replaceChildren(
    el("h3", {}, `Mirror step ${m.step}: ${m.version} against ${m.from || "stable"}`),
    el("p", { class: m.mismatch_rate > m.max_mismatch_rate ? "bad" : "good" },
      `${m.compared} compared, ${m.matching} matching (${rate}% differ, limit ${(m.max_mismatch_rate * 100).toFixed(1)}%)`),
    el("ul", {}, ...m.paths.filter((p) => p.mismatches > 0).map((p) =>
      el("li", {}, `${p.path}: ${p.mismatches} of ${p.compared} differ (${p.fields.join(", ")})`))),
  );
}

// What an operator can do now, by role and phase; a viewer gets nothing.
function renderActions(a) {
  const box = $("actions");
  const role = state.who ? state.who.role : "viewer";
  if (role === "viewer") {
    box.replaceChildren();
    return;
  }
  const buttons = [];
  const add = (name, label, body) =>
    buttons.push(el("button", { type: "button", "data-action": name, onclick: () => act(a.app, name, label, body) }, label));
  if (a.phase === "awaiting_approval") add("approve", "approve");
  if (a.rollout) {
    if (a.phase === "paused") add("resume", "resume");
    else add("pause", "pause");
    add("promote", "promote");
    add("abort", "abort", { reason: "aborted from the dashboard" });
  }
  if (!a.rollout && a.stable_version) add("rollback", "roll back", {});
  if (!a.rollout) {
    buttons.push(el("button", { type: "button", "data-action": "deploy", onclick: () => deploy(a.app) }, "deploy…"));
  }
  box.replaceChildren(...buttons);
}

async function act(app, action, label, body) {
  if (!confirm(`${label} ${app}?`)) return;
  try {
    await api("POST", `/v1/apps/${encodeURIComponent(app)}/${action}`, body || {});
    showError("");
  } catch (e) {
    showError(`${label} ${app} failed: ${e.message}`);
  }
  refreshAudit();
}

async function deploy(app) {
  const version = prompt(`deploy which version of ${app}?`);
  if (!version) return;
  try {
    const plan = await api("GET", `/v1/apps/${encodeURIComponent(app)}/plan?version=${encodeURIComponent(version)}`);
    const steps = (plan.steps || []).map((s, i) => `${i + 1}. ${s.description || s.kind}`).join("\n");
    if (!confirm(`deploy ${app} ${version} with the ${plan.strategy} strategy?\n\n${steps}`)) return;
    await api("POST", `/v1/apps/${encodeURIComponent(app)}/deploy`, { version });
    showError("");
  } catch (e) {
    showError(`deploy ${app} ${version} failed: ${e.message}`);
  }
}

async function refreshHistory(app) {
  try {
    const h = await api("GET", `/v1/apps/${encodeURIComponent(app)}/history`);
    $("history").tBodies[0].replaceChildren(
      ...h.history.slice(0, 20).map((r) =>
        el(
          "tr",
          {},
          el("td", {}, new Date(r.started_ms).toLocaleString()),
          el("td", {}, r.kind),
          el("td", {}, r.to_version),
          el("td", {}, r.from_version || "-"),
          el("td", {}, r.operator),
          el("td", {}, (r.approvers || []).join(", ") || "-"),
          el("td", { class: r.result === "succeeded" ? "good" : r.result === "in_progress" ? null : "bad" }, r.result),
          el("td", {}, r.notes),
        ),
      ),
    );
  } catch (e) {
    showError(`history of ${app}: ${e.message}`);
  }
}

async function refreshAudit() {
  try {
    const a = await api("GET", "/v1/audit?limit=30");
    $("audit").tBodies[0].replaceChildren(
      ...a.records.map((r) =>
        el(
          "tr",
          {},
          el("td", {}, r.seq),
          el("td", {}, new Date(r.at_ms).toLocaleTimeString()),
          el("td", {}, r.actor),
          el("td", {}, r.source),
          el("td", {}, r.action),
          el("td", {}, r.app || "-"),
          el("td", { class: r.outcome === "refused" || r.outcome === "failed" ? "bad" : null }, r.outcome),
          el("td", {}, r.detail || ""),
        ),
      ),
    );
  } catch (e) {
    showError(`audit log: ${e.message}`);
  }
}

// ---- start -----------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    login($("token").value.trim());
  });
  $("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", () => select(location.hash.slice(1)));
  if (state.token) login(state.token);
  setInterval(() => {
    if (state.who) refreshAudit();
  }, 5000);
});
