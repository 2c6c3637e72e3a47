// flowqd dashboard: the Schedules panel, for admin keys (the schedule routes are
// admin-only). Lists every schedule with its next run; pauses, resumes, deletes;
// adds one. Loaded after dashboard.js and built on its helpers ($, el, api,
// toast, isAdmin, confirmed, fmtDate, nowS, enc); data goes in as text only.
"use strict";

const SCHEDULE_POLL_MS = 2000;
let schedulesBusy = false;

function fmtIn(t) {
  if (!t) return "–";
  const d = t - nowS();
  if (d < 1) return "due now";
  if (d < 90) return `in ${Math.round(d)} s`;
  if (d < 5400) return `in ${Math.round(d / 60)} min`;
  if (d < 86400 * 2) return `in ${Math.round(d / 3600)} h`;
  return `in ${Math.round(d / 86400)} days`;
}

function scheduleWhen(s) {
  if (s.cron) return `${s.cron} (${s.timezone})`;
  return `every ${s.interval_s} s`;
}

async function loadSchedules() {
  const panel = $("schedules-panel");
  if (schedulesBusy || document.body.dataset.view !== "app" || !isAdmin()) {
    if (!isAdmin()) panel.hidden = true;
    return;
  }
  schedulesBusy = true;
  try {
    const answer = await api("GET", "/api/v1/schedules");
    panel.hidden = false;
    renderSchedules(answer.schedules);
  } catch (e) {
    if (e.status === 403 || e.status === 404) panel.hidden = true;
    else $("schedules-summary").textContent = `cannot read schedules: ${e.message}`;
  } finally {
    schedulesBusy = false;
  }
}

function renderSchedules(list) {
  const body = $("schedules-body");
  const paused = list.filter((s) => s.paused).length;
  $("schedules-summary").textContent = list.length
    ? `${plural(list.length, "schedule")}${paused ? `, ${fmtInt(paused)} paused` : ""}`
    : "";
  if (!list.length) {
    body.replaceChildren(el("tr", {}, el("td", { cls: "empty", colSpan: 6, text: "No schedules: add one below, with PUT /api/v1/schedules/{id}, or in a flow file's schedules list." })));
    return;
  }
  body.replaceChildren(...list.map((s) => el("tr", { "data-schedule-id": s.id, "data-paused": String(s.paused) },
    el("td", { cls: "id", title: s.owner ? `made with key ${s.owner}` : "from a flow file", text: s.id }),
    el("td", { text: s.flow }),
    el("td", { text: scheduleWhen(s), title: `missed ticks: ${s.missed}` }),
    el("td", { cls: "next-run", title: fmtDate(s.next_run_at), text: s.paused ? "paused" : fmtIn(s.next_run_at) }),
    el("td", { text: fmtDate(s.last_tick_at) }),
    el("td", { cls: "actions" },
      el("button", { type: "button", cls: "btn small", "data-sched-action": s.paused ? "resume" : "pause", "data-id": s.id, text: s.paused ? "Resume" : "Pause" }),
      " ",
      el("button", { type: "button", cls: "btn small danger", "data-sched-action": "delete", "data-id": s.id, "data-confirm": "Delete for good?", text: "Delete" })))));
}

async function scheduleAction(action, id) {
  try {
    if (action === "delete") {
      await api("DELETE", `/api/v1/schedules/${enc(id)}`);
      toast(`Schedule ${id} deleted.`);
    } else {
      await api("POST", `/api/v1/schedules/${enc(id)}/${action}`);
      toast(action === "pause" ? `Schedule ${id} paused: no tick fires until resumed.` : `Schedule ${id} resumed.`);
    }
  } catch (e) {
    toast(e.message, true);
  }
  await loadSchedules();
}

async function addSchedule(event) {
  event.preventDefault();
  const id = $("sched-id").value.trim();
  const when = $("sched-when").value.trim();
  const body = { flow: $("sched-flow").value.trim(), missed: $("sched-missed").value };
  if (/^\d+(\.\d+)?$/.test(when)) body.interval_s = Number(when);
  else {
    body.cron = when;
    body.timezone = $("sched-zone").value.trim() || "UTC";
  }
  const inputs = $("sched-inputs").value.trim();
  if (inputs) {
    try { body.inputs = JSON.parse(inputs); } catch (e) { toast(`inputs: not JSON (${e.message})`, true); return; }
  }
  try {
    await api("PUT", `/api/v1/schedules/${enc(id)}`, body);
    toast(`Schedule ${id} saved.`);
    $("sched-form").reset();
    $("sched-zone").value = browserZone();
  } catch (e) {
    toast(e.message, true);
  }
  await loadSchedules();
}

function browserZone() {
  try { return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (e) { return "UTC"; }
}

function initSchedules() {
  $("sched-zone").value = browserZone();
  $("sched-form").addEventListener("submit", addSchedule);
  $("schedules-body").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-sched-action]");
    if (!button) return;
    const action = button.dataset.schedAction;
    if (action === "delete" && !confirmed(button)) return;
    button.disabled = true;
    scheduleAction(action, button.dataset.id);
  });
  loadSchedules();
  setInterval(loadSchedules, SCHEDULE_POLL_MS);
}

initSchedules();
