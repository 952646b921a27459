// Palisade Action center: a small client of the controller's JSON API.
//
// Everything shown comes from the API and is put into the page as text (textContent, text
// nodes, attribute values), never as markup: hostnames, paths, comments and results that
// agents or users report cannot inject anything. The API checks every permission; this page
// only hides what the API would refuse anyway.
"use strict";

const COLUMNS = [
  { key: "id", label: "Id", sort: "id" },
  { key: "kind", label: "Action", sort: "kind" },
  { key: "device", label: "Device", sort: "device" },
  { key: "entity", label: "Entity / target", sort: null },
  { key: "device_group", label: "Device group", sort: "device_group" },
  { key: "source", label: "Action source", sort: "source" },
  { key: "status", label: "Status", sort: "status" },
  { key: "requested_by", label: "Requested by", sort: "requested_by" },
  { key: "created_at", label: "Requested at", sort: "created_at" },
  { key: "comment", label: "Comment", sort: "comment" },
  { key: "decided_by", label: "Decided by", sort: "decided_by" },
  { key: "decided_at", label: "Decided at", sort: "decided_at" },
  { key: "finished_at", label: "Finished at", sort: "finished_at" },
  { key: "result_summary", label: "Result summary", sort: "result_summary" },
];
const DEFAULT_COLUMNS = {
  pending: ["id", "kind", "device", "entity", "device_group", "source", "requested_by", "created_at", "comment"],
  history: ["id", "kind", "device", "entity", "device_group", "source", "status", "requested_by", "created_at",
    "comment", "decided_by", "finished_at", "result_summary"],
};
const KINDS = ["isolate", "release_isolation", "contain", "uncontain", "quarantine", "release_quarantine",
  "scan", "restrict_execution", "release_execution", "collect_package", "request_sample", "offboard"];
const UNDOABLE = ["isolate", "contain", "quarantine", "restrict_execution"];
const STATUSES = ["pending_approval", "approved", "delivered", "acknowledged", "in_progress", "succeeded",
  "failed", "rejected", "cancelled", "expired", "timed_out", "undone"];
// The words for kinds, statuses, sources and timeline hops: GET /api/v1/labels, the one list
// (palisade_common::labels) that palisadectl and the CSV export use too. Filled at sign-in.
const LABELS = { kinds: {}, statuses: {}, sources: {}, hops: {} };
const kindLabel = (k) => LABELS.kinds[k] || k;
const statusLabel = (s) => LABELS.statuses[s] || s;
const sourceLabel = (s) => LABELS.sources[s] || s;
const hopLabel = (h) => LABELS.hops[h] || h;
// Most characters a list cell holds: the whole value is in the detail (web/static/app.css
// clamps the cell to its width as well). A page of rows holding the longest values the API
// accepts took a minute to lay out before.
const CELL_MAX_CHARS = 200;
const WINDOWS = [["day", "Last day"], ["week", "Last week"], ["30d", "Last 30 days"], ["6m", "Last 6 months"], ["", "All time"]];
const PAGE_SIZES = [25, 50, 100, 200];
const EXPORT_MAX_ROWS = 100000; // web/export.rs MAX_ROWS

let me = null; // { user, csrf, permissions }
let view = null; // state of the Action center tab shown

// ---------------------------------------------------------------- helpers

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

function fmtTime(ms) {
  if (ms === null || ms === undefined) return "";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function can(p) {
  return !!me && me.permissions.includes(p);
}

function toast(message, bad) {
  const t = $("#toast");
  t.textContent = message;
  t.className = bad ? "bad" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
}

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && me && me.csrf) headers["X-CSRF-Token"] = me.csrf;
  const r = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 204) return null;
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (!r.ok) {
    const err = (data && data.error) || {};
    if (r.status === 401 && path !== "/api/v1/session") showLogin("Your session has ended; sign in again.");
    throw new ApiError(r.status, err.code || "error", err.message || `HTTP ${r.status}`);
  }
  return data;
}

// ---------------------------------------------------------------- session

function showLogin(message) {
  me = null;
  $("#top").hidden = true;
  $("#main").replaceChildren();
  $("#detail").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#login-name").focus();
}

async function login(ev) {
  ev.preventDefault();
  $("#login-error").textContent = "";
  try {
    const s = await api("POST", "/api/v1/session", {
      name: $("#login-name").value, password: $("#login-password").value,
    });
    $("#login-password").value = "";
    await started(s);
  } catch (e) {
    $("#login-error").textContent = e.message;
  }
}

async function started(session) {
  const s = session.permissions ? session : await api("GET", "/api/v1/session");
  me = { user: s.user, csrf: s.csrf, permissions: s.permissions };
  await loadLabels();
  $("#login").hidden = true;
  $("#top").hidden = false;
  const groups = me.user.device_groups.length ? ` · ${me.user.device_groups.join(", ")}` : "";
  $("#whoami").textContent = `${me.user.name} (${me.user.role}${groups})`;
  $("#nav-admin").hidden = !can("admin");
  route();
}

async function loadLabels() {
  if (Object.keys(LABELS.kinds).length) return;
  try {
    const l = await api("GET", "/api/v1/labels");
    for (const part of ["kinds", "statuses", "sources", "hops"]) {
      for (const { id, label } of l[part] || []) LABELS[part][id] = label;
    }
  } catch (e) { toast(`Labels: ${e.message}`, true); }
}

async function logout() {
  try { await api("DELETE", "/api/v1/session"); } catch (_) { /* ended anyway */ }
  showLogin("Signed out.");
}

// ---------------------------------------------------------------- routing

function route() {
  if (!me) return;
  const hash = location.hash || "#/pending";
  const [, page, arg] = hash.split("/");
  for (const a of $$("#top nav a")) a.classList.remove("active");
  if (page === "devices") { $("#nav-devices").classList.add("active"); return arg ? devicePage(decodeURIComponent(arg)) : devicesPage(); } // device.js
  if (page === "admin") { $("#nav-admin").classList.add("active"); return adminPage(); }
  $("#nav-actions").classList.add("active");
  if (page === "action" && arg) {
    if (!view) actionCenter("history");
    return openDetail(arg);
  }
  return actionCenter(page === "history" ? "history" : "pending");
}

