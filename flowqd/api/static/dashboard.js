// flowqd queue dashboard. Plain JavaScript, no build step, no external assets.
//
// Everything goes through the JSON API with the same-origin session cookie
// (or no credentials at all when the server has no keys). Requests that change
// state carry X-Flowqd-CSRF, which the server requires for cookie-authenticated
// unsafe methods. Data is rendered with textContent only: job inputs and
// results come from API callers and must never become markup.
"use strict";

const POLL_MS = 2000;
const PAGE_SIZE = 15;
const MAX_EVENTS = 500;
const STATES = ["waiting", "active", "delayed", "completed", "failed", "cancelled"];
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const TERMINAL_EVENTS = new Set(["end", "error", "cancelled"]);
const STALE_WORKER_S = 15;

const S = {
  who: null,            // {name, admin, open}
  queue: null,          // the queue shown: its entry of GET /api/v1/queues
  queues: null,         // GET /api/v1/queues: every queue, the default first
  queueName: null,      // the queue shown (null until the first read: the default one)
  queueError: null,     // why the last queue read failed
  rate: null,           // GET /api/v1/queue/throughput
  skew: 0,              // server clock minus browser clock, seconds
  tab: "all",
  offset: 0,
  q: "",
  hasMore: false,
  followEvents: true,   // the event list stays scrolled to its end until the reader scrolls up
  selected: null,       // job id shown in the detail panel
  job: null,            // its record
  stream: null,         // {id, ctrl, last, ended}
  timer: null,
  busy: false,
  lastOk: 0,
};

const $ = (id) => document.getElementById(id);

// ---- small helpers -------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "cls") node.className = v;
    else if (k.startsWith("data-") || k === "title" || k === "type") node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

const nowS = () => Date.now() / 1000 + S.skew;
const enc = encodeURIComponent;
const shortId = (id) => (id.length > 14 ? id.slice(0, 12) + "…" : id);
const fmtInt = (n) => (n === undefined || n === null ? "–" : Number(n).toLocaleString("en-US"));
// "1 job", "2 jobs": English needs only the one/other split.
const plural = (n, one, other) => `${fmtInt(n)} ${n === 1 ? one : other || one + "s"}`;
const isAdmin = () => !S.who || S.who.admin;

