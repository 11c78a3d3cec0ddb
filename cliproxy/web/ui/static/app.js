// The cliproxy dashboard. Plain DOM, no framework: every text from the gateway goes in through
// textContent (never innerHTML), so an upstream error body holding markup stays text.
"use strict";

const KEY_STORE = "cliproxy.management-key";
const PAIRS_REFRESH_MS = 5000;
const STATS_REFRESH_MS = 30000;
const EVENTS_SHOWN = 200;

const $ = (id) => document.getElementById(id);
let pairs = [];            // the last GET /api/pairs
let pairsFetchedAt = 0;    // performance.now() of that answer: countdowns tick from it
let stats = new Map();     // "vendor\u0000model" -> {requests, failures}
let events = [];           // newest first
let lastEventId = null;
let timers = [];
let streamAbort = null;

function key() { return sessionStorage.getItem(KEY_STORE); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

class ApiError extends Error {
  constructor(status, message, retryAfter) { super(message); this.status = status; this.retryAfter = retryAfter; }
}

async function api(method, path, body) {
  const headers = { "Authorization": "Bearer " + key() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error.message || message; } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, message, response.headers.get("Retry-After"));
  }
  return response.json();
}

function describeError(error) {
  if (!(error instanceof ApiError)) return "cannot reach the gateway: " + error.message;
  if (error.status === 401) return "Wrong management key.";
  if (error.status === 429) return "Too many failed attempts from this address: try again in " + (error.retryAfter || "a few") + " s.";
  if (error.status === 403) return "Not allowed from this address: " + error.message;
  return error.status + ": " + error.message;
}

// --- login -------------------------------------------------------------------------------------

async function login(event) {
  event.preventDefault();
  const value = $("key").value;
  $("login-error").textContent = "";
  sessionStorage.setItem(KEY_STORE, value);
  try {
    await api("GET", "/api/pairs");
  } catch (error) {
    sessionStorage.removeItem(KEY_STORE);
    $("login-error").textContent = describeError(error);
    return;
  }
  $("key").value = "";
  start();
}

function logout() {
  sessionStorage.removeItem(KEY_STORE);
  for (const t of timers) clearInterval(t);
  timers = [];
  if (streamAbort) streamAbort.abort();
  $("dashboard").hidden = true; $("logout").hidden = true; $("live").hidden = true;
  $("login").hidden = false;
  $("key").focus();
}

function start() {
  $("login").hidden = true; $("dashboard").hidden = false; $("logout").hidden = false;
  refreshPairs(); refreshStats(); refreshBanners(); loadEvents();
  timers.push(setInterval(refreshPairs, PAIRS_REFRESH_MS));
  timers.push(setInterval(refreshStats, STATS_REFRESH_MS));
  timers.push(setInterval(refreshBanners, PAIRS_REFRESH_MS));
  timers.push(setInterval(tickCountdowns, 1000));
  streamEvents();
}

// --- pairs -------------------------------------------------------------------------------------

let refreshing = null;
async function refreshPairs() {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    try {
      const answer = await api("GET", "/api/pairs");
      pairs = answer.pairs; pairsFetchedAt = performance.now();
      $("pairs-error").textContent = "";
      setBanner("db", null);
      renderPairs();
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) { logout(); $("login-error").textContent = describeError(error); return; }
      if (error instanceof ApiError && error.status === 503) setBanner("db", { text: "The database is not accepting writes: " + error.message, bad: true });
      else $("pairs-error").textContent = describeError(error);
    } finally { refreshing = null; }
  })();
  return refreshing;
}

async function refreshStats() {
  try {
    const answer = await api("GET", "/api/pairs/stats");
    stats = new Map(answer.pairs.map((s) => [s.vendor + "\u0000" + s.model, s]));
    renderPairs();
  } catch (_) { /* the table shows the error of /api/pairs */ }
}

