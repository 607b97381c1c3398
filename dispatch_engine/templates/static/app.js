// Dispatch Engine dashboard: local times, live refreshes over SSE, the compose helpers and the
// campaign buttons. Every page works without this file; it only makes them nicer.
"use strict";

const csrfToken = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

async function api(url, options = {}) {
  const headers = { "X-CSRF-Token": csrfToken(), ...(options.headers || {}) };
  const response = await fetch(url, { credentials: "same-origin", ...options, headers });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const error = (body && body.error) || { message: `The server answered ${response.status}.` };
    if (response.status === 401) error.message = "Your session has ended. Reload the page to sign in again.";
    throw Object.assign(new Error(error.message), { status: response.status, error });
  }
  return body;
}

// ---- times in the reader's zone ----

const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

function localizeTimes(root = document) {
  for (const el of root.querySelectorAll("time[data-local]")) {
    const at = new Date(el.getAttribute("datetime"));
    if (Number.isNaN(at.getTime())) continue;
    el.title = el.textContent;
    el.textContent = timeFormat.format(at);
  }
}

// ---- live region: refetched (server-rendered) whenever an event concerns this user ----

function startLive() {
  const region = document.querySelector("[data-live]");
  const status = document.querySelector("[data-live-status]");
  const announce = document.querySelector("[data-live-announce]");
  if (!region || !window.EventSource) return;
  let busy = false, again = false;
  // Screen readers hear one short line when a refresh changed it, never the region itself.
  const summaryOf = () => region.querySelector("[data-summary]")?.dataset.summary || "";
  let said = summaryOf();

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    region.setAttribute("aria-busy", "true");
    try {
      const response = await fetch(location.href, { headers: { "X-Partial": "live" }, credentials: "same-origin" });
      if (response.ok && response.headers.get("Content-Type")?.startsWith("text/html")) {
        const focused = document.activeElement?.id;
        region.innerHTML = await response.text();
        const summary = summaryOf();
        if (announce && summary && summary !== said) announce.textContent = summary;
        said = summary;
        localizeTimes(region);
        wireApiForms(region);
        if (focused) document.getElementById(focused)?.focus();
      }
    } finally {
      region.removeAttribute("aria-busy");
      busy = false;
      if (again) { again = false; setTimeout(refresh, 150); }
    }
  }
  window.dispatchRefresh = refresh;

  const source = new EventSource("/api/events");
  const setState = (state, text) => {
    if (!status) return;
    status.hidden = false;
    status.dataset.state = state;
    status.textContent = text;
  };
  source.addEventListener("hello", () => setState("live", "Live"));
  for (const kind of ["dispatches", "campaign", "resync"]) source.addEventListener(kind, refresh);
  source.onerror = () => setState("off", "Reconnecting…");
  window.addEventListener("pagehide", () => source.close());
}

// ---- campaign buttons: POST to the API with the CSRF header; show its error if any ----

function wireApiForms(root = document) {
  for (const form of root.querySelectorAll("form[data-api-form]")) {
    if (form.dataset.wired) continue;
    form.dataset.wired = "1";
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button");
      if (button?.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      const errorBox = document.querySelector("[data-action-error]");
      if (errorBox) errorBox.hidden = true;
      button?.setAttribute("aria-busy", "true");
      try {
        await api(form.action, { method: "POST" });
        if (window.dispatchRefresh) await window.dispatchRefresh(); else location.reload();
      } catch (err) {
        const box = document.querySelector("[data-action-error]");
        if (box) { box.textContent = err.message; box.hidden = false; box.focus?.(); }
      } finally {
        button?.removeAttribute("aria-busy");
      }
    });
  }
}

// ---- compose ----

const FIELD_FOR = { start_at: "start_local", delay_between_ms: "delay_seconds", delay_jitter_ms: "jitter_seconds",
                    recipients_csv: "recipients",
                    recipients_file: "recipients", recipients: "recipients" };
const INPUT_FOR = { recipients: "recipients_csv" };

function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

