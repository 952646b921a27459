// Palisade Action center: one form per action kind ("Request an action" on the Devices page).
//
// Each kind has labelled fields checked here against the same rules and bounds as the API
// (common/src/action.rs ActionParams::validate, common/src/limits.rs), an explanation of
// what it will do, and, for the actions that cut a device off, a confirmation that names the
// devices. The API checks everything again; when it refuses, its own message is shown.
// Like app.js, everything goes into the page as text, never as markup.
"use strict";

const FORM_LIMITS = { pathBytes: 4096, paths: 64, exceptions: 64, exceptionChars: 256, commentChars: 2000, isolationSecs: 90 * 24 * 3600 };

// Field builders: each returns [label, control] for the form grid; ids are "rf-<name>".
const fText = (name, label, placeholder) => [el("label", { for: `rf-${name}` }, label),
  el("input", { id: `rf-${name}`, type: "text", placeholder: placeholder || null })];
const fLines = (name, label, placeholder) => [el("label", { for: `rf-${name}` }, label),
  el("textarea", { id: `rf-${name}`, placeholder: placeholder || null })];
const fCheck = (name, label) => [el("span", {}, ""),
  el("label", {}, el("input", { id: `rf-${name}`, type: "checkbox" }), ` ${label}`)];
const fSelect = (name, label, options, onchange) => [el("label", { for: `rf-${name}` }, label),
  el("select", { id: `rf-${name}`, onchange }, options.map(([v, l]) => el("option", { value: v }, l)))];

const val = (name) => { const e = document.getElementById(`rf-${name}`); return e ? e.value.trim() : ""; };
const checked = (name) => { const e = document.getElementById(`rf-${name}`); return !!e && e.checked; };
const lines = (name) => val(name).split("\n").map((l) => l.trim()).filter(Boolean);

class FieldError extends Error {}

function checkPath(field, p) {
  if (new TextEncoder().encode(p).length > FORM_LIMITS.pathBytes) throw new FieldError(`${field}: a path is at most ${FORM_LIMITS.pathBytes} bytes`);
  if (!p.startsWith("/")) throw new FieldError(`${field}: "${p}" is not an absolute path (it must start with /)`);
  if (p.split("/").includes("..")) throw new FieldError(`${field}: "${p}" contains '..'`);
  return p;
}
function checkCount(field, list, max) {
  if (list.length > max) throw new FieldError(`${field}: at most ${max} entries (${list.length} given)`);
  return list;
}
function checkSha256(field, s) {
  if (!/^[0-9a-fA-F]{64}$/.test(s)) throw new FieldError(`${field}: a SHA-256 is 64 hexadecimal digits`);
  return s.toLowerCase();
}
function requirePath(field, name) {
  const p = val(name);
  if (!p) throw new FieldError(`${field} is required`);
  return checkPath(field, p);
}

