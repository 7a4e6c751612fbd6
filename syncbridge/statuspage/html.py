"""The status page: one HTML document with its CSS and script inline, no external asset (a pod may have no
internet). The script polls ``status.json`` every 2 s and draws it with DOM calls only (text goes in as
text, never as HTML: a file name cannot inject markup). The Content-Security-Policy allows exactly this
script and this style by their hashes (:data:`CSP`).
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["PAGE", "CSP", "POLL_MS"]

POLL_MS = 2000

STYLE = """
:root{color-scheme:light dark;--ok:#2e7d32;--warn:#b26a00;--bad:#c62828;--mute:#777}
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:12px 18px}
h1{font-size:20px;margin:4px 0 2px}h2{font-size:16px;margin:18px 0 6px;border-bottom:1px solid #8884}
table{border-collapse:collapse;width:100%}td,th{padding:3px 8px;text-align:left;border-bottom:1px solid #8882;
vertical-align:top}th{font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:var(--ok)}.warn,.waiting,.retrying{color:var(--warn)}.failed,.bad{color:var(--bad)}
.skipped,.mute{color:var(--mute)}.running,.downloading{color:#1565c0;font-weight:600}
progress{width:160px}#err{color:var(--bad)}.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #8884;border-radius:6px;padding:6px;width:200px;font-size:12px;word-break:break-all}
.card img{display:block;max-width:188px;max-height:188px;margin:0 auto 4px}
.stats{display:flex;flex-wrap:wrap;gap:6px 22px}.stats b{font-size:18px;display:block}
"""

SCRIPT = """
"use strict";
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined && text !== null)
  e.textContent = String(text); if (cls) e.className = cls; return e; }
function bytes(n) { if (n === null || n === undefined) return "-"; const u = ["B","KB","MB","GB","TB"];
  let i = 0; n = Number(n); while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n.toFixed(0)) + " " + u[i]; }
function secs(s) { if (s === null || s === undefined) return "-"; s = Number(s);
  if (s < 1) return (s * 1000).toFixed(0) + " ms"; if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return Math.round(s / 60) + " min"; return (s / 3600).toFixed(1) + " h"; }
function row(cells) { const tr = el("tr"); for (const c of cells) { if (c instanceof Node) { const td = el("td");
  td.appendChild(c); tr.appendChild(td); } else tr.appendChild(el("td", c)); } return tr; }
function fill(id, rows, empty) { const t = $(id); t.replaceChildren(); for (const r of rows) t.appendChild(r);
  if (!rows.length && empty) t.appendChild(row([el("span", empty, "mute")])); }
function steps(d) {
  const start = d.start || {}; const done = {}; for (const s of start.steps || []) done[s.name] = s;
  const rows = []; let found = false; const order = ((d.page || {}).steps || []).slice();
  for (const s of start.steps || []) if (!order.includes(s.name)) order.push(s.name);
  for (const name of order) {
    const st = done[name]; let state = start.running ? "waiting" : "-"; let line = "";
    if (name === "app" && start.app && start.app.state === "running") {
      state = "running"; line = "running (pid " + start.app.pid + ")"; found = true; }
    else if (st) { state = st.status; line = st.line; }
    else if (start.running && !found) { state = "running"; line = name === "models" ? "pulling" : ""; found = true; }
    rows.push(row([name.replace("_", " "), el("span", state, state), line]));
  }
  if (start.app_port) { const p = start.app_port; rows.push(row(["app port", el("span", p.state, p.state === "failed" ?
    "failed" : "mute"), (p.message || "") ])); }
  fill("steps", rows, "no start-up recorded"); }
function models(d) {
  const ms = Object.values((d.start || {}).models || {}); const rows = [];
  ms.sort((a, b) => a.name < b.name ? -1 : 1);
  for (const m of ms) {
    const bar = el("progress"); bar.max = 1; if (m.fraction !== null && m.fraction !== undefined) bar.value = m.fraction;
    rows.push(row([m.name, el("span", m.state, m.state), (m.from || "-") + (m.source && m.source !== m.from ?
      " (" + m.source + ")" : ""), bar, bytes(m.bytes) + " / " + bytes(m.total),
      m.rate ? bytes(m.rate) + "/s" : "-", m.eta !== null && m.eta !== undefined ? "ETA " + secs(m.eta) : "-"]));
  }
  fill("models", rows, "no model pulled by this start");
  const bg = (d.models || {}).background; $("bg").textContent = bg ? "background pull: " + bg.state +
    (bg.line ? " (" + bg.line + ")" : "") : ""; }