// ---------------------------------------------------------------- Action center

async function actionCenter(tab) {
  let prefs = {};
  try { prefs = await api("GET", `/api/v1/ui-prefs/${tab}`); } catch (_) { prefs = {}; }
  view = {
    tab,
    columns: Array.isArray(prefs.columns) && prefs.columns.length
      ? prefs.columns.filter((c) => COLUMNS.some((k) => k.key === c)) : DEFAULT_COLUMNS[tab].slice(),
    pageSize: PAGE_SIZES.includes(prefs.page_size) ? prefs.page_size : 50,
    sort: prefs.sort || (tab === "pending" ? "created_at" : "id"),
    order: prefs.order === "asc" ? "asc" : "desc",
    window: prefs.window !== undefined ? prefs.window : (tab === "pending" ? "" : "30d"),
    filters: {},
    offset: 0,
    rows: [],
    selected: new Set(),
    total: 0,
  };
  renderActionCenter();
  await loadActions();
}

function savePrefs() {
  const p = { columns: view.columns, page_size: view.pageSize, sort: view.sort, order: view.order, window: view.window };
  api("PUT", `/api/v1/ui-prefs/${view.tab}`, p).catch((e) => toast(e.message, true));
}

function query(withPage) {
  const q = new URLSearchParams();
  q.set("view", view.tab);
  if (view.window) q.set("window", view.window);
  for (const [k, v] of Object.entries(view.filters)) if (v) q.set(k, v);
  q.set("sort", view.sort);
  q.set("order", view.order);
  if (withPage) { q.set("limit", view.pageSize); q.set("offset", view.offset); }
  return q;
}

function select(id, options, value, attrs) {
  return el("select", { id, ...attrs },
    options.map(([v, label]) => el("option", { value: v, selected: v === value }, label)));
}

function renderActionCenter() {
  const tab = view.tab;
  const main = $("#main");
  const tabs = el("div", { class: "tabs", role: "tablist" },
    el("a", { href: "#/pending", id: "tab-pending", class: tab === "pending" ? "active" : null, role: "tab" }, "Pending"),
    el("a", { href: "#/history", id: "tab-history", class: tab === "history" ? "active" : null, role: "tab" }, "History"));

  const any = [["", "any"]];
  const filters = el("div", { class: "toolbar" },
    el("label", {}, "Time ", select("f-window", WINDOWS, view.window)),
    el("label", {}, "Action ", select("f-kind", any.concat(KINDS.map((k) => [k, kindLabel(k)])), "")),
    tab === "history" ? el("label", {}, "Status ", select("f-status", any.concat(STATUSES.filter((s) => s !== "pending_approval").map((s) => [s, statusLabel(s)])), "")) : null,
    el("label", {}, "Source ", select("f-source", any.concat(Object.entries(LABELS.sources)), "")),
    el("label", {}, "Device ", el("input", { id: "f-device", type: "text", size: 12, placeholder: "hostname or id" })),
    el("label", {}, "Group ", el("input", { id: "f-group", type: "text", size: 10 })),
    el("label", {}, "Requester ", el("input", { id: "f-requester", type: "text", size: 10 })),
    el("button", { type: "button", id: "apply", class: "primary", onclick: applyFilters }, "Apply"),
    el("span", { class: "spacer" }),
    el("label", {}, "Rows ", select("page-size", PAGE_SIZES.map((n) => [String(n), String(n)]), String(view.pageSize),
      { onchange: (e) => { view.pageSize = Number(e.target.value); view.offset = 0; savePrefs(); loadActions(); } })),
    el("button", { type: "button", id: "columns-toggle", onclick: () => { $("#columns-menu").hidden = !$("#columns-menu").hidden; } }, "Columns"),
    el("a", { id: "export", href: "#", class: "link", download: "", onclick: (e) => {
      // The server refuses a view larger than one export rather than cutting it short.
      if (view.total > EXPORT_MAX_ROWS) {
        e.preventDefault();
        toast(`This view holds ${view.total} actions; one export holds at most ${EXPORT_MAX_ROWS}. Narrow it (time window, filters) and export the parts.`, true);
      }
    } }, "Export CSV"));
  $("#f-window", filters).addEventListener("change", (e) => { view.window = e.target.value; savePrefs(); applyFilters(); });
  for (const input of $$("input", filters)) input.addEventListener("keydown", (e) => { if (e.key === "Enter") applyFilters(); });

  const menu = el("div", { id: "columns-menu", class: "columns-menu", hidden: true },
    COLUMNS.map((c) => el("label", {},
      el("input", {
        type: "checkbox", dataset: { col: c.key }, checked: view.columns.includes(c.key),
        onchange: (e) => {
          if (e.target.checked) view.columns = COLUMNS.map((k) => k.key).filter((k) => k === c.key || view.columns.includes(k));
          else view.columns = view.columns.filter((k) => k !== c.key);
          savePrefs(); renderTable();
        },
      }), " ", c.label)));

  const bulk = el("div", { class: "bulk" },
    el("input", { type: "text", id: "bulk-comment", placeholder: tab === "pending" ? "Comment (required to reject)" : "Comment (required to undo)" }),
    tab === "pending" && can("approve") ? [
      el("button", { type: "button", id: "bulk-approve", class: "primary", onclick: () => decide(true) }, "Approve selected"),
      el("button", { type: "button", id: "bulk-reject", class: "danger", onclick: () => decide(false) }, "Reject selected"),
    ] : null,
    tab === "history" && can("approve") ? el("button", { type: "button", id: "bulk-undo", onclick: () => undoSelected() }, "Undo selected") : null,
    el("span", { id: "bulk-msg", role: "alert" }));
  // What the selection is aimed at, one line per action, so that a bulk decision is not blind.
  const targets = el("ul", { id: "bulk-targets", class: "bulk-targets", hidden: true });
  if (!can("approve")) $("#bulk-comment", bulk).hidden = true;

  const table = el("table", { id: "actions" }, el("thead"), el("tbody"));
  const pager = el("div", { class: "pager" },
    el("button", { type: "button", id: "prev", onclick: () => { view.offset = Math.max(0, view.offset - view.pageSize); loadActions(); } }, "‹ Previous"),
    el("span", { id: "page-info" }),
    el("button", { type: "button", id: "next", onclick: () => { view.offset += view.pageSize; loadActions(); } }, "Next ›"));
  main.replaceChildren(tabs, filters, menu, bulk, targets, table, pager);
}