// Seconds until the pair is routable again (the latest end of the disables in force), or null.
function remainingSeconds(pair) {
  const elapsed = (performance.now() - pairsFetchedAt) / 1000;
  const ends = [];
  if (pair.remaining_seconds != null) ends.push(pair.remaining_seconds);
  if (pair.manual_disable && pair.manual_disable.remaining_seconds != null) ends.push(pair.manual_disable.remaining_seconds);
  if (pair.rate_limited_until) ends.push((Date.parse(pair.rate_limited_until) - Date.now()) / 1000 + elapsed);
  if (!ends.length || (pair.manual_disable && pair.manual_disable.remaining_seconds == null)) return null;
  return Math.max(0, Math.max(...ends) - elapsed);
}

function formatSeconds(s) {
  s = Math.ceil(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
}

function tickCountdowns() {
  let expired = false;
  for (const cell of document.querySelectorAll("[data-countdown]")) {
    const pair = pairs[Number(cell.dataset.countdown)];
    if (!pair) continue;
    const left = remainingSeconds(pair);
    cell.textContent = left == null ? "" : formatSeconds(left);
    if (left === 0) expired = true;
  }
  if (expired) refreshPairs();
}

function stateBadge(state) {
  // A class per known state; an unknown one still shows its word, in the neutral style.
  return el("span", { class: "state state-" + String(state).replace(/[^a-z0-9-]/gi, ""), text: state, "data-state": state });
}

function sparkline(series) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 120, height = 24;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark"); svg.setAttribute("width", width); svg.setAttribute("height", height);
  svg.setAttribute("role", "img");
  const requests = series ? series.requests : [], failures = series ? series.failures : [];
  const total = requests.reduce((a, b) => a + b, 0), failed = failures.reduce((a, b) => a + b, 0);
  const label = total + " requests, " + failed + " failures in the last hour";
  const title = document.createElementNS(ns, "title"); title.textContent = label; svg.append(title);
  svg.setAttribute("aria-label", label);
  const peak = Math.max(1, ...requests);
  const bar = width / Math.max(1, requests.length);
  requests.forEach((count, i) => {
    for (const [value, cls] of [[count, "req"], [failures[i], "fail"]]) {
      if (!value) continue;
      const h = Math.max(1, (value / peak) * height);
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("class", cls); rect.setAttribute("x", i * bar); rect.setAttribute("y", height - h);
      rect.setAttribute("width", Math.max(1, bar - 0.5)); rect.setAttribute("height", h);
      svg.append(rect);
    }
  });
  const wrap = el("span", {}, svg, el("span", { class: "muted", text: " " + total + " / " + failed + " failed" }));
  return wrap;
}

// The effective auto-disable settings that matter most, each with the level it came from.
function settingsText(pair) {
  const s = pair.auto_disable || {}, sources = s.sources || {};
  const shown = [["failure_threshold", "threshold"], ["time_window_seconds", "window s"], ["disable_duration_seconds", "disable s"], ["enforce", "enforce"]];
  return shown.filter(([name]) => name in s)
    .map(([name, label]) => label + " " + s[name] + (sources[name] ? " (" + sources[name] + ")" : "")).join(", ");
}

function lastErrorCell(pair) {
  const e = pair.last_error;
  if (!e) return el("span", { class: "muted", text: "none" });
  return el("span", {},
    el("span", { text: (e.status != null ? "HTTP " + e.status : "error") + (pair.last_failure_at ? " at " + pair.last_failure_at : "") }),
    el("span", { class: "excerpt", text: e.message || "" }));
}

function threshold(pair) { return pair.auto_disable ? pair.auto_disable.failure_threshold : null; }

