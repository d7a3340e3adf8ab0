/* cxr-triage-node web page: live worklist, study actions, feedback. No build step. */
"use strict";

const POLL_MS = 5000;

function csrf() {
  const m = document.querySelector('meta[name="csrf-token"]');
  return m ? m.content : "";
}

async function api(method, url, body) {
  const opts = { method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf() } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(url, opts);
  if (res.status === 401) { window.location = "/login?next=" + encodeURIComponent(location.pathname); }
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) { throw new Error((data && data.detail) || res.statusText); }
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function waiting(receivedIso, seconds) {
  // Recompute from the arrival time so the value ticks between polls.
  const s = receivedIso ? Math.max(0, (Date.now() - Date.parse(receivedIso)) / 1000) : seconds;
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min";
  const h = Math.floor(m / 60);
  if (h < 48) return h + " h " + String(m % 60).padStart(2, "0") + " min";
  return Math.floor(h / 24) + " d " + (h % 24) + " h";
}

function dicomDate(d) {
  return d && d.length === 8 ? d.slice(0, 4) + "-" + d.slice(4, 6) + "-" + d.slice(6) : (d || "");
}

function worklistQuery() {
  const q = new URLSearchParams();
  const read = document.getElementById("f-read").value;
  if (read !== "open") q.append("read_state", read);
  const pr = document.getElementById("f-priority").value;
  if (pr) q.append("priority", pr);
  const mod = document.getElementById("f-modality").value.trim();
  if (mod) q.append("modality", mod);
  const from = document.getElementById("f-from").value;
  if (from) q.append("date_from", from);
  return q.toString();
}

function timeZone() {
  return document.body.dataset.timeZone || "UTC";
}

function clock(date, withSeconds) {
  // 24-hour clock in the node's time zone (never the browser's locale), zone shown.
  const opts = { timeZone: timeZone(), hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZoneName: "short" };
  if (withSeconds) opts.second = "2-digit";
  return new Intl.DateTimeFormat("en-GB", opts).format(date);
}

function cut(tag, cls, text, href) {
  // One line: long text is cut with an ellipsis; the full text shows on hover.
  const value = text || "—";
  const inner = href ? el("a", { href, title: value }, value) : value;
  const attrs = { class: cls + " cut" };
  if (!href) attrs.title = value;
  return el(tag, attrs, inner);
}

function renderCounts(rows) {
  // Rows come in priority order, so the counts do too.
  const groups = new Map();
  for (const r of rows) {
    const g = groups.get(r.priority_name) || { label: r.priority_label, colour: r.priority_colour, n: 0 };
    g.n += 1;
    groups.set(r.priority_name, g);
  }
  const items = [];
  for (const [name, g] of groups) {
    items.push(el("li", { class: "count count-" + g.colour, "data-priority-name": name, title: g.label + ": " + g.n },
      el("span", { class: "n" }, g.n), " " + g.label));
  }
  if (!items.length) items.push(el("li", { class: "count" }, "no studies"));
  document.getElementById("counts").replaceChildren(...items);
}

function readingCell(r) {
  const td = el("td", { class: "state" });
  const parts = [];
  if (r.read_state === "claimed") {
    parts.push(el("span", { class: "mark-claimed", title: "Claimed by " + r.claimed_by }, "Claimed: " + r.claimed_by));
  } else if (r.read_state === "completed") {
    parts.push(el("span", { class: "mark-read" }, "Read" + (r.claimed_by ? " by " + r.claimed_by : "")));
  } else {
    parts.push(el("span", { class: "triage-state" }, r.state === "triaged" ? "unread" : r.state.replace("_", " ")));
  }
  if (r.opened_by && r.opened_by.length) {
    parts.push(" ", el("span", { class: "mark-opened", title: "Opened by " + r.opened_by.join(", ") }, "opened"));
  }
  if (r.state_reason) parts.push(el("br"), el("small", { class: "state-reason" }, r.state_reason));
  td.append(...parts);
  td.title = td.textContent;
  return td;
}

function renderRows(rows) {
  const tbody = document.getElementById("rows");
  const out = [];
  for (const r of rows) {
    const href = "/studies/" + encodeURIComponent(r.study_instance_uid);
    const received = r.received_at ? "received " + clock(new Date(r.received_at), false) : "";
    out.push(el("tr", { class: "row prio-" + r.priority_colour, "data-uid": r.study_instance_uid, "data-priority": r.priority },
      el("td", {}, el("span", { class: "flag flag-" + r.priority_colour, title: r.priority_reason || "" }, r.priority_label)),
      el("td", { class: "num prob" }, r.probability_text),
      el("td", { class: "num waiting", "data-received": r.received_at, title: received }, waiting(r.received_at, r.waiting_seconds)),
      cut("td", "patient", r.patient_name || "(no name)", href),
      el("td", { class: "sexage" }, r.sex_age || "—"),
      cut("td", "study", r.study_description),
      cut("td", "accession", r.accession_number),
      el("td", { class: "date" }, dicomDate(r.study_date) || "—"),
      cut("td", "mod", (r.modalities || []).join(", ")),
      readingCell(r)));
  }
  if (!out.length) out.push(el("tr", {}, el("td", { colspan: 10 }, "No studies.")));
  tbody.replaceChildren(...out);
  renderCounts(rows);
}