function applyFilters() {
  const v = (id) => { const e = $(id); return e ? e.value.trim() : ""; };
  view.filters = {
    kind: v("#f-kind"), status: v("#f-status"), source: v("#f-source"),
    device: v("#f-device"), device_group: v("#f-group"), requested_by: v("#f-requester"),
  };
  view.offset = 0;
  loadActions();
}

async function loadActions() {
  const tab = view.tab;
  try {
    const r = await api("GET", `/api/v1/actions?${query(true)}`);
    if (!view || view.tab !== tab) return;
    view.rows = r.actions;
    view.total = r.total;
    view.selected = new Set([...view.selected].filter((id) => r.actions.some((a) => a.id === id)));
    renderTable();
  } catch (e) {
    toast(e.message, true);
  }
}

/// A list cell's text, cut to CELL_MAX_CHARS with "…".
function clampText(v) {
  const s = String(v);
  return s.length > CELL_MAX_CHARS ? `${s.slice(0, CELL_MAX_CHARS - 1)}…` : s;
}

function cellValue(a, key) {
  switch (key) {
    case "kind": return kindLabel(a.kind);
    case "device": return a.hostname || (a.device_id ? a.device_id : `fleet-wide (${a.children ? a.children.total : 0} devices)`);
    case "entity": return a.entity || "";
    case "device_group": return a.device_group || "";
    case "source": return sourceLabel(a.source);
    case "created_at": case "decided_at": case "finished_at": return fmtTime(a[key]);
    default: return a[key] === null || a[key] === undefined ? "" : String(a[key]);
  }
}

function renderTable() {
  const cols = view.columns.map((k) => COLUMNS.find((c) => c.key === k)).filter(Boolean);
  const selectable = can("approve");
  const head = el("tr", {},
    selectable ? el("th", {}, el("input", { type: "checkbox", id: "select-all", "aria-label": "Select all", onchange: (e) => {
      view.selected = e.target.checked ? new Set(view.rows.map((a) => a.id)) : new Set();
      renderTable();
    } })) : null,
    cols.map((c) => el("th", {
      class: c.sort ? "sortable" : null, dataset: { col: c.key },
      "aria-sort": c.sort && view.sort === c.sort ? (view.order === "asc" ? "ascending" : "descending") : null,
      onclick: () => {
        if (!c.sort) return;
        if (view.sort === c.sort) view.order = view.order === "asc" ? "desc" : "asc";
        else { view.sort = c.sort; view.order = "asc"; }
        view.offset = 0; savePrefs(); loadActions();
      },
    }, c.label)),
    selectable ? el("th", {}, "") : null);
  const rows = view.rows.map((a) => {
    const sel = view.selected.has(a.id);
    return el("tr", { dataset: { id: a.id, kind: a.kind }, class: sel ? "selected" : null },
      selectable ? el("td", {}, el("input", { type: "checkbox", class: "sel", checked: sel, "aria-label": `Select action ${a.id}`, onchange: (e) => {
        if (e.target.checked) view.selected.add(a.id); else view.selected.delete(a.id);
        e.target.closest("tr").classList.toggle("selected", e.target.checked);
        updateBulk();
      } })) : null,
      cols.map((c) => {
        if (c.key === "id") return el("td", { dataset: { col: "id" } }, el("button", { type: "button", class: "link open-detail", onclick: () => openDetail(a.id) }, String(a.id)));
        if (c.key === "status") return el("td", { dataset: { col: "status" } }, el("span", { class: `status ${a.status}`, dataset: { status: a.status } }, statusLabel(a.status)));
        const v = cellValue(a, c.key);
        return el("td", { dataset: { col: c.key }, class: "clamp" }, clampText(v));
      }),
      selectable ? el("td", {}, rowButtons(a)) : null);
  });
  $("#actions thead").replaceChildren(head);
  $("#actions tbody").replaceChildren(...rows);
  if (!rows.length) $("#actions tbody").append(el("tr", {}, el("td", { colspan: cols.length + 2, class: "muted" }, "No actions match.")));
  const from = view.total ? view.offset + 1 : 0;
  $("#page-info").textContent = `${from}–${view.offset + view.rows.length} of ${view.total}`;
  $("#prev").disabled = view.offset === 0;
  $("#next").disabled = view.offset + view.rows.length >= view.total;
  const cq = query(false);
  cq.set("columns", view.columns.join(","));
  $("#export").setAttribute("href", `/api/v1/actions/export.csv?${cq}`);
  updateBulk();
}

function rowButtons(a) {
  if (view.tab === "pending") {
    return el("button", { type: "button", class: "approve-one", onclick: () => decide(true, [a.id]) }, "Approve");
  }
  if (UNDOABLE.includes(a.kind) && a.status === "succeeded" && a.device_id) {
    return el("button", { type: "button", class: "undo-one", onclick: () => undoSelected([a.id]) }, "Undo");
  }
  return null;
}

/// Several actions can be decided or undone together only when they are all of one kind.
function selectionProblem(ids) {
  const kinds = new Set(view.rows.filter((a) => ids.includes(a.id)).map((a) => a.kind));
  if (!ids.length) return "Select one or more actions.";
  if (kinds.size > 1) return `Selected actions are of different kinds (${[...kinds].sort().map(kindLabel).join(", ")}): approve, reject or undo one kind at a time.`;
  return null;
}