function renderPairs() {
  const container = $("pairs");
  const groups = new Map();
  pairs.forEach((pair, index) => {
    const name = pair.alias || pair.model;
    if (!groups.has(name)) groups.set(name, []);
    groups.get(name).push([pair, index]);
  });
  const fragment = document.createDocumentFragment();
  for (const [name, members] of groups) {
    const table = el("table", {},
      el("thead", {}, el("tr", {}, ...["Vendor", "Upstream model", "Priority", "State", "Re-enabled in", "Failures", "Last error", "Traffic (1 h)", "Auto-disable", "Actions"].map((h) => el("th", { scope: "col", text: h })))));
    const body = el("tbody");
    for (const [pair, index] of members) {
      const left = remainingSeconds(pair);
      const row = el("tr", { "data-vendor": pair.vendor, "data-model": pair.model },
        el("td", { "data-label": "Vendor", text: pair.vendor }),
        el("td", { "data-label": "Upstream model", text: pair.model }),
        el("td", { "data-label": "Priority", text: String(pair.priority) }),
        el("td", { "data-label": "State" }, stateBadge(pair.state)),
        el("td", { "data-label": "Re-enabled in", "data-countdown": String(index), class: "countdown", text: left == null ? "" : formatSeconds(left) }),
        el("td", { "data-label": "Failures", text: pair.failure_count + (threshold(pair) != null ? " / " + threshold(pair) : "") }),
        el("td", { "data-label": "Last error" }, lastErrorCell(pair)),
        el("td", { "data-label": "Traffic" }, sparkline(stats.get(pair.vendor + "\u0000" + pair.model))),
        el("td", { "data-label": "Auto-disable", class: "muted", text: settingsText(pair) }),
        el("td", { "data-label": "Actions" }, actions(pair)));
      body.append(row);
    }
    table.append(body);
    fragment.append(el("div", { class: "group" }, el("h3", { text: name }), table));
  }
  container.replaceChildren(fragment);
}

function actions(pair) {
  const box = el("div", { class: "actions" });
  const label = pair.vendor + " / " + pair.model;
  const enable = el("button", { type: "button", class: "enable", text: "Enable" });
  enable.addEventListener("click", () => confirmThen("Enable " + label + "?", null, () =>
    api("POST", "/api/models/" + encodeURIComponent(pair.model) + "/enable?vendor=" + encodeURIComponent(pair.vendor))));
  const disable = el("button", { type: "button", class: "disable", text: "Disable…" });
  disable.addEventListener("click", () => {
    const select = el("select", { id: "disable-duration", "aria-label": "for how long" });
    for (const [text, seconds] of [["5 minutes", 300], ["1 hour", 3600], ["1 day", 86400], ["permanently (config.yaml)", ""]]) {
      select.append(el("option", { value: String(seconds), text }));
    }
    confirmThen("Disable " + label + "?", el("label", {}, "For ", select), () => {
      const seconds = select.value;
      const body = seconds === "" ? undefined : { duration_seconds: Number(seconds) };
      return api("POST", "/api/models/" + encodeURIComponent(pair.model) + "/disable?vendor=" + encodeURIComponent(pair.vendor), body);
    });
  });
  const on = pair.vendor_enabled;
  const vendor = el("button", { type: "button", class: "vendor-switch", text: (on ? "Switch vendor off" : "Switch vendor on") });
  vendor.addEventListener("click", () => confirmThen("Switch vendor " + pair.vendor + (on ? " off" : " on") + "?", null, () =>
    api("PATCH", "/api/vendors/" + encodeURIComponent(pair.vendor), { enabled: !on })));
  box.append(enable, disable, vendor);
  return box;
}

function confirmThen(text, extra, action) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-extra").replaceChildren(...(extra ? [extra] : []));
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "ok") return;
    try {
      await action();
      $("pairs-error").textContent = "";
    } catch (error) {
      $("pairs-error").textContent = describeError(error);
    }
    refreshPairs(); refreshBanners();
  };
  dialog.showModal();
  $("confirm-cancel").focus();
}

// --- banners -----------------------------------------------------------------------------------

const banners = new Map();
function setBanner(id, banner) {
  if (banner) banners.set(id, banner); else banners.delete(id);
  const box = $("banners");
  box.replaceChildren(...[...banners.values()].map((b) => {
    const node = el("div", { class: "banner" + (b.bad ? " bad" : ""), role: "status", text: b.text });
    if (b.items && b.items.length) node.append(el("ul", {}, ...b.items.map((i) => el("li", { text: i }))));
    return node;
  }));
}