/// "30m", "4h", "2d", "1w" or a number of seconds; empty = none.
function parseTimeBox(text) {
  if (!text) return undefined;
  const m = /^(\d+)\s*([smhdw]?)$/.exec(text);
  if (!m) throw new FieldError(`Time box: "${text}" is not a duration such as 30m, 4h or 2d`);
  const secs = Number(m[1]) * { "": 1, s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[m[2]];
  if (secs === 0) throw new FieldError("Time box: an isolation for 0 seconds would end at once");
  if (secs > FORM_LIMITS.isolationSecs) throw new FieldError("Time box: at most 90 days");
  return secs;
}

// Per kind: its label, what it does, whether it cuts the device off (confirmation), its
// fields, what it needs of the device selection, and how its parameters are built.
const ACTION_FORMS = {
  isolate: {
    label: "Isolate device",
    explain: "Cuts the device off the network except for its connection to the controller. Selective isolation also allows the exceptions listed. With a time box the device releases itself when it ends; otherwise it stays isolated until released.",
    cutsOff: true,
    fields: () => [
      ...fSelect("isolation-type", "Isolation type", [["full", "Full: only the controller"], ["selective", "Selective: the controller and the exceptions"]], syncForm),
      ...fLines("exceptions", "Exceptions (one a line)", "CIDR [tcp|udp|icmp [PORT]] [in|out|both], e.g. 10.0.0.53/32 udp 53 out"),
      ...fText("for", "Time box", "e.g. 30m, 4h, 2d (at most 90 days; empty = until released)"),
    ],
    sync: () => { document.getElementById("rf-exceptions").disabled = val("isolation-type") !== "selective"; },
    build: () => {
      const selective = val("isolation-type") === "selective";
      const exceptions = selective ? checkCount("Exceptions", lines("exceptions"), FORM_LIMITS.exceptions) : [];
      for (const e of exceptions) if (e.length > FORM_LIMITS.exceptionChars) throw new FieldError(`Exceptions: an exception is at most ${FORM_LIMITS.exceptionChars} characters`);
      const p = { selective, exceptions };
      const secs = parseTimeBox(val("for"));
      if (secs !== undefined) p.for_secs = secs;
      return p;
    },
  },
  release_isolation: { label: "Release from isolation", explain: "Gives the device its network back." },
  contain: {
    label: "Contain device",
    explain: "Tells every other managed device to refuse traffic with the target, which need not run an agent. The target is the selected device, or the address given here with no device selected.",
    cutsOff: true,
    fields: () => [
      ...fText("ip", "Address (unmanaged target)", "e.g. 10.1.2.3; leave empty to contain the selected device"),
      ...fText("mac", "MAC address (optional)", "aa:bb:cc:dd:ee:ff"),
      ...fCheck("force", "contain even an address several devices share or that is a gateway"),
    ],
    build: containParams,
    address: true,
  },
  uncontain: {
    label: "Release from containment",
    explain: "Lets the other devices talk to the target again: the selected device, or the address given here with no device selected.",
    fields: () => [...fText("ip", "Address (unmanaged target)", "e.g. 10.1.2.3; leave empty for the selected device"),
      ...fText("mac", "MAC address (optional)", "aa:bb:cc:dd:ee:ff")],
    build: containParams,
    address: true,
  },
  quarantine: {
    label: "Stop and quarantine file",
    explain: "Kills the processes running the file and moves it into the device's quarantine vault, from which it can be released. Name a path, or a SHA-256 and the folders to search for it.",
    fields: () => [
      ...fText("path", "File path", "/absolute/path/of/the/file"),
      ...fText("sha256", "or SHA-256", "64 hexadecimal digits"),
      ...fLines("roots", "Search roots for the SHA-256 (one a line)", "/home\n/tmp"),
    ],
    build: () => {
      const p = {};
      const path = val("path");
      const sha = val("sha256");
      if (!path && !sha) throw new FieldError("Name a file path, or a SHA-256 with search roots");
      if (path) p.path = checkPath("File path", path);
      if (sha) p.sha256 = checkSha256("SHA-256", sha);
      const roots = checkCount("Search roots", lines("roots"), FORM_LIMITS.paths);
      roots.forEach((r) => checkPath("Search roots", r));
      if (sha && !path && !roots.length) throw new FieldError("Search roots: a quarantine by SHA-256 needs at least one");
      if (roots.length) p.roots = roots;
      return p;
    },
  },
  release_quarantine: {
    label: "Release file from quarantine",
    explain: "Puts a quarantined file back where it was (or at the path given). Name its vault entry or its SHA-256.",
    fields: () => [
      ...fText("entry", "Vault entry", "the entry id shown in the device's vault"),
      ...fText("sha256", "or SHA-256", "64 hexadecimal digits"),
      ...fText("restore-path", "Restore to (optional)", "/absolute/path; empty = where it was"),
      ...fCheck("overwrite", "overwrite a file already there"),
    ],
    build: () => {
      const p = {};
      const entry = val("entry");
      const sha = val("sha256");
      if (!entry && !sha) throw new FieldError("Name a vault entry or a SHA-256 to release");
      if (entry) p.entry = entry;
      if (sha) p.sha256 = checkSha256("SHA-256", sha);
      if (val("restore-path")) p.restore_path = checkPath("Restore to", val("restore-path"));
      if (checked("overwrite")) p.overwrite = true;
      return p;
    },
  },
  scan: {
    label: "Run antivirus scan",
    explain: "Scans files for known malware. A quick scan covers the usual places malware hides, a full scan the whole file system; a custom scan the paths given. Files found are quarantined as the device group's automation level decides.",
    fields: () => [
      ...fSelect("scan-mode", "Scan type", [["quick", "Quick"], ["full", "Full"], ["custom", "Custom: the paths below"]], syncForm),
      ...fLines("paths", "Paths (one a line, custom only)", "/srv\n/home"),
      ...fLines("exclusions", "Exclusions (one a line)", "an absolute path or a glob, e.g. /var/cache or /home/*/.cache"),
    ],
    sync: () => { document.getElementById("rf-paths").disabled = val("scan-mode") !== "custom"; },
    build: () => {
      const mode = val("scan-mode");
      const p = { mode };
      if (mode === "custom") {
        const paths = checkCount("Paths", lines("paths"), FORM_LIMITS.paths);
        if (!paths.length) throw new FieldError("Paths: a custom scan needs at least one path");
        paths.forEach((x) => checkPath("Paths", x));
        p.paths = paths;
      }
      const exclusions = checkCount("Exclusions", lines("exclusions"), FORM_LIMITS.paths);
      for (const e of exclusions) {
        if (new TextEncoder().encode(e).length > FORM_LIMITS.pathBytes) throw new FieldError(`Exclusions: at most ${FORM_LIMITS.pathBytes} bytes`);
        if (!e.startsWith("/")) throw new FieldError(`Exclusions: "${e}" is not absolute (a relative pattern never matches)`);
      }
      if (exclusions.length) p.exclusions = exclusions;
      return p;
    },
  },
  restrict_execution: {
    label: "Restrict app execution",
    explain: "Lets only the programs on the device group's execution allowlist (and the agent) run; everything else is refused until released.",
    cutsOff: true,
  },
  release_execution: { label: "Remove app restriction", explain: "Lets every program run again." },
  collect_package: { label: "Collect investigation package", explain: "Collects processes, connections, users, logs and other forensic data from the device into a package you can download." },
  request_sample: {
    label: "Collect file (sample)",
    explain: "Uploads a copy of the file to the controller for analysis; the file stays on the device.",
    fields: () => fText("path", "File path", "/absolute/path/of/the/file"),
    build: () => ({ path: requirePath("File path", "path") }),
  },
  offboard: {
    label: "Offboard device",
    explain: "Removes the agent's enrolment: the device stops reporting and can no longer be managed until enrolled again.",
    cutsOff: true,
  },
};

function containParams() {
  const p = {};
  const ip = val("ip");
  if (ip) {
    if (!/^[0-9a-fA-F:.]+$/.test(ip) || !/[.:]/.test(ip)) throw new FieldError(`Address: "${ip}" is not an IPv4 or IPv6 address`);
    p.ip = ip;
  }
  const mac = val("mac");
  if (mac) {
    if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(mac)) throw new FieldError(`MAC address: "${mac}" is not six hex octets separated by colons`);
    p.mac = mac;
  }
  if (checked("force")) p.force = true;
  return p;
}

