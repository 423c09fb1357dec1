// The web console: log in, run SQL, browse tables, follow a table live over /v1/ws, watch the
// cluster. Plain DOM, no framework, no external resources; every value from the server is
// written with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { access: sessionStorage.getItem("kalamdb.access"), refresh: sessionStorage.getItem("kalamdb.refresh"), ws: null, clusterTimer: null };

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function showError(box, code, message) {
  box.replaceChildren(el("span", code, "code"), el("span", message));
  box.hidden = false;
}

function saveTokens(body) {
  state.access = body.access_token;
  state.refresh = body.refresh_token || null;
  sessionStorage.setItem("kalamdb.access", state.access);
  if (state.refresh) sessionStorage.setItem("kalamdb.refresh", state.refresh);
}

function forget() {
  state.access = state.refresh = null;
  sessionStorage.removeItem("kalamdb.access");
  sessionStorage.removeItem("kalamdb.refresh");
}

// A JSON request with the access token; one refresh and retry when the token expired.
async function api(method, path, body, retried) {
  const headers = { "Content-Type": "application/json" };
  if (state.access) headers.Authorization = "Bearer " + state.access;
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let json = null;
  try { json = await resp.json(); } catch (_) { json = null; }
  const code = json && json.error && json.error.code;
  if (resp.status === 401 && code === "TOKEN_EXPIRED" && state.refresh && !retried) {
    const r = await fetch("/v1/api/auth/refresh", { method: "POST", headers: { Authorization: "Bearer " + state.refresh } });
    if (r.ok) {
      saveTokens(await r.json());
      return api(method, path, body, true);
    }
  }
  if (resp.status === 401 && path !== "/v1/api/auth/login") {
    forget();
    showLogin();
  }
  return { status: resp.status, json };
}

// Cells come in KalamDB's encoding: TIMESTAMP as microseconds, DATE as days since the epoch
// (BIGINT as strings shows as written). Shown as ISO 8601 text.
function show(v, type) {
  if (type === "Timestamp" && typeof v === "number") return new Date(Math.floor(v / 1000)).toISOString();
  if (type === "Date" && typeof v === "number") return new Date(v * 86400000).toISOString().slice(0, 10);
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

function cell(v, type) {
  if (v === null || v === undefined) return el("td", "NULL", "null");
  return el("td", show(v, type));
}

// columns: [{name, data_type}]
function renderTable(target, columns, rows, freshIndex) {
  const table = el("table");
  const head = el("tr");
  columns.forEach((c) => head.appendChild(el("th", c.name)));
  table.appendChild(el("thead")).appendChild(head);
  const tbody = table.appendChild(el("tbody"));
  rows.forEach((r, i) => {
    const tr = el("tr", null, freshIndex && freshIndex.has(i) ? "fresh" : "");
    r.forEach((v, j) => tr.appendChild(cell(v, columns[j] && columns[j].data_type)));
    tbody.appendChild(tr);
  });
  const wrap = el("div", null, "scroll");
  wrap.appendChild(table);
  target.replaceChildren(wrap);
}

// --- login ---
function showLogin() {
  $("login-view").hidden = false;
  $("app-view").hidden = true;
  $("who").hidden = true;
  stopLive();
  if (state.clusterTimer) clearInterval(state.clusterTimer);
}

async function showApp() {
  const me = await api("GET", "/v1/api/auth/me");
  if (me.status !== 200) return showLogin();
  $("who-name").textContent = me.json.user.username || me.json.user.id;
  $("who-role").textContent = me.json.user.role;
  $("who").hidden = false;
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  loadTables();
  loadCluster();
  state.clusterTimer = setInterval(loadCluster, 5000);
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").hidden = true;
  const r = await api("POST", "/v1/api/auth/login", { user: $("login-user").value, password: $("login-password").value });
  if (r.status !== 200) {
    const e = (r.json && r.json.error) || { code: "HTTP_" + r.status, message: "login failed" };
    return showError($("login-error"), e.code, e.message);
  }
  saveTokens(r.json);
  $("login-password").value = "";
  showApp();
});

$("logout").addEventListener("click", async () => {
  await api("POST", "/v1/api/auth/logout");
  forget();
  showLogin();
});

// --- SQL ---
async function runSql() {
  const sql = $("sql").value.trim();
  if (!sql) return;
  $("sql-error").hidden = true;
  $("results").replaceChildren();
  const r = await api("POST", "/v1/api/sql", { sql });
  if (!r.json) return showError($("sql-error"), "HTTP_" + r.status, "no JSON answer");
  if (r.json.status !== "success") return showError($("sql-error"), r.json.error.code, r.json.error.message);
  $("took").textContent = r.json.took + " ms";
  const out = $("results");
  r.json.results.forEach((res) => {
    const box = el("div");
    if (res.schema && res.rows) {
      const target = el("div");
      renderTable(target, res.schema, res.rows);
      box.appendChild(target);
      box.appendChild(el("p", res.row_count + " row(s)", "muted"));
    } else {
      box.appendChild(el("p", res.message || res.row_count + " row(s)", "result-message"));
    }
    out.appendChild(box);
  });
  if (/^\s*(create|drop|alter)\s/i.test(sql)) loadTables();
}
$("run").addEventListener("click", runSql);
$("sql").addEventListener("keydown", (ev) => { if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); runSql(); } });