function fmtDuration(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  if (s < 1) return `${Math.max(0, Math.round(s * 1000))} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.round(s % 60)).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

function fmtAgo(t) {
  if (!t) return "–";
  const d = Math.max(0, nowS() - t);
  if (d < 2) return "just now";
  if (d < 90) return `${Math.round(d)} s ago`;
  if (d < 5400) return `${Math.round(d / 60)} min ago`;
  if (d < 86400 * 2) return `${Math.round(d / 3600)} h ago`;
  return `${Math.round(d / 86400)} days ago`;
}

function fmtClock(t, ms) {
  if (!t) return "–";
  const d = new Date(t * 1000);
  const base = d.toLocaleTimeString("en-GB", { hour12: false });
  return ms ? `${base}.${String(d.getMilliseconds()).padStart(3, "0")}` : base;
}

function fmtDate(t) {
  if (!t) return "–";
  const d = new Date(t * 1000);
  return `${d.toLocaleDateString("en-CA")} ${fmtClock(t)}`;
}

function json(value) {
  if (value === undefined) return "";
  try { return JSON.stringify(value, null, 2); } catch (e) { return String(value); }
}

function oneLine(value, max) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  if (text === undefined) return "";
  return text.length > max ? text.slice(0, max) + "…" : text;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let toastTimer = null;
function toast(message, bad) {
  const t = $("toast");
  t.textContent = message;
  t.classList.toggle("bad", Boolean(bad));
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, bad ? 7000 : 3500);
}

// ---- API -----------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-Flowqd-CSRF"] = "1";
  const opts = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, opts);
  } catch (e) {
    throw new ApiError(0, "flowqd does not answer (is the main process running?)");
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (res.status === 401 && !path.startsWith("/admin/queues/session")) {
    showSignIn("Your session has ended: sign in again.");
  }
  if (!res.ok) throw new ApiError(res.status, (data && data.message) || `${res.status} ${res.statusText}`);
  return data;
}

// ---- sign-in -------------------------------------------------------------------

function showSignIn(message) {
  stopPolling();
  stopStream();
  document.body.dataset.view = "signin";
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  $("signin-submit").disabled = true;
  try {
    await api("POST", "/admin/queues/session", { key });
    $("key").value = "";
    await start();
  } catch (e) {
    $("signin-error").textContent = e.status === 401 ? "Unknown API key." : e.message;
  } finally {
    $("signin-submit").disabled = false;
  }
}

async function signOut() {
  try { await api("DELETE", "/admin/queues/session"); } catch (e) { /* shown below anyway */ }
  S.who = null;
  showSignIn("Signed out.");
}

// ---- loading -------------------------------------------------------------------

async function start() {
  document.body.dataset.view = "app";
  $("signin").hidden = true;
  $("app").hidden = false;
  try {
    S.who = await api("GET", "/admin/queues/session");
  } catch (e) {
    if (e.status === 401) return;
    S.who = null;
  }
  renderWho();
  await tick();
  stopPolling();
  S.timer = setInterval(tick, POLL_MS);
}

function stopPolling() {
  if (S.timer !== null) clearInterval(S.timer);
  S.timer = null;
}

async function tick() {
  if (S.busy || document.body.dataset.view !== "app") return;
  S.busy = true;
  try {
    await Promise.all([loadQueue(), isAdmin() ? loadRate() : null, loadJobs(), S.selected ? loadJob() : null]);
  } finally {
    S.busy = false;
  }
  renderHealth();
  $("updated").textContent = S.lastOk ? `updated ${fmtClock(S.lastOk / 1000 + S.skew)}` : "";
}

// "queue=NAME" for the queue shown, to add to the queue routes and the job list.
function queueParam() {
  return S.queueName === null ? "" : `queue=${enc(S.queueName)}`;
}

function withQueue(path) {
  const q = queueParam();
  return q ? `${path}${path.includes("?") ? "&" : "?"}${q}` : path;
}

async function loadQueue() {
  try {
    // Every queue in one read: the one shown, and the overview of all of them.
    S.queues = await api("GET", "/api/v1/queues");
    const names = S.queues.queues.map((q) => q.name);
    if (S.queueName === null || !names.includes(S.queueName)) S.queueName = S.queues.default;
    S.queue = S.queues.queues.find((q) => q.name === S.queueName);
    S.queueError = null;
    S.lastOk = Date.now();
  } catch (e) {
    S.queueError = e.status === 503 || e.status === 0 ? e.message : `cannot read the queue: ${e.message}`;
  }
  renderQueues();
  renderQueue();
}

async function loadRate() {
  try {
    S.rate = await api("GET", withQueue("/api/v1/queue/throughput"));
    S.skew = S.rate.now - Date.now() / 1000;
  } catch (e) {
    S.rate = null;
  }
  renderRate();
}

async function loadJobs() {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(S.offset) });
  if (S.tab !== "all") params.set("status", S.tab);
  if (S.q) params.set("q", S.q);
  if (S.queueName !== null) params.set("queue", S.queueName);
  const key = params.toString();
  try {
    const data = await api("GET", `/api/v1/jobs?${key}`);
    // A newer request (another tab, page or search) may have been sent meanwhile.
    if (key !== currentJobsKey()) return;
    S.hasMore = Boolean(data.has_more);
    renderJobs(data.jobs, data.scan_limited);
  } catch (e) {
    if (e.status !== 401) renderJobsError(e.message);
  }
}

function currentJobsKey() {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(S.offset) });
  if (S.tab !== "all") params.set("status", S.tab);
  if (S.q) params.set("q", S.q);
  if (S.queueName !== null) params.set("queue", S.queueName);
  return params.toString();
}

async function loadJob() {
  const id = S.selected;
  try {
    const job = await api("GET", `/api/v1/jobs/${enc(id)}`);
    if (S.selected !== id) return;
    const before = S.job;
    S.job = job;
    renderDetail();
    // A retried job's stream goes on after its earlier run's events (the new
    // run may have ended already between two polls: a new finish time says so).
    const stream = S.stream;
    const rerun = before && before.id === id && (!TERMINAL.has(job.status) || before.finished_at !== job.finished_at);
    if (rerun && TERMINAL.has(before.status) && (!stream || stream.id !== id || stream.ended)) openStream(id, false);
  } catch (e) {
    if (e.status === 404 && S.selected === id) {
      delete $("detail-outcome").dataset.sig;
      $("detail-outcome").replaceChildren(el("p", { cls: "muted", text: "This job no longer exists (removed by retention)." }));
    }
  }
}

// ---- rendering: header, counts, health -----------------------------------------

function renderWho() {
  const who = S.who;
  const open = !who || who.open;
  $("who").textContent = open ? "open access (no API keys configured)" : `signed in as ${who.name}${who.admin ? " (admin)" : ""}`;
  $("sign-out").hidden = open;
  const admin = isAdmin();
  document.body.dataset.admin = admin ? "true" : "false";
  // Queue-wide figures tell every key's volume: the API gives them to admins only.
  $("counts").hidden = !admin;
  $("throughput-panel").hidden = !admin;
  $("overview").classList.toggle("single", !admin);
  $("scope-note").hidden = admin;
  $("admin-actions").hidden = !admin;
}

function renderQueue() {
  const q = S.queue;
  if (!q) return;
  $("queue-name").textContent = q.name;
  for (const state of STATES) {
    if (!q.counts) break;
    const n = q.counts[state] || 0;
    $(`count-${state}`).textContent = fmtInt(n);
    document.querySelector(`.count[data-state="${state}"]`).classList.toggle("zero", n === 0);
  }
  const canControl = isAdmin();
  const btn = $("pause-btn");
  btn.hidden = !canControl;
  btn.textContent = q.paused ? "Resume queue" : "Pause queue";
  btn.classList.toggle("primary", q.paused);
  btn.dataset.paused = q.paused ? "true" : "false";
  renderTabs();
  renderWorkers();
}

// The queue picker and the overview of every queue: shown when there are several.
function renderQueues() {
  const all = (S.queues && S.queues.queues) || [];
  const several = all.length > 1;
  $("queue-select").hidden = !several;
  $("queues-panel").hidden = !several;
  $("queue-name").hidden = several;
  if (!several) return;
  const select = $("queue-select");
  const names = all.map((q) => q.name);
  if ([...select.options].map((o) => o.value).join("\n") !== names.join("\n")) {
    select.replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
  }
  select.value = S.queueName;
  const cell = (q, state) => el("td", { cls: "num", "data-state": state, text: q.counts ? fmtInt(q.counts[state] || 0) : "–" });
  $("queues-body").replaceChildren(...all.map((q) => {
    const ready = q.workers.filter((w) => w.ready).length;
    return el("tr", { "data-queue": q.name, cls: q.name === S.queueName ? "selected" : "" },
      el("td", { cls: "id", text: q.name + (q.name === S.queues.default ? " (default)" : "") }),
      el("td", {}, el("span", { cls: q.paused ? "ready no" : "ready", text: q.paused ? "paused" : "running" })),
      ...["waiting", "active", "delayed", "completed", "failed", "cancelled"].map((s) => cell(q, s)),
      el("td", { text: `${ready} of ${q.workers.length} ready` }));
  }));
}

function showQueue(name) {
  if (name === S.queueName) return;
  S.queueName = name;
  S.offset = 0;
  S.rate = null;
  $("jobs-body").replaceChildren();
  if (S.queues) S.queue = S.queues.queues.find((q) => q.name === name) || null;
  renderQueues();
  renderQueue();
  tick();
}

function renderTabs() {
  const counts = S.queue && S.queue.counts;
  // Without counts (a non-admin key), the tabs carry no numbers.
  const count = (s) => (counts ? counts[s] || 0 : null);
  const total = counts ? STATES.reduce((sum, s) => sum + count(s), 0) : null;
  const tabs = [["all", "All", total], ...STATES.map((s) => [s, s[0].toUpperCase() + s.slice(1), count(s)])];
  const nav = $("tabs");
  if (nav.children.length !== tabs.length) {
    nav.replaceChildren(...tabs.map(([state, label]) =>
      el("button", { type: "button", cls: "tab", "data-state": state, "data-tab": state },
        label, el("span", { cls: "n" }))));
  }
  for (const [state, , n] of tabs) {
    const tab = nav.querySelector(`[data-tab="${state}"]`);
    tab.classList.toggle("selected", S.tab === state);
    tab.querySelector(".n").textContent = n === null ? "" : fmtInt(n);
  }
  for (const card of document.querySelectorAll(".count")) {
    card.classList.toggle("selected", card.dataset.state === S.tab);
  }
}

function renderWorkers() {
  const workers = (S.queue && S.queue.workers) || [];
  const body = $("workers-body");
  if (!workers.length) {
    body.replaceChildren(el("tr", {}, el("td", { cls: "empty", colSpan: 5, text: "No live workers: nothing will run. Start one with `flowqd --role worker`." })));
    $("workers-summary").textContent = "";
    return;
  }
  const sorted = [...workers].sort((a, b) => a.id.localeCompare(b.id));
  body.replaceChildren(...sorted.map((w) => {
    const known = w.jobs_held !== null && w.jobs_held !== undefined;
    const share = known && w.concurrency ? Math.min(1, w.jobs_held / w.concurrency) : 0;
    const meter = el("span", { cls: "meter" }, el("span"));
    meter.firstChild.style.width = `${Math.max(share * 100, w.jobs_held ? 4 : 0)}%`;
    const stale = nowS() - w.last_seen > STALE_WORKER_S;
    return el("tr", { "data-worker-id": w.id },
      el("td", { cls: "id", title: `pid ${w.pid}, up since ${fmtDate(w.started_at)}`, text: w.id }),
      el("td", { text: w.host || "–" }),
      known ? el("td", {}, meter, `${fmtInt(w.jobs_held)} / ${fmtInt(w.concurrency)}`) : el("td", { cls: "muted", text: "–" }),
      el("td", { cls: stale ? "failed-text" : "", text: fmtAgo(w.last_seen) }),
      el("td", {}, el("span", { cls: w.ready ? "ready" : "ready no", text: w.ready ? "ready" : "not ready" })));
  }));
  const ready = workers.filter((w) => w.ready).length;
  const held = workers.reduce((sum, w) => sum + (w.jobs_held || 0), 0);
  const holding = isAdmin() ? ` · ${plural(held, "job")} held` : "";
  $("workers-summary").textContent = `${ready} of ${plural(workers.length, "worker")} ready${holding}`;
}

function healthReasons() {
  const reasons = [];
  if (S.queueError) {
    reasons.push(["bad", `Broker unreachable: ${S.queueError}`]);
    return reasons;
  }
  const q = S.queue;
  if (!q) return reasons;
  const workers = q.workers || [];
  const ready = workers.filter((w) => w.ready);
  if (!workers.length) reasons.push(["bad", "No live workers: queued jobs are not being run"]);
  else if (!ready.length) reasons.push(["bad", "No worker is ready (Redis unreachable from the workers, or they are stopping)"]);
  if (q.paused) reasons.push(["warn", "Queue paused: workers take no new jobs"]);
  const stale = workers.filter((w) => nowS() - w.last_seen > STALE_WORKER_S);
  if (stale.length) reasons.push(["warn", `${plural(stale.length, "worker")} not heard from for over ${STALE_WORKER_S} s`]);
  const capacity = ready.reduce((sum, w) => sum + w.concurrency, 0);
  const held = ready.reduce((sum, w) => sum + (w.jobs_held || 0), 0);
  if (q.counts && ready.length && q.counts.waiting > 0 && held >= capacity) {
    reasons.push(["warn", `Workers at full capacity with ${plural(q.counts.waiting, "job")} waiting`]);
  }
  if (S.rate) {
    const done = S.rate.last_5_min.completed;
    const failed = S.rate.last_5_min.failed;
    if (failed > 0) {
      const ratio = failed / (failed + done);
      const level = ratio >= 0.5 && failed >= 3 ? "bad" : "warn";
      reasons.push([level, `${plural(failed, "job")} failed in the last 5 minutes (${Math.round(ratio * 100)}% of finished)`]);
    }
  }
  return reasons;
}

function renderHealth() {
  const reasons = healthReasons();
  const level = !S.queue && !S.queueError ? "unknown"
    : reasons.some(([l]) => l === "bad") ? "bad" : reasons.length ? "warn" : "ok";
  const label = { unknown: "Connecting…", ok: "Healthy", warn: "Needs attention", bad: "Unhealthy" }[level];
  $("health").dataset.level = level;
  $("health-text").textContent = label;
  $("health").title = reasons.map(([, text]) => text).join("\n") || "Workers are live and ready; no recent failures.";
  $("reasons").replaceChildren(...reasons.map(([l, text]) => el("li", { cls: l, text })));
}

// ---- rendering: throughput -----------------------------------------------------

function renderRate() {
  const r = S.rate;
  const chart = $("chart");
  if (!r) {
    $("rate-completed").textContent = "–";
    $("rate-failed").textContent = "–";
    $("fail-ratio").textContent = "–";
    return;
  }
  const fmtRate = (x) => (x >= 10 ? Math.round(x).toLocaleString("en-US") : x.toFixed(1));
  $("rate-completed").textContent = fmtRate(r.per_minute.completed);
  $("rate-failed").textContent = fmtRate(r.per_minute.failed);
  const done = r.last_5_min.completed + r.last_5_min.failed;
  $("fail-ratio").textContent = done ? `${Math.round((100 * r.last_5_min.failed) / done)}%` : "–";
  const W = 600, H = 120, TOP = 14;
  const n = r.buckets.length;
  const max = Math.max(1, ...r.buckets.map((b) => b.completed + b.failed));
  const slot = W / n, gap = Math.min(3, slot * 0.2);
  const nodes = [];
  for (const y of [0.25, 0.5, 0.75]) nodes.push(svg("line", { x1: 0, x2: W, y1: H - (H - TOP) * y, y2: H - (H - TOP) * y, class: "grid" }));
  r.buckets.forEach((b, i) => {
    const x = i * slot + gap / 2;
    const hc = ((H - TOP) * b.completed) / max;
    const hf = ((H - TOP) * b.failed) / max;
    const title = `${fmtClock(b.start)}: ${b.completed} completed, ${b.failed} failed`;
    if (b.completed) {
      const rect = svg("rect", { x, y: H - hc, width: slot - gap, height: hc, class: "completed", rx: 1.5 });
      rect.append(svg("title"));
      rect.firstChild.textContent = title;
      nodes.push(rect);
    }
    if (b.failed) {
      const rect = svg("rect", { x, y: H - hc - hf, width: slot - gap, height: hf, class: "failed", rx: 1.5 });
      rect.append(svg("title"));
      rect.firstChild.textContent = title;
      nodes.push(rect);
    }
  });
  const label = svg("text", { x: 4, y: 11, class: "max" });
  label.textContent = `${max} per ${r.bucket_s} s${r.saturated ? " (at least)" : ""}`;
  nodes.push(label);
  chart.replaceChildren(...nodes);
}

// ---- rendering: jobs -----------------------------------------------------------

// A job's progress as its node reported it (ctx.progress): 0.4 is "40%",
// {done: 4, of: 10} is "4 / 10", any other object its JSON on one line.
function fmtProgress(p) {
  if (p === null || p === undefined) return "";
  if (typeof p === "number") return `${Math.round(p * 100)}%`;
  if (p && typeof p.done === "number" && typeof p.of === "number") return `${p.done} / ${p.of}`;
  return oneLine(p, 60);
}

function jobRow(job) {
  const selected = job.id === S.selected;
  const actions = el("td", {});
  if (job.status === "delayed" && isAdmin()) {
    actions.append(el("button", { type: "button", cls: "btn small", "data-action": "promote", "data-id": job.id, text: "Run now" }), " ");
  }
  if (!TERMINAL.has(job.status)) {
    actions.append(el("button", { type: "button", cls: "btn small danger", "data-action": "cancel", "data-id": job.id, text: "Cancel", disabled: job.cancel_requested }));
  } else if (job.status !== "completed") {
    actions.append(el("button", { type: "button", cls: "btn small", "data-action": "retry", "data-id": job.id, text: "Retry" }));
  }
  return el("tr", { "data-job-id": job.id, "data-status": job.status, cls: selected ? "selected" : "" },
    el("td", { cls: "id", title: job.id, text: shortId(job.id) }),
    el("td", { text: job.flow_id, title: `version ${job.flow_version}` }),
    el("td", {}, el("span", { cls: "badge", "data-state": job.status, text: job.cancel_requested && job.status === "active" ? "cancelling" : job.status }),
      job.progress !== null && job.progress !== undefined && !TERMINAL.has(job.status)
        ? el("span", { cls: "progress muted small", title: "progress the job reported", text: ` ${fmtProgress(job.progress)}` }) : null,
      job.priority ? el("span", { cls: "priority muted small", title: "priority (higher runs first)", text: ` p${job.priority}` }) : null),
    el("td", { text: `${job.attempts} / ${job.max_attempts}` }),
    el("td", { cls: "ago", title: fmtDate(job.created_at), text: fmtAgo(job.created_at) }),
    el("td", { cls: "dur", text: fmtDuration(jobDuration(job)) }),
    actions);
}

function jobDuration(job) {
  if (job.duration_s !== null && job.duration_s !== undefined) return job.duration_s;
  return job.started_at && !job.finished_at ? nowS() - job.started_at : null;
}

function renderJobs(jobs, scanLimited) {
  const body = $("jobs-body");
  if (!jobs.length) {
    const what = S.q ? `No jobs match “${S.q}”` : S.tab === "all" ? "No jobs yet" : `No ${S.tab} jobs`;
    body.replaceChildren(el("tr", {}, el("td", { cls: "empty", colSpan: 7, text: what })));
  } else {
    // Rows are replaced only when they changed, so a click in progress keeps its target.
    const old = new Map([...body.querySelectorAll("tr[data-job-id]")].map((tr) => [tr.dataset.jobId, tr]));
    const rows = jobs.map((job) => {
      const sig = JSON.stringify([job.status, job.attempts, job.cancel_requested, job.finished_at, job.started_at, job.progress, job.id === S.selected]);
      const tr = old.get(job.id);
      if (tr && tr.dataset.sig === sig) {
        tr.querySelector(".ago").textContent = fmtAgo(job.created_at);
        tr.querySelector(".dur").textContent = fmtDuration(jobDuration(job));
        return tr;
      }
      const row = jobRow(job);
      row.dataset.sig = sig;
      return row;
    });
    body.replaceChildren(...rows);
  }
  const first = jobs.length ? S.offset + 1 : 0;
  const last = S.offset + jobs.length;
  let total = "";
  if (!S.q && S.tab !== "all" && S.queue && S.queue.counts) total = ` of ${fmtInt(S.queue.counts[S.tab] || 0)}`;
  $("page-info").textContent = jobs.length ? `${first}–${last}${total}${scanLimited ? " (search reads the newest 5,000 per state)" : ""}` : "";
  $("prev").disabled = S.offset === 0;
  $("next").disabled = !S.hasMore;
}

function renderJobsError(message) {
  $("jobs-body").replaceChildren(el("tr", {}, el("td", { cls: "empty failed-text", colSpan: 7, text: message })));
}

// ---- rendering: one job --------------------------------------------------------

function renderDetail() {
  const job = S.job;
  const panel = $("detail");
  if (!job) return;
  panel.hidden = false;
  panel.dataset.jobId = job.id;
  panel.dataset.status = job.status;
  document.querySelector(".jobs-area").classList.add("with-detail");
  $("detail-id").textContent = job.id;
  const badge = $("detail-status");
  badge.dataset.state = job.status;
  badge.textContent = job.cancel_requested && job.status === "active" ? "cancelling" : job.status;
  $("detail-cancel").hidden = TERMINAL.has(job.status);
  $("detail-cancel").disabled = job.cancel_requested;
  $("detail-retry").hidden = !(job.status === "failed" || job.status === "cancelled");
  $("detail-promote").hidden = !(job.status === "delayed" && isAdmin());
  // An active job is its worker's: cancel it first (the API says so too).
  $("detail-delete").hidden = !isAdmin() || job.status === "active";

  const waited = job.started_at ? job.started_at - job.created_at : null;
  const running = job.started_at && !job.finished_at ? nowS() - job.started_at : null;
  const facts = [
    ["Flow", `${job.flow_id} (version ${job.flow_version})`],
    ["Queue", job.queue || "–"],
    ["Attempts", `${job.attempts} of ${job.max_attempts}`],
    ["Priority", job.priority ? `${job.priority} (higher runs first)` : "0 (default)"],
    ["Progress", job.progress !== null && job.progress !== undefined ? fmtProgress(job.progress) : "–"],
    ["Worker", job.worker || "–"],
    ["Owner", job.owner || "–"],
    ["Created", fmtDate(job.created_at)],
    ["Started", job.started_at ? `${fmtDate(job.started_at)} (waited ${fmtDuration(waited)})` : "–"],
    ["Finished", fmtDate(job.finished_at)],
    ["Duration", job.duration_s !== null ? fmtDuration(job.duration_s) : running !== null ? `${fmtDuration(running)} so far` : "–"],
    ["Timeout", job.timeout_s ? fmtDuration(job.timeout_s) : "worker default"],
  ];
  $("detail-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v, "data-fact": k.toLowerCase() })]));

  renderOutcome(job);
  $("detail-inputs").textContent = json(job.inputs);
  renderNodes(job);
}

function renderOutcome(job) {
  const outcome = $("detail-outcome");
  // Rebuilt only when it changed: an open traceback keeps its place.
  const sig = JSON.stringify([job.id, job.status, job.cancel_requested, job.error, job.result]);
  if (outcome.dataset.sig === sig) return;
  outcome.dataset.sig = sig;
  if (job.status === "completed") {
    outcome.replaceChildren(el("div", { cls: "box ok" }, el("h3", { text: "Result" }), el("pre", { cls: "json", id: "detail-result", text: json(job.result) })));
  } else if (job.error) {
    const e = job.error;
    const where = [e.node ? `node ${e.node}` : null, e.reason ? `reason: ${e.reason}` : null].filter(Boolean).join(" · ");
    outcome.replaceChildren(el("div", { cls: "box bad" },
      el("h3", { text: job.status === "cancelled" ? "Cancelled" : "Error" }),
      el("div", { id: "detail-error", text: e.message || json(e) }),
      where ? el("div", { cls: "muted small", text: where }) : null,
      // The API sends a traceback to admin keys only.
      e.traceback ? el("details", { cls: "trace", id: "detail-trace" },
        el("summary", { text: "Traceback" }),
        el("pre", { cls: "json", id: "detail-traceback", text: e.traceback })) : null));
  } else if (job.cancel_requested) {
    outcome.replaceChildren(el("div", { cls: "box bad" }, el("div", { text: "Cancel requested: the worker is stopping the job." })));
  } else {
    outcome.replaceChildren();
  }
}

function renderNodes(job) {
  const nodes = job.nodes || [];
  $("detail-nodes").replaceChildren(...(nodes.length ? nodes.map((n) => {
    const ok = n.status === "FINISHED";
    // A node on a branch not taken: never ran, its reason says why.
    const skipped = n.status === "SKIPPED";
    const took = n.finishedAt && n.startedAt ? fmtDuration(n.finishedAt - n.startedAt) : "";
    return el("div", { cls: "node", "data-node-id": n.nodeId },
      el("div", { cls: "node-head" },
        el("strong", { text: n.nodeLabel || n.nodeId }),
        el("span", { cls: "muted small", text: `${n.nodeId} · ${n.type}` }),
        el("span", { cls: "spacer" }),
        el("span", { cls: "muted small", text: took }),
        el("span", { cls: "badge", "data-state": ok ? "completed" : skipped ? "cancelled" : "failed", text: ok ? "finished" : skipped ? "skipped" : "error" })),
      el("pre", { cls: "json", text: ok ? json(n.output) : skipped ? n.reason || "" : n.error || "" }));
  }) : [el("p", { cls: "muted small", text: TERMINAL.has(job.status) ? "No node ran." : "Nodes appear here as they finish; live progress is in the events below." })]));
}

function selectJob(id) {
  if (S.selected === id) return;
  S.selected = id;
  S.job = null;
  for (const tr of document.querySelectorAll("#jobs-body tr[data-job-id]")) {
    tr.classList.toggle("selected", tr.dataset.jobId === id);
  }
  $("detail-events").replaceChildren();
  loadJob();
  openStream(id, true);
}

function closeDetail() {
  stopStream();
  S.selected = null;
  S.job = null;
  $("detail").hidden = true;
  document.querySelector(".jobs-area").classList.remove("with-detail");
  for (const tr of document.querySelectorAll("#jobs-body tr.selected")) tr.classList.remove("selected");
}

// ---- the job's event stream (server-sent events read with fetch) ----------------
// fetch rather than EventSource: every event name arrives (EventSource needs a
// listener per name), and the stream can be stopped for good after the job ends.

function stopStream() {
  if (S.stream) S.stream.ctrl.abort();
  S.stream = null;
}

function openStream(id, fresh) {
  // Not fresh: the same job's stream goes on from the last event shown.
  const last = !fresh && S.stream && S.stream.id === id ? S.stream.last : "0";
  stopStream();
  if (fresh || last === "0") {
    $("detail-events").replaceChildren();
    S.followEvents = true;
  }
  const stream = { id, ctrl: new AbortController(), last, ended: false, closing: false };
  S.stream = stream;
  runStream(stream);
}

async function runStream(stream) {
  const state = $("events-state");
  while (!stream.ctrl.signal.aborted && !stream.ended) {
    state.textContent = "· live";
    try {
      const res = await fetch(`/api/v1/jobs/${enc(stream.id)}/events?after=${enc(stream.last)}`, {
        headers: { Accept: "text/event-stream" }, credentials: "same-origin", signal: stream.ctrl.signal,
      });
      if (!res.ok) {
        state.textContent = res.status === 404 ? "· job not found" : `· unavailable (${res.status})`;
        if (res.status === 401 || res.status === 404 || res.status === 403) return;
      } else {
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) {
            // The server ends the response after the job's final terminal event.
            if (stream.closing) onStreamEnd(stream);
            break;
          }
          buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            if (S.stream === stream) onEventBlock(stream, block);
          }
        }
      }
    } catch (e) {
      if (stream.ctrl.signal.aborted) return;
    }
    if (stream.ended || stream.ctrl.signal.aborted) break;
    await sleep(POLL_MS);
  }
  if (S.stream === stream) state.textContent = stream.ended ? "· ended" : "";
}

function onEventBlock(stream, block) {
  let id = null, name = "message", data = "";
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") id = value;
    else if (field === "event") name = value;
    else if (field === "data") data += (data ? "\n" : "") + value;
  }
  if (id === null) return;
  stream.last = id;
  let parsed = data;
  try { parsed = JSON.parse(data); } catch (e) { /* shown as text */ }
  const list = $("detail-events");
  const ms = Number(id.split("-")[0]);
  list.append(el("li", { "data-event": name, cls: name === "retried" ? "retried" : "" },
    el("span", { cls: "muted", text: Number.isFinite(ms) && ms > 1e12 ? fmtClock(ms / 1000, true) : id }),
    el("span", { cls: `name ${name}`, text: name }),
    el("span", { cls: "data", text: oneLine(parsed, 240) })));
  while (list.children.length > MAX_EVENTS) list.firstChild.remove();
  if (S.followEvents) list.scrollTop = list.scrollHeight;
  // A terminal event ends the stream unless "retried" follows (an earlier run's).
  // A progress event updates the job's progress at once (the job itself is polled).
  if (name === "progress" && S.job && S.job.id === stream.id) {
    const fact = document.querySelector('#detail-facts dd[data-fact="progress"]');
    if (fact) fact.textContent = fmtProgress(parsed);
  }
  if (TERMINAL_EVENTS.has(name)) stream.closing = true;
  else if (name === "retried") stream.closing = false;
}

function onStreamEnd(stream) {
  stream.ended = true;
  $("events-state").textContent = "· ended";
  loadJob();
  loadJobs();
}

// ---- actions -------------------------------------------------------------------

async function act(action, id) {
  try {
    if (action === "cancel") {
      const job = await api("POST", `/api/v1/jobs/${enc(id)}/cancel`);
      toast(job.status === "cancelled" ? `Job ${shortId(id)} cancelled.` : `Cancel requested: job ${shortId(id)} stops when its worker hears of it.`);
    } else if (action === "retry") {
      const job = await api("POST", `/api/v1/jobs/${enc(id)}/retry`);
      toast(`Job ${shortId(id)} queued again (attempt ${job.attempts + 1}).`);
      if (S.selected === id) openStream(id, false);
    } else if (action === "promote") {
      await api("POST", `/api/v1/jobs/${enc(id)}/promote`);
      toast(`Job ${shortId(id)} runs now.`);
    } else if (action === "delete") {
      await api("DELETE", `/api/v1/jobs/${enc(id)}`);
      toast(`Job ${shortId(id)} deleted.`);
      if (S.selected === id) closeDetail();
    }
  } catch (e) {
    toast(e.message, true);
  }
  await tick();
}

async function retryAllFailed() {
  try {
    const answer = await api("POST", withQueue("/api/v1/queue/retry-failed"));
    toast(answer.retried ? `${plural(answer.retried, "failed job")} queued again.` : "No failed jobs to retry.");
  } catch (e) {
    toast(e.message, true);
  }
  await tick();
}

async function cleanState() {
  const status = $("clean-state").value;
  const age = $("clean-age").value;
  const body = age ? { status, older_than_s: Number(age) } : { status };
  try {
    const answer = await api("POST", withQueue("/api/v1/queue/clean"), body);
    toast(`${plural(answer.removed, `${status} job`)} deleted.`);
  } catch (e) {
    toast(e.message, true);
  }
  await tick();
}

// Destructive buttons ask once more in place: the first click arms them for a
// few seconds ("Delete for good?"), the second one acts.
function confirmed(button) {
  if (button.classList.contains("armed")) {
    disarm(button);
    return true;
  }
  button.dataset.label = button.textContent;
  button.textContent = button.dataset.confirm;
  button.classList.add("armed");
  button.armTimer = setTimeout(() => disarm(button), 5000);
  return false;
}

function disarm(button) {
  clearTimeout(button.armTimer);
  if (!button.classList.contains("armed")) return;
  button.classList.remove("armed");
  button.textContent = button.dataset.label;
}

async function togglePause() {
  const paused = $("pause-btn").dataset.paused === "true";
  try {
    await api("POST", withQueue(paused ? "/api/v1/queue/resume" : "/api/v1/queue/pause"));
    toast(paused ? "Queue resumed." : "Queue paused: running jobs go on, no new ones start.");
  } catch (e) {
    toast(e.message, true);
  }
  await tick();
}

function setTab(state) {
  if (S.tab === state) return;
  S.tab = state;
  S.offset = 0;
  renderTabs();
  $("jobs-body").replaceChildren();
  loadJobs();
}

// ---- wiring --------------------------------------------------------------------

function init() {
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("pause-btn").addEventListener("click", togglePause);
  $("queue-select").addEventListener("change", (e) => showQueue(e.target.value));
  $("queues-body").addEventListener("click", (e) => {
    const row = e.target.closest("tr[data-queue]");
    if (row) showQueue(row.dataset.queue);
  });
  $("counts").addEventListener("click", (e) => {
    const card = e.target.closest(".count");
    if (card) setTab(card.dataset.state);
  });
  $("tabs").addEventListener("click", (e) => {
    const tab = e.target.closest("[data-tab]");
    if (tab) setTab(tab.dataset.tab);
  });
  $("jobs-body").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-action]");
    if (button) {
      e.stopPropagation();
      button.disabled = true;
      act(button.dataset.action, button.dataset.id);
      return;
    }
    const row = e.target.closest("tr[data-job-id]");
    if (row) selectJob(row.dataset.jobId);
  });
  $("detail-close").addEventListener("click", closeDetail);
  $("detail-cancel").addEventListener("click", () => S.selected && act("cancel", S.selected));
  $("detail-retry").addEventListener("click", () => S.selected && act("retry", S.selected));
  $("detail-promote").addEventListener("click", () => S.selected && act("promote", S.selected));
  $("detail-delete").addEventListener("click", (e) => {
    if (S.selected && confirmed(e.currentTarget)) act("delete", S.selected);
  });
  $("retry-all").addEventListener("click", (e) => { if (confirmed(e.currentTarget)) retryAllFailed(); });
  $("clean-btn").addEventListener("click", (e) => { if (confirmed(e.currentTarget)) cleanState(); });
  $("prev").addEventListener("click", () => { S.offset = Math.max(0, S.offset - PAGE_SIZE); loadJobs(); });
  $("next").addEventListener("click", () => { if (S.hasMore) { S.offset += PAGE_SIZE; loadJobs(); } });
  let debounce = null;
  $("search").addEventListener("input", (e) => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      S.q = e.target.value.trim();
      S.offset = 0;
      loadJobs();
    }, 250);
  });
  $("toast").addEventListener("click", () => { $("toast").hidden = true; });
  const events = $("detail-events");
  const atEnd = () => events.scrollHeight - events.scrollTop - events.clientHeight < 24;
  events.addEventListener("scroll", () => { S.followEvents = atEnd(); });
  // The list shrinks when the job's result or nodes arrive above it: keep its end in view.
  new ResizeObserver(() => { if (S.followEvents) events.scrollTop = events.scrollHeight; }).observe(events);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && S.selected) closeDetail(); });
  renderTabs();
  if (document.body.dataset.view === "signin") showSignIn();
  else start();
}

init();