let actionFormState = null; // { devices, selected }

function syncForm() {
  const kind = $("#req-kind").value;
  const f = ACTION_FORMS[kind];
  if (f.sync) f.sync();
  $("#req-error").textContent = "";
  $("#req-confirm").hidden = true;
  let raw;
  try { raw = JSON.stringify(f.build ? f.build() : {}, null, 2); } catch (e) { raw = `(not valid yet: ${e.message})`; }
  $("#req-params").value = raw;
}

function showKindFields() {
  const kind = $("#req-kind").value;
  const f = ACTION_FORMS[kind];
  $("#req-explain").textContent = f.explain;
  $("#req-fields").replaceChildren(...(f.fields ? f.fields() : [el("span", {}, ""), el("span", { class: "muted" }, "This action takes no parameters.")]));
  for (const e of $$("#req-fields input, #req-fields textarea")) e.addEventListener("input", syncForm);
  syncForm();
}

/// The names of the devices a request would reach, for the confirmation.
function targetNames(fleet) {
  const { devices, selected } = actionFormState;
  if (!selected.size) return fleet ? "every device you may act on" : "";
  const byId = Object.fromEntries(devices.map((d) => [d.id, d.hostname]));
  return [...selected].map((id) => byId[id] || id).join(", ");
}

async function submitActionForm(confirmed) {
  const kind = $("#req-kind").value;
  const f = ACTION_FORMS[kind];
  const error = $("#req-error");
  error.textContent = "";
  let params;
  try {
    params = f.build ? f.build() : {};
    const comment = $("#req-comment").value;
    if (!comment.trim()) throw new FieldError("Comment: a comment is required");
    if (comment.length > FORM_LIMITS.commentChars) throw new FieldError(`Comment: at most ${FORM_LIMITS.commentChars} characters`);
  } catch (e) {
    error.textContent = e.message;
    return;
  }
  const fleet = $("#req-fleet").checked;
  const { selected } = actionFormState;
  if (!selected.size && !fleet && !(f.address && params.ip)) {
    error.textContent = f.address ? "Select a device, or give an address." : "Select at least one device (or request fleet-wide).";
    return;
  }
  if (f.cutsOff && !confirmed) {
    const target = f.address && params.ip && !selected.size ? `address ${params.ip}` : targetNames(fleet);
    $("#req-confirm-text").textContent = `${f.label}: ${target}? ${f.explain}`;
    $("#req-confirm").hidden = false;
    $("#req-confirm-yes").focus();
    return;
  }
  $("#req-confirm").hidden = true;
  const body = { devices: [...selected], params: { kind, ...params }, comment: $("#req-comment").value, fleet };
  try {
    const r = await api("POST", "/api/v1/actions", body);
    toast(`Requested action(s) ${r.actions.map((a) => a.id).join(", ")}.`);
  } catch (e) {
    error.textContent = e.message;
  }
}