function watcher(d) {
  const w = d.running ? d : (d.last_run || {}); const box = $("counters"); box.replaceChildren();
  const add = (label, value) => { const s = el("span"); s.appendChild(el("b", value)); s.appendChild(
    document.createTextNode(label)); box.appendChild(s); };
  $("wstate").textContent = d.running ? "running: " + (d.directory || "") + " \\u2192 " + (d.prefix || "") + "/ on " +
    (d.store || "") : "watcher " + (d.state || "not running");
  add("pushed", w.uploaded ?? 0); add("pending", d.pending ?? 0); add("oldest pending", secs(d.oldest_pending_age));
  add("failures", d.failed ?? 0); add("retries", w.retries ?? 0); add("p50 latency", secs(w.p50_latency));
  add("p95 latency", secs(w.p95_latency)); add("bytes pushed", bytes(w.bytes_uploaded || 0)); }
let lastOutputs = "";
function outputs(d) {
  const recent = ((d.running ? d.recent : (d.last_run || {}).recent) || []).slice().reverse().slice(0, 12);
  const key = JSON.stringify(recent.map((o) => [o.path, o.pushed_at])); if (key === lastOutputs) return;
  lastOutputs = key; const box = $("outputs"); box.replaceChildren();
  for (const o of recent) {
    const card = el("div", null, "card");
    if (String(o.content_type || "").startsWith("image/")) { const img = el("img"); img.alt = o.path;
      img.loading = "lazy"; img.src = "thumb?path=" + encodeURIComponent(o.path); card.appendChild(img); }
    card.appendChild(el("div", o.key)); card.appendChild(el("div", bytes(o.size) + ", " + secs(o.latency), "mute"));
    if (o.url && /^https?:\\/\\//.test(o.url)) { const a = el("a", "public link"); a.href = o.url; a.rel = "noreferrer";
      card.appendChild(a); }
    box.appendChild(card);
  }
  if (!recent.length) box.appendChild(el("span", "nothing pushed yet", "mute")); }
function fleet(d) {
  $("fleetbox").hidden = !d.fleet; if (!d.fleet) return; const rows = [];
  for (const p of d.fleet.pods || []) rows.push(row([p.pod_id, el("span", p.status, p.status === "live" ? "ok" :
    "mute"), p.role || "", secs(p.age_seconds) + " ago", p.uploaded ?? "-", p.pending ?? "-", secs(p.p95_latency)]));
  fill("pods", rows, d.fleet.error ? "fleet: " + d.fleet.error : "no pod heartbeat yet"); }
async function poll() {
  try {
    const r = await fetch("status.json", {cache: "no-store", credentials: "same-origin"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const d = await r.json(); const page = d.page || {};
    $("pod").textContent = page.pod ? "pod " + page.pod : ""; $("version").textContent = page.version || "";
    steps(d); models(d); watcher(d); outputs(d); fleet(d);
    $("err").textContent = ""; $("updated").textContent = new Date().toLocaleTimeString();
    document.body.dataset.loaded = "1";
  } catch (e) { $("err").textContent = "cannot reach the pod: " + e.message; }
  setTimeout(poll, POLL_MS);
}
poll();
"""


def _body() -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>syncbridge status</title><style>{STYLE}</style></head>
<body>
<h1>syncbridge <span id="pod" class="mute"></span></h1>
<div class="mute">version <span id="version"></span>, updated <span id="updated">-</span> <span id="err"></span></div>
<h2>Start-up</h2><table><tbody id="steps"></tbody></table>
<h2>Models</h2><table><thead><tr><th>model</th><th>state</th><th>source</th><th>progress</th><th>bytes</th>
<th>rate</th><th>ETA</th></tr></thead><tbody id="models"></tbody></table><div id="bg" class="mute"></div>
<h2>Outputs</h2><div id="wstate" class="mute"></div><div id="counters" class="stats"></div>
<h3>Last outputs</h3><div id="outputs" class="grid"></div>
<section id="fleetbox" hidden><h2>Fleet</h2><table><thead><tr><th>pod</th><th>status</th><th>role</th><th>seen</th>
<th>pushed</th><th>pending</th><th>p95</th></tr></thead><tbody id="pods"></tbody></table></section>
<script>{_SCRIPT}</script>
</body></html>
"""


_SCRIPT = SCRIPT.replace("POLL_MS", str(POLL_MS))


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


PAGE = _body().encode("utf-8")
CSP = (f"default-src 'self'; script-src {_hash(_SCRIPT)}; style-src {_hash(STYLE)}; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'")
