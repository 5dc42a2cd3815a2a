// The operator's dashboard: polls /api/v1/stats every second and each cell's first page
// of nodes every five; the charts draw the snapshot's history (the last 60 statistics
// windows, 5 minutes, a point each). A bearer token, if the server wants one, comes from
// the URL: /#token=...
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const sortKeys = {}; // cell -> [key, direction]

async function api(path) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(path, { headers });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function pairs(element, entries) {
  element.replaceChildren();
  for (const [name, value] of entries) {
    const term = document.createElement("dt");
    const detail = document.createElement("dd");
    term.textContent = name;
    detail.textContent = value ?? "-";
    element.append(term, detail);
  }
}

function chart(canvas, values) {
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const top = Math.max(1, ...values.filter((v) => v != null));
  context.strokeStyle = "#3b7dd8";
  context.beginPath();
  values.forEach((value, index) => {
    const x = (index / Math.max(1, values.length - 1)) * canvas.width;
    const y = canvas.height - ((value ?? 0) / top) * (canvas.height - 4) - 2;
    index ? context.lineTo(x, y) : context.moveTo(x, y);
    if (index === values.length - 1) context.arc(x, y, 1.5, 0, 2 * Math.PI);
  });
  context.stroke();
  context.fillStyle = "#5a6473";
  context.fillText(String(Math.round(values.at(-1) ?? 0)), 4, 12);
  canvas.dataset.points = String(values.length);
  canvas.dataset.last = String(values.at(-1) ?? "");
}

function section(cell) {
  let found = document.querySelector(`section[data-cell="${cell}"]`);
  if (!found) {
    found = document.getElementById("cell-template").content.firstElementChild.cloneNode(true);
    found.dataset.cell = cell;
    found.querySelector(".name").textContent = `cell ${cell}`;
    found.querySelectorAll("th[data-key]").forEach((head) =>
      head.addEventListener("click", () => {
        const [key, direction] = sortKeys[cell] ?? ["node_id", 1];
        sortKeys[cell] = [head.dataset.key, key === head.dataset.key ? -direction : 1];
        refreshNodes(cell);
      }),
    );
    document.getElementById("cells").append(found);
  }
  return found;
}

function show(cell, served) {
  const element = section(cell);
  const age = element.querySelector(".age");
  const snapshot = served.snapshot;
  if (!snapshot) {
    age.textContent = "no statistics yet";
    age.classList.add("stale");
    return;
  }
  element.dataset.window = String(snapshot.window_start_ms);
  age.textContent = `published ${Math.round(served.age_ms / 1000)} s ago${served.stale ? " (stale: no worker is publishing)" : ""}`;
  age.classList.toggle("stale", served.stale);
  pairs(element.querySelector(".nodes-by-state"), Object.entries(snapshot.nodes_by_state));
  pairs(element.querySelector(".leases"), Object.entries(snapshot.leases));
  const ended = [
    ...Object.entries(snapshot.rejected).map(([r, n]) => [`rejected ${r}`, n]),
    ...Object.entries(snapshot.failed).map(([r, n]) => [`failed ${r}`, n]),
  ].filter(([, n]) => n > 0);
  pairs(element.querySelector(".reasons"), ended.length ? ended : [["none", 0]]);
  const queues = Object.entries(snapshot.queues ?? {}).map(([p, q]) => [p, `${q.waiting} waiting, p99 ${q.wait_p99_ms ?? "-"} ms`]);
  pairs(element.querySelector(".queues"), queues.length ? queues : [["none waiting", 0]]);
  const body = element.querySelector(".pools tbody");
  body.replaceChildren();
  for (const [name, pool] of Object.entries(snapshot.pools)) {
    const row = body.insertRow();
    row.dataset.pool = name;
    for (const value of [name, pool.members, pool.running, pool.free_slots]) row.insertCell().textContent = value;
    const bar = row.insertCell();
    bar.innerHTML = `<span class="bar-box"><span class="bar" style="width:${Math.round(pool.utilization * 100)}%"></span></span>${Math.round(pool.utilization * 100)} %`;
  }
  const points = snapshot.history ?? [];
  chart(element.querySelector(".chart.rate"), points.map((p) => p.dispatch_rate_per_s));
  chart(element.querySelector(".chart.latency"), points.map((p) => p.e2e_p99_ms));
}

async function refreshNodes(cell) {
  const page = await api(`api/v1/nodes?cell=${encodeURIComponent(cell)}&limit=100`);
  const [key, direction] = sortKeys[cell] ?? ["node_id", 1];
  page.items.sort((a, b) => (a[key] > b[key] ? direction : a[key] < b[key] ? -direction : 0));
  const body = section(cell).querySelector(".node-table tbody");
  body.replaceChildren();
  for (const node of page.items) {
    const row = body.insertRow();
    for (const name of ["node_id", "state", "running", "max_concurrency", "cpu_pct", "gpu_pct", "mem_pct", "heartbeat_age_ms"]) {
      row.insertCell().textContent = node[name] ?? "-";
    }
    row.insertCell().textContent = (node.pools ?? []).join(", ");
  }
}

let ticks = 0;
async function tick() {
  const status = document.getElementById("status");
  try {
    const stats = await api("api/v1/stats");
    for (const [cell, served] of Object.entries(stats.cells)) {
      show(cell, served);
      if (ticks % 5 === 0) await refreshNodes(cell);
    }
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.classList.remove("bad");
  } catch (error) {
    status.textContent = String(error);
    status.classList.add("bad");
  }
  ticks += 1;
}

tick();
setInterval(tick, 1000);
