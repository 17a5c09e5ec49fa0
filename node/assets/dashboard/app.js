// The crank-node dashboard: fetches /data and draws it as SVG. Everything from the node is
// set as text or as numeric attributes, never parsed as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
// Width of the chart being drawn, in CSS pixels (the viewBox matches it: text keeps its size).
let W = 800;

function sized(svg) {
  W = Math.max(320, Math.round(svg.getBoundingClientRect().width) || 800);
}

function el(tag, attrs, parent) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}

function text(parent, x, y, s, anchor) {
  const t = el("text", { x, y, "text-anchor": anchor || "start" }, parent);
  t.textContent = s;
  return t;
}

function titled(node, s) {
  const t = el("title", {}, node);
  t.textContent = s;
  return node;
}

function fmt(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(1) + "G";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(0) + "k";
  if (n >= 100) return n.toFixed(0);
  return Number(n.toPrecision(3)).toString();
}

function day(ms, hourly) {
  const d = new Date(ms);
  const s = d.toISOString();
  return hourly ? s.slice(5, 10) + " " + s.slice(11, 16) : s.slice(0, 10);
}

// A frame with a y axis from 0 to max; returns the plot area and scales.
function frame(svg, height, max, xmin, xmax) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${height}`);
  const m = { l: 48, r: 12, t: 10, b: 22 };
  const pw = W - m.l - m.r, ph = height - m.t - m.b;
  const top = max > 0 ? max : 1;
  for (let i = 0; i <= 4; i++) {
    const y = m.t + ph - (ph * i) / 4;
    el("line", { x1: m.l, x2: W - m.r, y1: y, y2: y, class: "axis" }, svg);
    text(svg, m.l - 6, y + 4, fmt((top * i) / 4), "end");
  }
  const span = xmax > xmin ? xmax - xmin : 1;
  return {
    m, pw, ph,
    x: (v) => m.l + (pw * (v - xmin)) / span,
    y: (v) => m.t + ph - (ph * v) / top,
  };
}

function empty(svg, height, why) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${height}`);
  svg.dataset.points = "0";
  text(svg, W / 2, height / 2, why, "middle").setAttribute("class", "empty");
}

function moneyChart(svg, d) {
  sized(svg);
  const b = d.buckets;
  if (!b.some((x) => x.earned_stroops || x.spent_stroops)) return empty(svg, 220, "no receipts yet");
  const series = [
    ["earned", "earned_stroops"],
    ["received", "received_stroops"],
    ["spent", "spent_stroops"],
  ].map(([cls, key]) => {
    let sum = 0;
    return { cls, pts: b.map((x) => [x.start, (sum += x[key])]) };
  });
  const max = Math.max(...series.map((s) => s.pts[s.pts.length - 1][1]));
  const f = frame(svg, 220, max, b[0].start, b[b.length - 1].start);
  let points = 0;
  const hourly = d.bucket_secs < 86400;
  for (const s of series) {
    if (s.pts[s.pts.length - 1][1] === 0) continue;
    const path = s.pts.map(([t, v], i) => `${i ? "L" : "M"}${f.x(t).toFixed(1)},${f.y(v).toFixed(1)}`).join("");
    el("path", { d: path, class: `line ${s.cls}` }, svg);
    for (const [t, v] of s.pts) {
      titled(el("circle", { cx: f.x(t), cy: f.y(v), r: 2.5, class: `point ${s.cls}` }, svg),
        `${s.cls} ${fmt(v)} stroops by ${day(t, hourly)}`);
      points++;
    }
  }
  legend(svg, [["earned", "earned"], ["received", "received"], ["spent", "spent"]]);
  axisDates(svg, f, b[0].start, b[b.length - 1].start, 220, hourly);
  svg.dataset.points = String(points);
}

function legend(svg, items) {
  let x = 60;
  for (const [cls, label] of items) {
    el("rect", { x, y: 4, width: 10, height: 10, class: cls }, svg);
    text(svg, x + 14, 13, label);
    x += 90;
  }
}

function axisDates(svg, f, t0, t1, height, hourly) {
  text(svg, f.m.l, height - 6, day(t0, hourly));
  text(svg, W - f.m.r, height - 6, day(t1, hourly), "end");
}

function tasksChart(svg, d) {
  sized(svg);
  const b = d.buckets;
  if (!b.some((x) => x.served || x.bought)) return empty(svg, 220, "no tasks yet");
  const max = Math.max(...b.map((x) => Math.max(x.served, x.bought)));
  const f = frame(svg, 220, max, 0, b.length);
  const bw = Math.max(1, f.pw / b.length / 2 - 1);
  const hourly = d.bucket_secs < 86400;
  let points = 0;
  b.forEach((x, i) => {
    for (const [cls, v, off] of [["earned", x.served, 0], ["spent", x.bought, bw]]) {
      if (!v) continue;
      titled(el("rect", { x: f.x(i) + off, y: f.y(v), width: bw, height: f.y(0) - f.y(v), class: `point ${cls}` }, svg),
        `${v} ${cls === "earned" ? "served" : "bought"} ${day(x.start, hourly)}`);
      points++;
    }
  });
  legend(svg, [["earned", "served"], ["spent", "bought"]]);
  axisDates(svg, { m: f.m }, b[0].start, b[b.length - 1].start, 220, hourly);
  svg.dataset.points = String(points);
}