// --- table browser ---
async function loadTables() {
  const r = await api("POST", "/v1/api/sql", { sql: "SHOW TABLES" });
  const list = $("table-list");
  list.replaceChildren();
  if (!r.json || r.json.status !== "success") return;
  r.json.results[0].rows.forEach(([ns, name, type]) => {
    const li = el("li", ns + "." + name + " ");
    li.appendChild(el("span", String(type).toLowerCase(), "muted"));
    li.dataset.table = ns + "." + name;
    li.addEventListener("click", () => {
      $("sql").value = "SELECT * FROM " + quote(ns) + "." + quote(name) + " LIMIT 100";
      $("live-table").value = ns + "." + name;
      runSql();
    });
    list.appendChild(li);
  });
}
$("refresh-tables").addEventListener("click", loadTables);

function quote(ident) {
  return /^[a-z_][a-z0-9_]*$/.test(ident) ? ident : '"' + ident.replace(/"/g, '""') + '"';
}

// --- live view over /v1/ws ---
function stopLive() {
  if (state.ws) { state.ws.close(); state.ws = null; }
  $("live-follow").disabled = false;
  $("live-stop").disabled = true;
}

function followLive() {
  stopLive();
  $("live-error").hidden = true;
  const table = $("live-table").value.trim();
  if (!table) return;
  const where = $("live-where").value.trim();
  const parts = table.split(".");
  const sql = "SELECT * FROM " + parts.map(quote).join(".") + (where ? " WHERE " + where : "");
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/v1/ws?compress=false");
  state.ws = ws;
  $("live-follow").disabled = true;
  $("live-stop").disabled = false;
  let columns = [];
  let key = null;
  const rows = new Map();
  const fresh = new Set();
  const draw = () => {
    const list = Array.from(rows.values());
    const freshIdx = new Set();
    list.forEach((r, i) => { if (fresh.has(r.__key)) freshIdx.add(i); });
    renderTable($("live-rows"), columns, list.map((r) => columns.map((c) => r[c.name])), freshIdx);
    $("live-status").textContent = rows.size + " row(s), live";
  };
  ws.onopen = () => ws.send(JSON.stringify({ type: "authenticate", method: "jwt", token: state.access, protocol: { serialization: "json", compression: "none" } }));
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") return;
    const m = JSON.parse(ev.data);
    if (m.type === "auth_success") {
      ws.send(JSON.stringify({ type: "subscribe", subscription: { id: "live", sql, options: { batch_size: 500 } } }));
    } else if (m.type === "auth_error") {
      showError($("live-error"), "AUTH_ERROR", m.message);
    } else if (m.type === "subscription_ack") {
      columns = m.schema.filter((f) => f.name !== "_seq").concat([{ name: "_seq", data_type: "BigInt" }]);
      const pk = m.schema.find((f) => (f.flags || []).includes("pk"));
      key = pk ? pk.name : "_seq";
      $("live-status").textContent = "loading";
    } else if (m.type === "initial_data_batch") {
      m.rows.forEach((r) => { r.__key = String(r[key]); rows.set(r.__key, r); });
      if (m.batch_control.has_more) ws.send(JSON.stringify({ type: "next_batch", subscription_id: "live" }));
      draw();
    } else if (m.type === "change") {
      (m.rows || []).forEach((r) => { r.__key = String(r[key]); rows.set(r.__key, Object.assign(rows.get(r.__key) || {}, r)); fresh.add(r.__key); });
      if (m.change_type === "delete") (m.old_values || []).forEach((r) => rows.delete(String(r[key])));
      draw();
    } else if (m.type === "error") {
      showError($("live-error"), m.code, m.message);
    }
  };
  ws.onclose = (ev) => {
    if (state.ws === ws) {
      $("live-status").textContent = "closed (" + ev.code + (ev.reason ? ": " + ev.reason : "") + ")";
      state.ws = null;
      $("live-follow").disabled = false;
      $("live-stop").disabled = true;
    }
  };
}
$("live-follow").addEventListener("click", followLive);
$("live-stop").addEventListener("click", () => { stopLive(); $("live-status").textContent = "stopped"; });

// --- cluster ---
async function loadCluster() {
  const r = await api("GET", "/v1/api/cluster/health");
  if (!r.json || !r.json.groups) return;
  $("cluster-status").textContent = r.json.status;
  const rows = r.json.groups.map((g) => {
    const lags = (g.members || []).map((m) => m.lag).filter((l) => l !== null && l !== undefined);
    return [g.group, g.leader, g.term, g.commit_index, g.applied_index, lags.length ? Math.max(...lags) : null];
  });
  renderTable($("cluster"), ["group", "leader", "term", "commit", "applied here", "max lag"].map((name) => ({ name })), rows);
}

if (state.access) showApp(); else showLogin();