function showFieldError(form, field, message) {
  const name = FIELD_FOR[field] || field || "form";
  const box = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`) || form.querySelector('[data-error-for="form"]');
  box.textContent = message;
  box.hidden = false;
  const input = form.querySelector(`#${CSS.escape(INPUT_FOR[name] || name)}`);
  if (input) { input.setAttribute("aria-invalid", "true"); return input; }
  return box;
}

function clearFieldErrors(form, only) {
  for (const box of form.querySelectorAll("[data-error-for]")) {
    if (only && !only.includes(box.dataset.errorFor)) continue;
    box.hidden = true;
    box.textContent = "";
  }
  for (const input of form.querySelectorAll('[aria-invalid="true"]')) {
    if (!only || only.includes(input.id) || only.includes(input.name)) input.removeAttribute("aria-invalid");
  }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

function startCompose() {
  const form = document.querySelector("form[data-compose]");
  if (!form) return;
  const field = (name) => form.elements.namedItem(name);
  const offset = -new Date().getTimezoneOffset();
  form.querySelector("[data-tz-offset]").value = String(offset);
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "your time zone";
  form.querySelector("[data-tz-label]").textContent = `(${zone}; empty = now)`;

  const file = form.querySelector("#recipients_file");
  const pasted = form.querySelector("#recipients_csv");
  const report = form.querySelector("[data-recipients-report]");
  let firstRecipient = null;

  async function checkRecipients() {
    clearFieldErrors(form, ["recipients"]);
    const data = new FormData();
    if (file.files.length) data.append("recipients_file", file.files[0]);
    else if (pasted.value.trim()) data.append("recipients_csv", pasted.value);
    else { report.replaceChildren(); firstRecipient = null; preview(); return; }
    report.replaceChildren(el("p", { class: "muted" }, "Checking the recipients…"));
    try {
      const result = await api("/api/compose/recipients", { method: "POST", body: data });
      firstRecipient = result.first;
      const found = `${result.valid} valid address${result.valid === 1 ? "" : "es"} found`;
      const parts = [el("p", { class: `recipients-count${result.valid ? " ok" : ""}`, "data-valid-count": String(result.valid) },
        found + (result.rejected_total ? `, ${result.rejected_total} line${result.rejected_total === 1 ? "" : "s"} rejected` : "") + ".")];
      if (result.columns.length) {
        parts.push(el("p", { class: "help" }, "Variables from your columns: ",
          ...result.columns.flatMap((c, i) => [i ? ", " : "", el("code", {}, `{{ ${c} }}`)])));
      }
      if (result.rejected_total) {
        const rows = result.rejected.map((r) => el("tr", {}, el("td", {}, String(r.line)), el("td", { class: "email" }, r.value), el("td", {}, r.reason)));
        parts.push(el("div", { class: "rejects table-wrap" }, el("table", { "aria-label": "Rejected lines" },
          el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Line"), el("th", { scope: "col" }, "Value"), el("th", { scope: "col" }, "Why"))),
          el("tbody", {}, ...rows))));
        if (result.rejected_total > result.rejected.length) parts.push(el("p", { class: "help" }, `Showing the first ${result.rejected.length}.`));
      }
      report.replaceChildren(...parts);
    } catch (err) {
      report.replaceChildren();
      showFieldError(form, err.error?.field || "recipients", err.message);
    }
    preview();
  }

  const previewFor = form.querySelector("[data-preview-for]");
  const previewSubject = form.querySelector("[data-preview-subject]");
  const previewText = form.querySelector("[data-preview-text]");
  const previewHtml = form.querySelector("[data-preview-html]");

  async function preview() {
    const payload = {
      subject: field("subject").value, body: field("body").value, html: field("html").value,
      recipient: firstRecipient || { email: "someone@example.com", vars: {} },
    };
    clearFieldErrors(form, ["subject", "body", "html"]);
    if (!payload.subject && !payload.body && !payload.html) return;
    try {
      const out = await api("/api/compose/preview", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload),
      });
      previewFor.textContent = firstRecipient ? `As ${out.recipient} (the first recipient) will see it:` : `As ${out.recipient} would see it (check the recipients to use the first one):`;
      previewSubject.textContent = out.subject || "—";
      previewText.textContent = out.body;
      previewHtml.hidden = !out.html;
      if (out.html) previewHtml.srcdoc = `<!doctype html><meta charset="utf-8"><style>body{font:14px/1.5 system-ui,sans-serif;margin:10px}</style>${out.html}`;
    } catch (err) {
      if (err.error?.field) showFieldError(form, err.error.field, err.message);
    }
  }

  file.addEventListener("change", checkRecipients);
  pasted.addEventListener("input", debounce(checkRecipients, 400));
  for (const name of ["subject", "body", "html"]) field(name).addEventListener("input", debounce(preview, 300));

  // The form's own check (POST /api/compose/check): every error at once in the form's words,
  // and warnings that do not stop a schedule (a start in the past, a limit above the sender's).
  function startIso() {
    const start = field("start_local").value;
    if (!start) return "";
    const at = new Date(start);  // read as local time, DST included
    return Number.isNaN(at.getTime()) ? start : at.toISOString();
  }
  async function checkForm() {
    const values = { has_recipients: Boolean(file.files.length || pasted.value.trim()), start_at: startIso() };
    for (const name of ["name", "subject", "body", "html", "delay_seconds", "jitter_seconds", "hourly_limit", "daily_limit", "sender"]) {
      values[name] = field(name).value;
    }
    return api("/api/compose/check", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(values),
    });
  }
  function showWarnings(warnings) {
    for (const box of form.querySelectorAll("[data-warning-for]")) {
      const message = warnings[box.dataset.warningFor];
      box.hidden = !message;
      box.textContent = message || "";
    }
  }
  const rewarn = debounce(async () => {
    try { showWarnings((await checkForm()).warnings); } catch (_) { /* shown on submit */ }
  }, 300);
  for (const name of ["start_local", "hourly_limit", "daily_limit", "sender"]) {
    field(name).addEventListener("input", rewarn);
    field(name).addEventListener("change", rewarn);
  }
  if (file.files.length || pasted.value.trim()) checkRecipients(); else preview();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    const button = form.querySelector("[data-schedule]");
    let checked;
    try { checked = await checkForm(); } catch (err) { showFieldError(form, err.error?.field, err.message).focus(); return; }
    showWarnings(checked.warnings);
    const problems = Object.entries(checked.errors);
    if (problems.length) {
      const shown = problems.map(([name, message]) => showFieldError(form, name, message));
      shown[0].focus();
      return;
    }
    const data = new FormData();
    for (const name of ["name", "subject", "body", "html", "hourly_limit", "daily_limit", "sender"]) {
      if (field(name).value !== "") data.append(name, field(name).value);
    }
    const pool = [...(form.querySelector("#senders")?.selectedOptions || [])].map((o) => o.value);
    if (pool.length) { data.delete("sender"); data.append("senders", pool.join(",")); }  // a pool
    if (startIso()) data.append("start_at", startIso());
    for (const [input, name] of [["delay_seconds", "delay_between_ms"], ["jitter_seconds", "delay_jitter_ms"]]) {
      const value = field(input).value;
      if (value === "") continue;
      const seconds = Number(value);
      data.append(name, Number.isFinite(seconds) ? String(Math.round(seconds * 1000)) : value);
    }
    if (file.files.length) data.append("recipients_file", file.files[0]);
    else data.append("recipients_csv", pasted.value);
    button.disabled = true;
    button.textContent = "Scheduling…";
    try {
      const result = await api("/api/emails/schedule", { method: "POST", body: data });
      location.assign(`/emails?scheduled=${result.campaign.id}`);
    } catch (err) {
      const where = err.error?.field?.startsWith("senders[") ? "senders" : err.error?.field;
      showFieldError(form, where, err.message).focus();
      button.disabled = false;
      button.textContent = "Schedule";
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  localizeTimes();
  wireApiForms();
  startLive();
  startCompose();
});