async function refreshBanners() {
  try {
    const config = await api("GET", "/api/config");
    const errors = config.last_reload_error;
    setBanner("reload", errors && errors.length ? { text: "The last config reload was rejected; the gateway runs the previous config:", items: errors.map((e) => typeof e === "string" ? e : JSON.stringify(e)), bad: true } : null);
  } catch (_) { /* pairs show the error */ }
  const vendors = new Map(pairs.map((p) => [p.vendor, p.vendor_enabled]));
  setBanner("vendors", vendors.size && [...vendors.values()].every((on) => !on) ? { text: "Every vendor is switched off: no request can be served.", bad: true } : null);
}

// --- events ------------------------------------------------------------------------------------

async function loadEvents() {
  try {
    const page = await api("GET", "/api/events?limit=" + EVENTS_SHOWN);
    events = page.events;
    if (events.length && lastEventId == null) lastEventId = events[0].id;
    renderEvents();
  } catch (_) { /* the stream retries */ }
}

function eventText(e) {
  const parts = [];
  if (e.vendor) parts.push(e.vendor + " / " + (e.model || ""));
  if (e.reason) parts.push("reason " + e.reason);
  if (e.cause) parts.push("cause " + e.cause);
  if (e.disabled_until) parts.push("until " + e.disabled_until);
  if (e.actor) parts.push("by " + e.actor);
  if (e.last_error) parts.push((e.last_error.status != null ? "HTTP " + e.last_error.status + ": " : "") + (e.last_error.message || ""));
  return parts.join(" · ");
}

function renderEvents() {
  const vendor = $("filter-vendor").value.trim(), model = $("filter-model").value.trim(), kind = $("filter-kind").value.trim();
  const shown = events.filter((e) => (!vendor || e.vendor === vendor) && (!model || e.model === model) && (!kind || e.kind === kind));
  $("events").replaceChildren(...shown.map((e) =>
    el("li", { "data-kind": e.kind, "data-id": String(e.id) },
      el("time", { class: "muted", text: e.at + " " }), el("span", { class: "kind", text: e.kind }), el("span", { text: eventText(e) }))));
}

// Server-Sent Events read through fetch (EventSource cannot send the Authorization header);
// reconnects with Last-Event-ID, so nothing committed in between is missed.
async function streamEvents() {
  while (key()) {
    streamAbort = new AbortController();
    try {
      const headers = { "Authorization": "Bearer " + key() };
      if (lastEventId != null) headers["Last-Event-ID"] = String(lastEventId);
      const response = await fetch("/api/events/stream", { headers, signal: streamAbort.signal, cache: "no-store" });
      if (!response.ok) throw new ApiError(response.status, response.statusText);
      $("live").hidden = false;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          handleMessage(buffer.slice(0, end)); buffer = buffer.slice(end + 2);
        }
      }
    } catch (error) {
      if (streamAbort.signal.aborted) return;
    }
    $("live").hidden = true;
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function handleMessage(block) {
  let id = null, data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("id:")) id = line.slice(3).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (!data) return;
  const event = JSON.parse(data);
  if (id != null) lastEventId = Number(id);
  if (events.some((e) => e.id === event.id)) return;
  events.unshift(event);
  events.length = Math.min(events.length, EVENTS_SHOWN);
  renderEvents();
  refreshPairs();
}

// --- wiring ------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("enable-all").addEventListener("click", () => confirmThen("Clear every automatic, timed and rate-limit disable?", null, () => api("POST", "/api/models/enable-all")));
  for (const id of ["filter-vendor", "filter-model", "filter-kind"]) $(id).addEventListener("input", renderEvents);
  $("event-filter").addEventListener("submit", (e) => e.preventDefault());
  if (key()) start(); else $("key").focus();
});
