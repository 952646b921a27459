// Palisade Action center: the page of one device (#/devices/<id>): its details, its desired
// state (isolation, restriction, containment), its actions (History filtered to it), its
// events, its quarantine vault with release, and the request form for it.
// Like app.js, everything goes into the page as text, never as markup.
"use strict";

function deviceRow(label, ...value) {
  return el("tr", {}, el("th", { scope: "row" }, label), el("td", {}, ...value));
}

function describeIsolation(iso) {
  if (!iso) return "not isolated";
  const p = iso.params || {};
  let text = p.selective ? `selective isolation (exceptions: ${(p.exceptions || []).join("; ") || "none"})` : "full isolation";
  text += ` by action #${iso.action}`;
  if (iso.until_ms) text += `, until ${fmtTime(iso.until_ms)}`;
  return text;
}

async function devicePage(id) {
  view = null;
  const enc = encodeURIComponent(id);
  let shown;
  let containments;
  try {
    [shown, containments] = await Promise.all([api("GET", `/api/v1/devices/${enc}`), api("GET", "/api/v1/containments")]);
  } catch (e) {
    $("#main").replaceChildren(el("div", { class: "card", id: "device-page" }, el("h2", {}, "Device"),
      el("p", { class: "error", id: "device-error" }, e.message), el("p", {}, el("a", { href: "#/devices" }, "Back to the devices"))));
    return;
  }
  const d = shown.device;
  const want = shown.desired || {};
  const containment = (containments.containments || []).find((c) => c.device_id === d.id);
  const details = el("div", { class: "card", id: "device-details" },
    el("p", {}, el("a", { href: "#/devices" }, "← Devices")),
    el("h2", { id: "device-title" }, d.hostname),
    el("table", { class: "kv" }, el("tbody", {},
      deviceRow("Device id", el("code", {}, d.id)),
      deviceRow("Group", `${d.device_group} (${groupSource(d)})`),
      deviceRow("Status", d.status),
      deviceRow("Online", d.online ? "online" : "offline"),
      deviceRow("Last seen", fmtTime(d.last_seen)),
      deviceRow("Enrolled at", fmtTime(d.enrolled_at)),
      deviceRow("Agent", d.agent_version),
      deviceRow("Operating system", [d.os, d.kernel].filter(Boolean).join(" · ")),
      deviceRow("Addresses", (d.addresses || []).join(", ") || "none reported"),
      deviceRow("Rules", d.rules_version === null || d.rules_version === undefined ? "none" : `v${d.rules_version}`),
      deviceRow("Approved, waiting", String(d.queued || 0)))));
  const desired = el("div", { class: "card", id: "device-desired" }, el("h2", {}, "Desired state"),
    el("table", { class: "kv" }, el("tbody", {},
      el("tr", { dataset: { state: "isolation" } }, el("th", { scope: "row" }, "Isolation"), el("td", {}, describeIsolation(want.isolation))),
      el("tr", { dataset: { state: "restriction" } }, el("th", { scope: "row" }, "App execution"),
        el("td", {}, want.restrict_execution ? `restricted (allowlist: ${(want.exec_allowlist?.sha256 || []).length} hashes, ${(want.exec_allowlist?.paths || []).length} paths)` : "not restricted")),
      el("tr", { dataset: { state: "containment" } }, el("th", { scope: "row" }, "Containment"),
        el("td", {}, containment ? `contained by action #${containment.action_id}: the other devices refuse its traffic` : "not contained")),
      el("tr", { dataset: { state: "blocks" } }, el("th", { scope: "row" }, "Blocks contained peers"),
        el("td", {}, (want.contained || []).length ? want.contained.join(", ") : "none")),
      el("tr", { dataset: { state: "realtime" } }, el("th", { scope: "row" }, "Real-time protection"), el("td", {}, want.realtime_protection ? "on" : "off")))));
  const actionsCard = el("div", { class: "card", id: "device-actions" }, el("h2", {}, "Actions (pending and history)"), el("div", { id: "device-actions-body" }, el("p", { class: "muted" }, "Loading…")));
  const events = el("div", { class: "card", id: "device-events", hidden: true },
    el("h2", { id: "device-events-title" }), el("div", { id: "device-events-body" }));
  const vaultCard = el("div", { class: "card", id: "device-vault" }, el("h2", {}, "Quarantine vault"), el("div", { id: "device-vault-body" }, el("p", { class: "muted" }, "Loading…")));
  const parts = [details, desired, actionsCard, events, vaultCard];
  if (can("respond")) parts.push(actionForm([d], new Set([d.id])));
  $("#main").replaceChildren(...parts);
  if (can("respond")) actionFormShown();
  showDeviceEvents(d);
  loadDeviceActions(d);
  loadDeviceVault(d);
}