async function refreshWorklist() {
  const status = document.getElementById("status");
  try {
    const rows = await api("GET", "/api/worklist?" + worklistQuery());
    renderRows(rows);
    status.textContent = "updated " + clock(new Date(), true);
    status.title = rows.length + " studies, updated " + clock(new Date(), true);
    status.classList.remove("error");
  } catch (e) {
    status.textContent = "update failed: " + e.message;
    status.classList.add("error");
  }
}

function initWorklist() {
  if (!document.getElementById("worklist-page")) return;
  for (const id of ["f-read", "f-priority", "f-modality", "f-from"]) {
    document.getElementById(id).addEventListener("change", refreshWorklist);
  }
  refreshWorklist();
  setInterval(refreshWorklist, POLL_MS);
  setInterval(() => {
    for (const td of document.querySelectorAll("td.waiting")) {
      td.textContent = waiting(td.dataset.received, 0);
    }
  }, 30000);
}

function initStudy() {
  const page = document.getElementById("study-page");
  if (!page) return;
  // A result without a heatmap (older revision, map not made): no broken image.
  for (const img of document.querySelectorAll("img.heatmap")) {
    const hide = () => { img.closest("figure").hidden = true; };
    img.addEventListener("error", hide);
    if (img.complete && img.naturalWidth === 0) hide();
  }
  const uid = page.dataset.studyUid;
  const base = "/api/studies/" + encodeURIComponent(uid);
  const actions = document.getElementById("study-actions");
  // Only the actions that make sense now: Claim when not mine, Release when mine,
  // Mark read until read.
  const showActions = (readState, claimedBy) => {
    if (!actions) return;
    const mine = claimedBy && claimedBy === actions.dataset.me;
    const read = readState === "completed";
    for (const b of actions.querySelectorAll("button.study-action")) {
      b.hidden = read
        || (b.dataset.action === "claim" && mine)
        || (b.dataset.action === "release" && !mine);
    }
  };
  if (actions) showActions(actions.dataset.readState, actions.dataset.claimedBy);
  for (const b of document.querySelectorAll("button.study-action")) {
    b.addEventListener("click", async () => {
      const status = document.getElementById("action-status");
      try {
        const s = await api("POST", base + "/" + b.dataset.action);
        showActions(s.read_state, s.claimed_by);
        document.getElementById("read-state").textContent =
          s.read_state + (s.claimed_by ? " by " + s.claimed_by : "");
        status.textContent = "done";
        status.classList.remove("error");
      } catch (e) {
        status.textContent = e.message;
        status.classList.add("error");
      }
    });
  }
  const form = document.getElementById("feedback");
  if (!form) return;
  const ai = document.getElementById("ai-decision").value;
  const opposite = { normal: "abnormal", abnormal: "normal" };
  form.addEventListener("change", (ev) => {
    if (!ai) return;
    if (ev.target.name === "agree") {
      const label = ev.target.value === "true" ? ai : opposite[ai];
      form.querySelector('input[name="label"][value="' + label + '"]').checked = true;
    } else if (ev.target.name === "label") {
      const agree = ev.target.value === ai ? "true" : "false";
      form.querySelector('input[name="agree"][value="' + agree + '"]').checked = true;
    }
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const status = document.getElementById("feedback-status");
    const label = form.querySelector('input[name="label"]:checked');
    const agree = form.querySelector('input[name="agree"]:checked');
    const body = { label: label ? label.value : "", comment: form.elements.comment.value || null };
    if (agree) body.agree = agree.value === "true";
    try {
      const saved = await api("POST", base + "/feedback", body);
      status.textContent = "Saved: " + saved.label +
        (saved.agree === null ? "" : saved.agree ? " (agrees with AI)" : " (disagrees with AI)");
      status.classList.remove("error");
    } catch (e) {
      status.textContent = "Not saved: " + e.message;
      status.classList.add("error");
    }
  });
}

function initLogout() {
  const b = document.getElementById("logout");
  if (!b) return;
  b.addEventListener("click", async () => {
    try { await api("POST", "/logout"); } finally { window.location = "/login"; }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  initLogout();
  initWorklist();
  initStudy();
});