/// The "Request an action" card. `devices` is the list shown, `selected` the set of the ids
/// ticked in it (read when the request is made).
function actionForm(devices, selected) {
  actionFormState = { devices, selected };
  const card = el("div", { class: "card", id: "request-card" }, el("h2", {}, "Request an action on the selected devices"),
    el("div", { class: "form-grid" },
      el("label", { for: "req-kind" }, "Action"),
      el("select", { id: "req-kind", onchange: showKindFields },
        Object.entries(ACTION_FORMS).map(([k, f]) => el("option", { value: k, selected: k === "request_sample" }, f.label)))),
    el("p", { id: "req-explain", class: "muted" }),
    el("div", { class: "form-grid", id: "req-fields" }),
    el("div", { class: "form-grid" },
      el("label", { for: "req-comment" }, "Comment"), el("input", { id: "req-comment", type: "text", required: true, maxlength: FORM_LIMITS.commentChars }),
      el("span", {}, ""), el("label", {}, el("input", { type: "checkbox", id: "req-fleet" }), " fleet-wide (one parent, a child per device; none selected = every device I may act on)"),
      el("span", {}, ""), el("button", { type: "button", id: "req-submit", class: "primary", onclick: () => submitActionForm(false) }, "Request")),
    el("div", { id: "req-confirm", class: "confirm", role: "alertdialog", hidden: true },
      el("p", { id: "req-confirm-text" }),
      el("button", { type: "button", id: "req-confirm-yes", class: "danger", onclick: () => submitActionForm(true) }, "Yes, request it"), " ",
      el("button", { type: "button", id: "req-confirm-no", onclick: () => { $("#req-confirm").hidden = true; } }, "Cancel")),
    el("p", { id: "req-error", class: "error", role: "alert" }),
    el("details", { id: "req-raw" }, el("summary", {}, "Raw parameters"), el("textarea", { id: "req-params", readonly: true })));
  return card;
}

/// Called once the card is in the page.
function actionFormShown() {
  if ($("#req-kind")) showKindFields();
}