async function loadDeviceActions(d) {
  const body = $("#device-actions-body");
  const q = new URLSearchParams({ view: "all", device: d.id, sort: "id", order: "desc", limit: "100" });
  let r;
  try { r = await api("GET", `/api/v1/actions?${q}`); } catch (e) { body.replaceChildren(el("p", { class: "error" }, e.message)); return; }
  if (!r.actions.length) { body.replaceChildren(el("p", { class: "muted" }, "No action was requested on this device.")); return; }
  body.replaceChildren(
    el("p", { class: "muted" }, r.total > r.actions.length ? `The newest ${r.actions.length} of ${r.total}.` : `${r.total} action(s).`),
    el("table", { id: "device-actions-table" },
      el("thead", {}, el("tr", {}, ["Id", "Action", "Status", "Requested by", "Requested at", "Comment", "Result summary"].map((h) => el("th", {}, h)))),
      el("tbody", {}, r.actions.map((a) => el("tr", { dataset: { id: a.id } },
        el("td", {}, el("a", { href: `#/action/${a.id}` }, `#${a.id}`)),
        el("td", { dataset: { col: "kind" } }, ACTION_FORMS[a.kind] ? ACTION_FORMS[a.kind].label : a.kind),
        el("td", { dataset: { col: "status" } }, a.status),
        el("td", {}, a.requested_by), el("td", {}, fmtTime(a.created_at)),
        el("td", { class: "clamp" }, a.comment || ""), el("td", { class: "clamp" }, a.result_summary || ""))))));
}

async function loadDeviceVault(d) {
  const body = $("#device-vault-body");
  let r;
  try { r = await api("GET", `/api/v1/devices/${encodeURIComponent(d.id)}/vault`); } catch (e) { body.replaceChildren(el("p", { class: "error" }, e.message)); return; }
  const entries = Array.isArray(r.entries) ? r.entries : [];
  const when = r.reported_at ? `As the device last reported it, at ${fmtTime(r.reported_at)}.` : "The device has not reported its vault yet.";
  if (!entries.length) { body.replaceChildren(el("p", { class: "muted" }, `${when} The vault is empty.`)); return; }
  const respond = can("respond");
  body.replaceChildren(el("p", { class: "muted" }, when),
    el("table", { id: "vault-table" },
      el("thead", {}, el("tr", {}, ["File", "SHA-256", "Size", "Quarantined at", "By action", respond ? "" : null].filter((h) => h !== null).map((h) => el("th", {}, h)))),
      el("tbody", {}, entries.map((e) => el("tr", { dataset: { entry: e.id } },
        el("td", { class: "clamp" }, e.path), el("td", {}, el("code", {}, e.sha256)), el("td", {}, `${e.size} bytes`),
        el("td", {}, fmtTime(e.quarantined_at)),
        el("td", {}, e.action ? el("a", { href: `#/action/${e.action}` }, `#${e.action}`) : ""),
        respond ? el("td", {}, el("button", { type: "button", class: "vault-release", onclick: () => releaseFromVault(d, e) }, "Release")) : null)))),
    respond ? el("div", { class: "form-grid" },
      el("label", { for: "vault-comment" }, "Comment for a release"), el("input", { id: "vault-comment", type: "text", maxlength: FORM_LIMITS.commentChars })) : null,
    el("p", { id: "vault-error", class: "error", role: "alert" }));
}

async function releaseFromVault(d, entry) {
  const error = $("#vault-error");
  error.textContent = "";
  const comment = $("#vault-comment").value;
  if (!comment.trim()) { error.textContent = "Comment: a comment is required to release a file."; return; }
  try {
    const r = await api("POST", "/api/v1/actions", {
      devices: [d.id], params: { kind: "release_quarantine", entry: entry.id }, comment, fleet: false,
    });
    toast(`Requested release of ${entry.path}: action ${r.actions.map((a) => a.id).join(", ")}.`);
    loadDeviceActions(d);
  } catch (e) {
    error.textContent = e.message;
  }
}