function updateBulk() {
  const ids = [...view.selected];
  const problem = ids.length ? selectionProblem(ids) : null;
  $("#bulk-msg").textContent = problem || (ids.length ? `${ids.length} selected` : "");
  const chosen = view.rows.filter((a) => view.selected.has(a.id));
  $("#bulk-targets").hidden = !chosen.length;
  $("#bulk-targets").replaceChildren(...chosen.map((a) => el("li", { dataset: { id: a.id } },
    clampText(`#${a.id} ${kindLabel(a.kind)} · ${cellValue(a, "device")}${a.entity ? ` · ${a.entity}` : ""}`))));
  for (const b of $$("#bulk-approve, #bulk-reject, #bulk-undo")) b.disabled = !ids.length || !!problem;
  const all = $("#select-all");
  if (all) all.checked = ids.length > 0 && ids.length === view.rows.length;
}

async function decide(approve, ids) {
  ids = ids || [...view.selected];
  const problem = selectionProblem(ids);
  if (problem) { $("#bulk-msg").textContent = problem; return; }
  const comment = $("#bulk-comment").value.trim();
  if (!approve && !comment) { $("#bulk-msg").textContent = "A comment is required to reject."; $("#bulk-comment").focus(); return; }
  try {
    const r = await api("POST", `/api/v1/actions/${approve ? "approve" : "reject"}`, { ids, comment });
    toast(`${approve ? "Approved" : "Rejected"} ${r.actions.filter((a) => ids.includes(a.id)).length || ids.length} action(s).`);
    $("#bulk-comment").value = "";
    view.selected = new Set();
    await loadActions();
  } catch (e) {
    $("#bulk-msg").textContent = e.message;
  }
}

async function undoSelected(ids) {
  ids = ids || [...view.selected];
  const problem = selectionProblem(ids);
  if (problem) { $("#bulk-msg").textContent = problem; return; }
  const comment = $("#bulk-comment").value.trim();
  if (!comment) { $("#bulk-msg").textContent = "A comment is required to undo."; $("#bulk-comment").focus(); return; }
  try {
    const r = await api("POST", "/api/v1/actions/undo", { ids, comment });
    toast(`Requested undo: action(s) ${r.actions.map((a) => a.id).join(", ")}.`);
    $("#bulk-comment").value = "";
    view.selected = new Set();
    await loadActions();
  } catch (e) {
    $("#bulk-msg").textContent = e.message;
  }
}

// ---------------------------------------------------------------- detail panel

