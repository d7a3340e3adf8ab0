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

function renderRows(rows) {
  const tbody = document.getElementById("rows");
  const out = [];
  for (const r of rows) {
    const href = "/studies/" + encodeURIComponent(r.study_instance_uid);
    const prob = r.probability === null ? "—" : Math.round(r.probability * 100) + " %";
    const patient = el("td", { class: "patient" },
      el("a", { href }, r.patient_name || "(no name)"),
      el("small", {}, " " + [r.patient_sex, r.patient_age].filter(Boolean).join(" / ")));
    const study = el("td", {}, r.study_description || "—",
      el("br"), el("small", {}, dicomDate(r.study_date) + (r.accession_number ? " · " + r.accession_number : "")));
    const state = r.read_state === "unread"
      ? r.state.replace("_", " ") + " · unread"
      : r.read_state + (r.claimed_by ? " by " + r.claimed_by : "");
    out.push(el("tr", { class: "row prio-" + r.priority_colour, "data-uid": r.study_instance_uid, "data-priority": r.priority },
      el("td", {}, el("span", { class: "flag flag-" + r.priority_colour, title: r.priority_reason || "" }, r.priority_label)),
      el("td", { class: "num" }, prob),
      el("td", { class: "num waiting", "data-received": r.received_at }, waiting(r.received_at, r.waiting_seconds)),
      patient, study,
      el("td", {}, (r.modalities || []).join(", ")),
      el("td", { class: "state" }, state,
        r.state_reason ? el("small", { class: "state-reason" }, el("br"), r.state_reason) : "")));
  }
  if (!out.length) out.push(el("tr", {}, el("td", { colspan: 7 }, "No studies.")));
  tbody.replaceChildren(...out);
}

async function refreshWorklist() {
  const status = document.getElementById("status");
  try {
    const rows = await api("GET", "/api/worklist?" + worklistQuery());
    renderRows(rows);
    status.textContent = rows.length + " studies · updated " + new Date().toLocaleTimeString();
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
  const uid = page.dataset.studyUid;
  const base = "/api/studies/" + encodeURIComponent(uid);
  for (const b of document.querySelectorAll("button.study-action")) {
    b.addEventListener("click", async () => {
      const status = document.getElementById("action-status");
      try {
        const s = await api("POST", base + "/" + b.dataset.action);
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