function energyChart(svg, d) {
  sized(svg);
  const e = d.energy;
  if (!e.length) return empty(svg, 220, "no tasks yet");
  const t0 = e[0].at, t1 = e[e.length - 1].at;
  const f = frame(svg, 220, Math.max(...e.map((p) => p.mj)), t0, t1);
  for (const p of e) {
    const cls = p.role === "worker" ? "earned" : "spent";
    titled(el("circle", { cx: f.x(p.at), cy: f.y(p.mj), r: 3, class: `point ${cls}` }, svg),
      `${fmt(p.mj)} mJ on ${p.path} (${p.role === "worker" ? "served" : "bought"})`);
  }
  legend(svg, [["earned", "served"], ["spent", "bought"]]);
  axisDates(svg, f, t0, t1, 220, t1 - t0 < 2 * 86400e3);
  svg.dataset.points = String(e.length);
}

function gateChart(svg, d) {
  sized(svg);
  const h = d.gate_history;
  if (!h.length) return empty(svg, 90, "no gate changes recorded");
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} 90`);
  const t0 = h[0].at, t1 = Math.max(d.generated_at, t0 + 1);
  const x = (t) => 10 + ((W - 20) * (t - t0)) / (t1 - t0);
  h.forEach((ev, i) => {
    const end = i + 1 < h.length ? h[i + 1].at : t1;
    const r = el("rect", { x: x(ev.at), y: 10, width: Math.max(1, x(end) - x(ev.at)), height: 40,
      class: `point ${ev.open ? "open" : "closed"}` }, svg);
    titled(r, `${new Date(ev.at).toISOString()}: ${ev.open ? "open" : "closed: " + (ev.reason || "")}`);
  });
  const hourly = t1 - t0 < 2 * 86400e3;
  text(svg, 10, 70, day(t0, hourly));
  text(svg, W - 10, 70, "now", "end");
  legend(svg, []);
  svg.dataset.points = String(h.length);
}

function trustChart(svg, d) {
  sized(svg);
  const rows = d.peers.trust;
  if (!rows.length) return empty(svg, 120, "no workers known yet");
  const height = 24 + rows.length * 18;
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${height}`);
  svg.style.height = `${height}px`;
  rows.forEach((r, i) => {
    const y = 8 + i * 18;
    text(svg, 150, y + 11, r.peer_id.slice(-12), "end");
    titled(el("rect", { x: 156, y, width: Math.max(1, (W - 260) * r.trust), height: 12, class: "point trustbar" }, svg),
      `${r.agent}: ${r.because}`);
    text(svg, 160 + (W - 260) * r.trust, y + 11, `${r.trust.toFixed(2)} · ${r.completed_here} tasks`);
  });
  svg.dataset.points = String(rows.length);
}

function stat(parent, label, value) {
  const s = document.createElement("div");
  s.className = "stat";
  const b = document.createElement("b");
  b.textContent = value;
  s.append(b, document.createTextNode(label));
  parent.appendChild(s);
}

function render(d) {
  document.getElementById("node").textContent =
    `${d.node.peer_id} · v${d.node.version} · up ${Math.round(d.node.uptime_secs / 60)} min`;
  const g = document.getElementById("gate");
  g.textContent = d.gate.open ? "gate open" : `gate closed: ${d.gate.reason || ""}`;
  g.className = d.gate.open ? "badge open" : "badge";
  const t = d.totals;
  const totals = document.getElementById("totals");
  totals.replaceChildren();
  stat(totals, "stroops earned", fmt(t.earned_stroops));
  stat(totals, "stroops received", fmt(t.received_stroops));
  stat(totals, "stroops spent", fmt(t.spent_stroops));
  stat(totals, "tasks served", String(t.served));
  stat(totals, "tasks bought", String(t.bought));
  stat(totals, "J for tasks served", fmt(t.energy_served_mj / 1000));
  stat(totals, "mJ per task served", t.served ? fmt(t.energy_served_mj / t.served) : "–");
  stat(totals, "peers connected", String(d.peers.connected));
  document.getElementById("bucket").textContent = d.bucket_secs < 86400 ? "(per hour)" : "(per day)";
  document.getElementById("peercount").textContent = `(${d.peers.known} known)`;
  moneyChart(document.getElementById("money"), d);
  tasksChart(document.getElementById("tasks"), d);
  energyChart(document.getElementById("energy"), d);
  gateChart(document.getElementById("gatehistory"), d);
  trustChart(document.getElementById("trust"), d);
  document.getElementById("footer").textContent =
    `${d.receipts_scanned} receipts · updated ${new Date(d.generated_at).toISOString()}`;
}

async function refresh() {
  const r = await fetch("/data", { credentials: "same-origin", cache: "no-store" });
  if (r.status === 401) {
    document.getElementById("node").textContent = "signed out: run `crank-node dashboard` for a new link";
    return false;
  }
  if (!r.ok) throw new Error(`data: HTTP ${r.status}`);
  render(await r.json());
  return true;
}

async function start() {
  document.getElementById("logout").addEventListener("click", async () => {
    const token = document.querySelector('meta[name="csrf-token"]').content;
    await fetch("/logout", { method: "POST", headers: { "x-csrf-token": token }, credentials: "same-origin" });
    location.reload();
  });
  try {
    if (await refresh()) {
      // How long the page took from navigation to its charts (the headless test reads it).
      document.body.dataset.renderMs = performance.now().toFixed(1);
      setInterval(() => refresh().catch(() => {}), 30000);
    }
  } catch (e) {
    document.getElementById("node").textContent = String(e);
  }
  document.body.dataset.ready = "1";
}

start();