function kv(pairs) {
  return el("dl", { class: "kv" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

/// A long value (a comment, a target, a path) in a block that scrolls instead of growing.
function longText(v, id) {
  return v === null || v === undefined || v === "" ? null : el("div", { class: "long", id }, String(v));
}

/// The raw JSON behind a view, shown only on request.
function raw(value, id) {
  return el("details", { class: "raw" }, el("summary", {}, "raw"), el("pre", { id }, JSON.stringify(value, null, 2)));
}

/// A table of `rows` with `cols` = [[heading, row => cell]]; a cell may be a node.
function viewTable(id, cols, rows) {
  return el("table", { id }, el("thead", {}, el("tr", {}, cols.map(([h]) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, cols.map(([, f]) => {
      const v = f(r);
      return el("td", {}, v instanceof Node ? v : (v === null || v === undefined ? "" : String(v)));
    })))));
}

/// What a finished action's result detail holds, as views: a scan's detections (linked to the
/// quarantine actions they created, from the scan's audit records), a package's collectors, a
/// quarantine's files and killed processes.
function resultViews(a, history) {
  const d = a.result_detail;
  if (!d || typeof d !== "object") return [];
  const out = [];
  if (Array.isArray(d.detections)) {
    const quarantines = {};
    for (const h of history) {
      if (h.event !== "detection") continue;
      try {
        const x = JSON.parse(h.detail);
        if (x.quarantine && x.quarantine.action) quarantines[x.path] = x.quarantine.action;
      } catch (_) { /* not one of ours */ }
    }
    const c = d.counts || {};
    out.push(el("p", { id: "detail-scan-counts" }, `Scanned ${c.files ?? 0} files (${c.bytes ?? 0} bytes) in ${d.directories ?? 0} directories; ${d.detections.length} detections.`));
    out.push(d.detections.length
      ? viewTable("detail-detections", [
        ["Path", (x) => x.path], ["Size", (x) => x.size], ["SHA-256", (x) => el("code", {}, x.sha256 || "")],
        ["Matched", (x) => (x.matches || []).join(", ")],
        ["Quarantine", (x) => (quarantines[x.path] ? actionLink(quarantines[x.path]) : "none")],
      ], d.detections)
      : el("p", { class: "muted", id: "detail-detections" }, "Nothing found."));
  }
  if (Array.isArray(d.collectors)) {
    out.push(viewTable("detail-collectors", [
      ["Collector", (x) => x.name], ["Status", (x) => x.status], ["Files", (x) => x.files], ["Bytes", (x) => x.bytes],
      ["Time (ms)", (x) => x.duration_ms], ["Error", (x) => x.error || ""],
    ], d.collectors));
  }
  if (Array.isArray(d.files) && a.kind === "quarantine") {
    out.push(viewTable("detail-quarantined", [
      ["File", (x) => x.path], ["Vault entry", (x) => x.vault_entry], ["Size", (x) => x.size], ["SHA-256", (x) => el("code", {}, x.sha256 || "")],
    ], d.files));
  }
  if (Array.isArray(d.killed)) {
    out.push(el("h3", {}, "Processes stopped"), d.killed.length
      ? viewTable("detail-killed", [["PID", (x) => x.pid], ["Command line", (x) => x.cmdline], ["Used the file as", (x) => x.uses]], d.killed)
      : el("p", { class: "muted", id: "detail-killed" }, "No process was using the file."));
  }
  if (Array.isArray(d.errors) && d.errors.length) {
    out.push(el("h3", {}, "Errors"), viewTable("detail-errors", [["Where", (x) => (typeof x === "object" ? x.path || x.root || "" : "")],
      ["Error", (x) => (typeof x === "object" ? x.error || JSON.stringify(x) : String(x))]], d.errors));
  }
  return out;
}

/// An action's parameters as label / value pairs.
function paramsView(p) {
  return kv(Object.entries(p || {}).filter(([k]) => k !== "kind").map(([k, v]) => [
    k.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase()),
    longText(Array.isArray(v) ? v.join("\n") : (typeof v === "boolean" ? (v ? "yes" : "no") : v), null),
  ]));
}

/// The agent's progress of a running action ({"message", "permille"}), none once it ended.
function progressView(a) {
  if (!a.progress || !["delivered", "acknowledged", "in_progress"].includes(a.status)) return null;
  let p;
  try { p = JSON.parse(a.progress); } catch (_) { p = { message: a.progress }; }
  return el("div", { id: "detail-progress" },
    p.permille !== null && p.permille !== undefined ? el("progress", { max: 1000, value: p.permille }) : null,
    " ", p.message || "");
}

function actionLink(id) {
  return el("button", { type: "button", class: "link", onclick: () => openDetail(id) }, `#${id}`);
}

async function openDetail(id) {
  let d;
  try { d = await api("GET", `/api/v1/actions/${encodeURIComponent(id)}`); } catch (e) { toast(e.message, true); return; }
  const a = d.action;
  $("#detail-title").textContent = `Action ${a.id} · ${kindLabel(a.kind)}`;
  const body = [];
  body.push(kv([
    ["Status", el("span", { class: `status ${a.status}`, dataset: { status: a.status } }, statusLabel(a.status))],
    ["Device", a.hostname ? [a.hostname, " ", el("code", { class: "muted", title: "device id" }, a.device_id)] : (a.device_id || "fleet-wide")],
    ["Entity / target", longText(a.entity, "detail-entity")],
    ["Device group", a.device_group],
    ["Action source", sourceLabel(a.source)],
    ["Requested by", a.requested_by],
    ["Comment", longText(a.comment, "detail-comment")],
    ["Decided by", a.decided_by],
    ["Decision comment", longText(a.decision_comment, null)],
    ["Cancelled by", a.cancelled_by],
    ["External id", a.external_id],
    ["Parent", a.parent_id ? actionLink(a.parent_id) : null],
    ["Undo of", a.undo_of ? actionLink(a.undo_of) : null],
    ["Undone by", a.undone_by ? actionLink(a.undone_by) : null],
    ["Undo requested", (d.undo_requests || []).length
      ? el("span", { id: "detail-undo-requests" }, d.undo_requests.map((u) => [actionLink(u.id), ` (${statusLabel(u.status)}) `]))
      : null],
  ]));
  body.push(el("h3", {}, "Parameters"), el("div", { id: "detail-params-view" }, paramsView(a.params)), raw(a.params, "detail-params"));
  body.push(el("h3", {}, "Timeline"), el("ol", { class: "timeline", id: "detail-timeline" },
    d.timeline.map((h) => el("li", { class: h.at ? "done" : null, dataset: { hop: h.hop } },
      el("strong", {}, hopLabel(h.hop)), " ", h.at ? fmtTime(h.at) : "—",
      h.actor && h.at ? [" · ", el("span", { title: h.actor }, h.actor_name || h.actor)] : ""))));
  body.push(el("h3", {}, "Result"), kv([["Summary", longText(a.result_summary || "(none yet)", "detail-summary")]]), progressView(a));
  body.push(...resultViews(a, d.history));
  if (a.result_detail) body.push(raw(a.result_detail, "detail-result"));
  if (a.artifacts.length) {
    body.push(el("h3", {}, "Artifacts"), el("ul", { id: "detail-artifacts" }, a.artifacts.map((f) => el("li", {},
      can("investigate")
        ? el("a", { href: `/api/v1/actions/${a.id}/artifacts/${encodeURIComponent(f.name)}`, download: "" }, f.name)
        : el("span", { title: "needs the investigate permission" }, f.name),
      ` · ${f.size} bytes · sha256 ${f.sha256}`))));
  }
  if (a.children) {
    const c = a.children;
    body.push(el("h3", {}, "Devices"), el("p", {}, `${c.total} devices: ${c.succeeded} succeeded, ${c.failed} failed, ${c.pending} pending, ${c.not_run} not run`));
    if (d.children_total > d.children.length) {
      body.push(el("p", { id: "detail-children-more" }, `Showing the first ${d.children.length} of ${d.children_total}; all of them: GET /api/v1/actions?parent=${a.id}`));
    }
    body.push(el("table", { id: "detail-children" }, el("tbody", {}, d.children.map((ch) => el("tr", {},
      el("td", {}, actionLink(ch.id)), el("td", {}, ch.hostname || ch.device_id), el("td", {}, el("span", { class: `status ${ch.status}`, dataset: { status: ch.status } }, statusLabel(ch.status))),
      el("td", {}, ch.result_summary || ""))))));
  }
  if (UNDOABLE.includes(a.kind) && a.status === "succeeded" && a.device_id && can("approve")) {
    body.push(el("h3", {}, "Undo"), el("div", { class: "bulk" },
      el("input", { type: "text", id: "detail-undo-comment", placeholder: "Comment (required)" }),
      el("button", { type: "button", id: "detail-undo", onclick: async () => {
        const comment = $("#detail-undo-comment").value.trim();
        if (!comment) { toast("A comment is required to undo.", true); return; }
        try {
          const r = await api("POST", "/api/v1/actions/undo", { ids: [a.id], comment });
          toast(`Requested undo: action ${r.actions[0].id}.`);
          openDetail(a.id);
          if (view) loadActions();
        } catch (e) { toast(e.message, true); }
      } }, "Undo")));
  }
  body.push(el("h3", {}, "Audit"), el("ol", { class: "timeline" }, d.history.map((h) =>
    el("li", { class: "done" }, `${fmtTime(h.at)} · `, el("span", { title: h.actor }, h.actor_name || h.actor), ` · ${h.event}`))));
  $("#detail-body").replaceChildren(...body);
  $("#detail").hidden = false;
}

// ---------------------------------------------------------------- devices

function deviceState(d, containedBy) {
  const o = d.observed || {};
  const parts = [];
  if (containedBy) parts.push(`contained (action #${containedBy})`);
  if (o.isolated) parts.push("isolated");
  if (Array.isArray(o.contained) && o.contained.length) parts.push(`containing ${o.contained.length}`);
  if (o.restrict_execution) parts.push("execution restricted");
  if (o.drift) parts.push(`drift: ${o.drift}`);
  return parts.length ? parts.join(", ") : "normal";
}

const GROUP_SOURCES = { manual: "assigned by hand", enrolment: "enrolment token" };

function groupSource(d) {
  return GROUP_SOURCES[d.group_source] || d.group_source || "";
}

/// What a device reported on its own (denied executions, tampering …), newest first.
async function showDeviceEvents(d) {
  const panel = $("#device-events");
  panel.hidden = false;
  $("#device-events-title").textContent = `Events of ${d.hostname}`;
  const body = $("#device-events-body");
  body.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  let r;
  try { r = await api("GET", `/api/v1/devices/${encodeURIComponent(d.id)}/events?limit=200`); } catch (e) { body.replaceChildren(el("p", { class: "error" }, e.message)); return; }
  if (!r.events.length) { body.replaceChildren(el("p", { class: "muted" }, "This device has reported no events.")); return; }
  body.replaceChildren(el("table", { id: "device-events-table" },
    el("thead", {}, el("tr", {}, ["Last seen", "Event", "Summary", "Count", "First seen"].map((h) => el("th", {}, h)))),
    el("tbody", {}, r.events.map((ev) => el("tr", { dataset: { kind: ev.kind } },
      el("td", {}, fmtTime(ev.last_at)), el("td", {}, ev.kind), el("td", {}, ev.summary),
      el("td", {}, String(ev.count)), el("td", {}, fmtTime(ev.first_at)))))));
}

async function devicesPage() {
  view = null;
  let list = [];
  let contained = {};
  try {
    const [devs, cont] = await Promise.all([api("GET", "/api/v1/devices"), api("GET", "/api/v1/containments")]);
    list = devs.devices;
    for (const c of cont.containments) if (c.device_id) contained[c.device_id] = c.action_id;
  } catch (e) { toast(e.message, true); }
  const selected = new Set();
  const table = el("table", { id: "devices" },
    el("thead", {}, el("tr", {}, can("respond") ? el("th", {}, "") : null,
      ["Hostname", "Device id", "Group", "Online", "Last seen", "Agent", "State", "Rules", "Status", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, list.map((d) => el("tr", { dataset: { id: d.id } },
      can("respond") ? el("td", {}, el("input", { type: "checkbox", class: "sel", "aria-label": `Select ${d.hostname}`, onchange: (e) => {
        if (e.target.checked) selected.add(d.id); else selected.delete(d.id);
      } })) : null,
      el("td", { dataset: { col: "hostname" } }, el("a", { href: `#/devices/${encodeURIComponent(d.id)}`, class: "device-link" }, d.hostname)),
      el("td", {}, el("code", {}, d.id)),
      el("td", { dataset: { col: "group" }, title: groupSource(d) }, d.device_group, el("span", { class: "muted" }, ` (${groupSource(d)})`)),
      el("td", {}, d.online ? "online" : "offline"),
      el("td", {}, fmtTime(d.last_seen)),
      el("td", {}, d.agent_version),
      el("td", { dataset: { col: "state" } }, deviceState(d, contained[d.id])),
      el("td", { dataset: { col: "rules" } }, d.rules_version === null || d.rules_version === undefined ? "none" : `v${d.rules_version}`),
      el("td", {}, d.status),
      el("td", {}, el("button", { type: "button", class: "link device-events", onclick: () => showDeviceEvents(d) }, "Events"))))));
  const parts = [el("div", { class: "card" }, el("h2", {}, `Devices (${list.length})`), table),
    el("div", { class: "card", id: "device-events", hidden: true },
      el("h2", { id: "device-events-title" }), el("div", { id: "device-events-body" }))];
  if (can("respond")) parts.push(actionForm(list, selected)); // forms.js
  $("#main").replaceChildren(...parts);
  actionFormShown();
}

// ---------------------------------------------------------------- admin

async function adminPage() {
  view = null;
  if (!can("admin")) { $("#main").replaceChildren(el("p", {}, "The admin page needs the admin permission.")); return; }
  const [users, policies, allowlists, devices, groupRules, automation, realtime] = await Promise.all([
    api("GET", "/api/v1/users"), api("GET", "/api/v1/policies"), api("GET", "/api/v1/exec-allowlist"), api("GET", "/api/v1/devices"),
    api("GET", "/api/v1/group-rules"), api("GET", "/api/v1/automation"), api("GET", "/api/v1/realtime"),
  ].map((p) => p.catch((e) => { toast(e.message, true); return {}; })));
  const groups = {};
  for (const d of devices.devices || []) groups[d.device_group] = (groups[d.device_group] || 0) + 1;
  const refresh = () => adminPage();
  const input = (id, attrs) => el("input", { id, type: "text", ...attrs });
  $("#main").replaceChildren(
    groupsCard(devices.devices || [], groups, groupRules.rules || [], refresh),
    detectionCard(groups, automation, realtime, refresh),
    el("div", { class: "card" }, el("h2", {}, "Users and roles"),
      el("table", { id: "users" }, el("thead", {}, el("tr", {}, ["Name", "Role", "Device groups", "Created by", "Created at"].map((h) => el("th", {}, h)))),
        el("tbody", {}, (users.users || []).map((u) => el("tr", {}, el("td", {}, u.name), el("td", {}, u.role),
          el("td", {}, u.device_groups.length ? u.device_groups.join(", ") : "all"), el("td", {}, u.created_by), el("td", {}, fmtTime(u.created_at)))))),
      el("h3", {}, "Add a user"),
      el("div", { class: "form-grid" },
        el("label", {}, "Name"), input("user-name"),
        el("label", {}, "Role"), select("user-role", ["viewer", "responder", "approver", "investigator", "admin"].map((r) => [r, r]), "viewer"),
        el("label", {}, "Device groups"), input("user-groups", { placeholder: "comma-separated; empty = all" }),
        el("label", {}, "Password"), el("input", { id: "user-password", type: "password", autocomplete: "new-password" }),
        el("span", {}, ""), el("button", { type: "button", class: "primary", id: "user-add", onclick: async () => {
          const groupsList = $("#user-groups").value.split(",").map((s) => s.trim()).filter(Boolean);
          try {
            const r = await api("POST", "/api/v1/users", { name: $("#user-name").value, role: $("#user-role").value,
              device_groups: groupsList, password: $("#user-password").value || undefined });
            toast(`User ${r.name} added; API token: ${r.token}`);
            refresh();
          } catch (e) { toast(e.message, true); }
        } }, "Add user"))),
    el("div", { class: "card" }, el("h2", {}, "Approval policy"),
      el("table", { id: "policies" }, el("thead", {}, el("tr", {}, ["Device group", "Kind", "Approval required", "Four eyes"].map((h) => el("th", {}, h)))),
        el("tbody", {}, (policies.policies || []).map((p) => el("tr", {}, el("td", {}, p.device_group), el("td", {}, p.kind),
          el("td", {}, p.require_approval ? "yes" : "no"), el("td", {}, p.distinct_approver ? "yes" : "no"))))),
      el("h3", {}, "Set a policy"),
      el("div", { class: "form-grid" },
        el("label", {}, "Device group"), input("policy-group", { value: "*" }),
        el("label", {}, "Kind"), select("policy-kind", [["", "* (every kind)"]].concat(KINDS.map((k) => [k, k])), ""),
        el("label", {}, "Approval required"), el("input", { type: "checkbox", id: "policy-approval", checked: true }),
        el("label", {}, "Four eyes"), el("input", { type: "checkbox", id: "policy-four-eyes" }),
        el("span", {}, ""), el("button", { type: "button", class: "primary", id: "policy-save", onclick: async () => {
          try {
            await api("PUT", "/api/v1/policies", { device_group: $("#policy-group").value || "*", kind: $("#policy-kind").value || undefined,
              require_approval: $("#policy-approval").checked, distinct_approver: $("#policy-four-eyes").checked });
            refresh();
          } catch (e) { toast(e.message, true); }
        } }, "Save policy"))),
    el("div", { class: "card" }, el("h2", {}, "Exec allowlists"),
      el("table", { id: "allowlists" }, el("tbody", {}, (allowlists.allowlists || []).map((a) => el("tr", {}, el("td", {}, a.device_group),
        el("td", {}, `${a.sha256.length} hashes, ${a.paths.length} paths`), el("td", {}, [...a.sha256, ...a.paths].join(" ")))))),
      el("h3", {}, "Replace a group's allowlist"),
      el("div", { class: "form-grid" },
        el("label", {}, "Device group"), input("allow-group", { value: "default" }),
        el("label", {}, "SHA-256 (one a line)"), el("textarea", { id: "allow-sha256" }),
        el("label", {}, "Paths (one a line)"), el("textarea", { id: "allow-paths" }),
        el("span", {}, ""), el("button", { type: "button", class: "primary", id: "allow-save", onclick: async () => {
          const lines = (id) => $(id).value.split("\n").map((l) => l.trim()).filter(Boolean);
          try {
            await api("PUT", "/api/v1/exec-allowlist", { device_group: $("#allow-group").value, sha256: lines("#allow-sha256"), paths: lines("#allow-paths") });
            refresh();
          } catch (e) { toast(e.message, true); }
        } }, "Save allowlist"))),
    el("div", { class: "card" }, el("h2", {}, "Enrolment tokens"),
      el("div", { class: "form-grid" },
        el("label", {}, "Uses"), el("input", { id: "enroll-uses", type: "number", value: 1, min: 1 }),
        el("label", {}, "Expires in"), input("enroll-expires", { value: "24h" }),
        el("label", {}, "Device group"), input("enroll-group", { value: "default" }),
        el("span", {}, ""), el("button", { type: "button", class: "primary", id: "enroll-create", onclick: async () => {
          try {
            const r = await api("POST", "/api/v1/enroll-tokens", { uses: Number($("#enroll-uses").value), expires_in: $("#enroll-expires").value,
              device_group: $("#enroll-group").value });
            $("#enroll-result").textContent = `palisade-agent enroll --token ${r.token.token} --ca-sha256 ${r.ca_sha256} --controller HOST:7443`;
          } catch (e) { toast(e.message, true); }
        } }, "Create token")),
      el("pre", { id: "enroll-result" })));
}

/// Device groups: the groups in use, a device's manual assignment, and the membership rules.
function groupsCard(devices, groups, rules, refresh) {
  const saveRules = async (list) => {
    try {
      const r = await api("PUT", "/api/v1/group-rules", { rules: list.map((x) => ({ hostname: x.hostname || undefined, cidr: x.cidr || undefined, device_group: x.device_group })) });
      toast(r.moved.length ? `Rules saved; ${r.moved.length} device(s) changed group.` : "Rules saved; no device changed group.");
      refresh();
    } catch (e) { toast(e.message, true); }
  };
  const assign = async (group) => {
    const id = $("#assign-device").value;
    if (!id) { toast("Choose a device.", true); return; }
    try {
      const r = await api("PUT", `/api/v1/devices/${encodeURIComponent(id)}/group`, { device_group: group });
      toast(`${r.device.hostname} is in group ${r.device.device_group} (${groupSource(r.device)}).`);
      refresh();
    } catch (e) { toast(e.message, true); }
  };
  return el("div", { class: "card" }, el("h2", {}, "Device groups"),
    el("table", { id: "groups" }, el("thead", {}, el("tr", {}, el("th", {}, "Group"), el("th", {}, "Devices"))),
      el("tbody", {}, Object.entries(groups).map(([g, n]) => el("tr", {}, el("td", {}, g), el("td", {}, String(n)))))),
    el("p", { class: "muted" }, "A device is in the group an admin assigned it to; else in the group of the first rule below it matches (checked when it enrolls and whenever it reports its inventory); else in its enrolment token's group. Permissions follow a move at once."),
    el("h3", {}, "Assign a device by hand"),
    el("div", { class: "form-grid" },
      el("label", { for: "assign-device" }, "Device"),
      select("assign-device", [["", "—"]].concat(devices.filter((d) => d.status === "active").map((d) => [d.id, `${d.hostname} · ${d.device_group} (${groupSource(d)})`])), ""),
      el("label", { for: "assign-group" }, "Group"), el("input", { id: "assign-group", type: "text" }),
      el("span", {}, ""), el("div", {},
        el("button", { type: "button", class: "primary", id: "assign-save", onclick: () => {
          const g = $("#assign-group").value.trim();
          if (!g) { toast("Name the group.", true); return; }
          assign(g);
        } }, "Assign"), " ",
        el("button", { type: "button", id: "assign-clear", onclick: () => assign(null) }, "Back to the rules"))),
    el("h3", {}, "Membership rules (first match wins)"),
    el("table", { id: "group-rules" }, el("thead", {}, el("tr", {}, ["#", "Hostname glob", "Address block", "Group", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, rules.map((r, i) => el("tr", { dataset: { position: r.position } },
        el("td", {}, String(r.position)), el("td", {}, r.hostname || "any"), el("td", {}, r.cidr || "any"), el("td", {}, r.device_group),
        el("td", {},
          i > 0 ? el("button", { type: "button", class: "rule-up", onclick: () => {
            const list = rules.slice(); [list[i - 1], list[i]] = [list[i], list[i - 1]]; saveRules(list);
          } }, "Up") : null, " ",
          el("button", { type: "button", class: "rule-remove danger", onclick: () => saveRules(rules.filter((_, j) => j !== i)) }, "Remove")))))),
    el("div", { class: "form-grid" },
      el("label", { for: "rule-hostname" }, "Hostname glob"), el("input", { id: "rule-hostname", type: "text", placeholder: "e.g. web-* (optional)" }),
      el("label", { for: "rule-cidr" }, "Address block"), el("input", { id: "rule-cidr", type: "text", placeholder: "e.g. 10.1.0.0/16 (optional)" }),
      el("label", { for: "rule-group" }, "Group"), el("input", { id: "rule-group", type: "text" }),
      el("span", {}, ""), el("button", { type: "button", class: "primary", id: "rule-add", onclick: () => saveRules(rules.concat([{
        hostname: $("#rule-hostname").value.trim(), cidr: $("#rule-cidr").value.trim(), device_group: $("#rule-group").value.trim(),
      }])) }, "Add rule")));
}

/// Per device group: the automation level for detections and real-time protection.
function detectionCard(groups, automation, realtime, refresh) {
  const levels = {};
  for (const a of automation.automation || []) levels[a.device_group] = a.level;
  const rt = {};
  for (const r of realtime.realtime || []) rt[r.device_group] = r.enabled;
  const names = ["*", ...new Set([...Object.keys(groups), ...Object.keys(levels), ...Object.keys(rt)].filter((g) => g !== "*"))].sort((a, b) => (a === "*" ? -1 : b === "*" ? 1 : a.localeCompare(b)));
  const level = (g) => levels[g] || levels["*"] || automation.default || "semi";
  const on = (g) => (g in rt ? rt[g] : ("*" in rt ? rt["*"] : !!realtime.default));
  const put = async (path, body) => {
    try { await api("PUT", path, body); toast(`Saved for ${body.device_group === "*" ? "the default" : `group ${body.device_group}`}.`); refresh(); } catch (e) { toast(e.message, true); refresh(); }
  };
  return el("div", { class: "card" }, el("h2", {}, "Detections and real-time protection"),
    el("table", { id: "detection" }, el("thead", {}, el("tr", {}, ["Device group", "Automation level", "Real-time protection"].map((h) => el("th", {}, h)))),
      el("tbody", {}, names.map((g) => el("tr", { dataset: { group: g } },
        el("td", {}, g === "*" ? "* (default for groups without their own)" : g, g !== "*" && !(g in levels) && !(g in rt) ? el("span", { class: "muted" }, " (default)") : null),
        el("td", {}, el("select", { class: "automation-level", dataset: { group: g }, "aria-label": `Automation level of ${g}`,
          onchange: (e) => put("/api/v1/automation", { device_group: g, level: e.target.value }) },
        [["full", "full: quarantine at once"], ["semi", "semi: quarantine after approval"], ["none", "none: record only"]].map(([v, l]) => el("option", { value: v, selected: v === level(g) }, l)))),
        el("td", {}, el("label", {}, el("input", { type: "checkbox", class: "realtime", dataset: { group: g }, checked: on(g),
          onchange: (e) => put("/api/v1/realtime", { device_group: g, enabled: e.target.checked }) }), " on")))))),
    el("p", { class: "muted" }, "A group without its own setting follows the * row. Devices get a real-time change at once."));
}

// ---------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", async () => {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  $("#detail-close").addEventListener("click", () => { $("#detail").hidden = true; });
  window.addEventListener("hashchange", () => { $("#detail").hidden = true; route(); });
  try {
    await started(await api("GET", "/api/v1/session"));
  } catch (_) {
    showLogin("");
  }
});
