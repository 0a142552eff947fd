// The dashboard page: reads /api/snapshot twice a second and redraws. Every value is set as
// text (never as HTML): names and error messages come from workers and tasks.
"use strict";

const POLL_MS = 500;
let chart = null;

function el(id) { return document.getElementById(id); }

function text(id, value) { el(id).textContent = value; }

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1e-3) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1e3).toFixed(1) + " ms";
  return s.toFixed(2) + " s";
}

function bytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function fillTable(id, rows, cells, attrs) {
  const body = el(id).tBodies[0];
  const trs = rows.map((row) => {
    const tr = document.createElement("tr");
    if (attrs) for (const [k, v] of Object.entries(attrs(row))) tr.setAttribute(k, v);
    for (const [cls, value] of cells(row)) {
      const td = document.createElement("td");
      if (cls) td.className = cls;
      td.textContent = value;
      tr.appendChild(td);
    }
    return tr;
  });
  body.replaceChildren(...trs);
}

function drawChart(points) {
  const data = [points.map((p) => p[0]), points.map((p) => p[1])];
  const width = Math.min(1100, document.body.clientWidth - 4);
  if (chart === null) {
    chart = new uPlot({
      width: width, height: 220,
      series: [{}, { label: "calls/s", stroke: "#2f6fdf", fill: "rgba(47,111,223,0.12)", width: 2 }],
      axes: [{ space: 90, values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toLocaleTimeString()) },
             { size: 60 }],
      scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    }, data, el("chart"));
  } else {
    chart.setData(data);
  }
}

function render(s) {
  document.body.dataset.updated = String(s.time);
  text("main-name", s.main.name + " · Python " + s.main.python);
  const t = s.totals;
  text("done-count", t.done);
  text("submitted-count", t.submitted);
  text("at-workers-count", t.at_workers);
  text("pending-count", t.pending);
  text("failed-count", t.failed);
  text("retried-count", t.retried);
  text("cancelled-count", t.cancelled);
  const busy = s.workers.reduce((a, w) => a + w.busy, 0);
  const slots = s.workers.reduce((a, w) => a + (w.state === "lost" ? 0 : w.slots), 0);
  text("slots-count", busy + " / " + slots);
  fillTable("workers", s.workers, (w) => [
    ["name", w.name || "–"], ["", w.address], ["", w.platform], ["", w.python],
    ["", w.busy + " / " + w.slots], ["", w.queued],
    ["state", w.state + (w.reason ? ": " + w.reason : "")], ["", w.done],
  ], (w) => ({ "data-state": w.state, "data-address": w.address }));
  fillTable("functions", s.functions, (f) => [
    ["name", f.name], ["", f.pending], ["", f.at_workers], ["done", f.done], ["", f.failed],
    ["", f.retried], ["", f.cancelled], ["placed", f.placed], ["", seconds(f.mean)],
    ["", seconds(f.p95)],
  ]);
  fillTable("failures", s.failures, (f) => [
    ["", new Date(f.time * 1000).toLocaleTimeString()], ["", f.function + "#" + f.task],
    ["", f.type], ["", f.message], ["", f.worker || "–"],
  ]);
  const ws = s.workspace;
  text("ws-id", ws.id.slice(0, 16));
  text("ws-root", ws.root);
  text("ws-files", ws.files);
  text("ws-bytes", bytes(ws.bytes));
  text("ws-workers", ws.workers.length ? ws.workers.join(", ") : "none yet");
  drawChart(s.throughput);
}

async function poll() {
  try {
    const reply = await fetch("/api/snapshot", { cache: "no-store" });
    const snap = await reply.json();
    const conn = el("connection");
    conn.dataset.state = "live";
    conn.textContent = "live";
    if (!snap.starting) render(snap);
  } catch (e) {
    const conn = el("connection");
    conn.dataset.state = "gone";
    conn.textContent = "the Main is gone (its last state is shown)";
  }
  setTimeout(poll, POLL_MS);
}

poll();
