// The dashboard page: the overview at "/", one node at "/node/<id>". Everything that comes from
// the network (node ids, labels, reasons) is set as text, never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const nodePath = location.pathname.startsWith("/node/")
  ? decodeURIComponent(location.pathname.slice("/node/".length)) : null;
let current = null;  // what the page shows (the API's JSON)

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function clock(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) : "–";
}

function age(seconds) {
  if (!seconds) return "–";
  const s = Math.max(0, Date.now() / 1000 - seconds);
  return s < 120 ? `${s.toFixed(0)} s` : s < 7200 ? `${(s / 60).toFixed(0)} min`
    : `${(s / 3600).toFixed(1)} h`;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell ?? "–";
    tr.appendChild(td);
  }
  return tr;
}

// --- overview -------------------------------------------------------------------------------
function renderOverview() {
  const body = document.querySelector("#nodes tbody");
  body.replaceChildren();
  for (const node of current.nodes) {
    const link = element("a", node.node_id);
    link.href = "/node/" + encodeURIComponent(node.node_id);
    const reading = node.reading
      ? `${node.reading.temperature.toFixed(1)} °C, ${node.reading.humidity.toFixed(0)} %` : null;
    const next = node.forecast ? node.forecast.steps[0] : null;
    const forecast = next ? `${next[1].toFixed(1)} °C, ${next[2].toFixed(0)} % (${node.forecast.model})`
      : null;
    const keyword = node.keyword ? heard(node.keyword) : null;
    body.appendChild(row([link, element("span", node.status ?? "unknown", node.status),
      reading, age(node.reading && node.reading.time), forecast, keyword, node.error_count]));
  }
  document.getElementById("no-nodes").hidden = current.nodes.length > 0;
  const clients = document.getElementById("clients");
  clients.replaceChildren();
  for (const [client, status] of Object.entries(current.clients)) {
    const item = element("li", client + ": ");
    item.appendChild(element("span", status, status));
    clients.appendChild(item);
  }
}

// --- one node -------------------------------------------------------------------------------
function renderNode() {
  document.getElementById("node-title").textContent = current.node_id;
  document.getElementById("node-status").textContent =
    `status ${current.status ?? "unknown"}; last heard ${age(current.heard_at)} ago`;
  chart("chart-temperature", 1);
  chart("chart-humidity", 2);
  const keywords = document.querySelector("#keywords tbody");
  keywords.replaceChildren(...current.keywords.slice().reverse().map((k) =>
    row([clock(k.time), heard(k), k.model])));
  const errors = document.querySelector("#errors tbody");
  errors.replaceChildren(...current.errors.slice().reverse().map((e) =>
    row([clock(e.time), e.topic, e.reason])));
}

// "go 91 %", or for a sound that was no word "unknown, closest go 62 %".
function heard(keyword) {
  const percent = `${(keyword.probability * 100).toFixed(0)} %`;
  return keyword.closest ? `${keyword.label}, closest ${keyword.closest} ${percent}`
    : `${keyword.label} ${percent}`;
}

function chart(id, feature) {
  const svg = document.getElementById(id);
  svg.replaceChildren();
  const steps = current.steps;
  const forecasts = current.forecasts.filter((f) => f.model === "forecast_a" || !current.forecasts.some((g) => g.model === "forecast_a"));
  const points = steps.map((s) => [s[0], s[feature]]);
  for (const f of forecasts) for (const s of f.steps) points.push([s[0], s[feature]]);
  if (!points.length) {
    svg.appendChild(svgElement("text", { x: 20, y: 110 }, "no readings yet"));
    return;
  }
  const [x0, x1] = [Math.min(...points.map((p) => p[0])), Math.max(...points.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...points.map((p) => p[1])), Math.max(...points.map((p) => p[1]))];
  if (y1 - y0 < 1) { y0 -= 0.5; y1 += 0.5; }
  const x = (t) => 50 + (x1 > x0 ? (t - x0) / (x1 - x0) : 0.5) * 730;
  const y = (v) => 200 - (v - y0) / (y1 - y0) * 180;
  for (let i = 0; i <= 4; i++) {
    const value = y0 + (y1 - y0) * i / 4;
    svg.appendChild(svgElement("line", { x1: 50, x2: 780, y1: y(value), y2: y(value), class: "grid" }));
    svg.appendChild(svgElement("text", { x: 4, y: y(value) + 4 }, value.toFixed(1)));
  }
  svg.appendChild(svgElement("text", { x: 50, y: 216 }, clock(x0)));
  svg.appendChild(svgElement("text", { x: 650, y: 216 }, clock(x1)));
  const path = (pairs) => pairs.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
  if (steps.length) svg.appendChild(svgElement("path", { d: path(steps.map((s) => [s[0], s[feature]])), class: "measured" }));
  const measured = new Map(steps.map((s) => [s[0], s[feature]]));
  for (const f of forecasts) {
    const start = measured.has(f.input_time) ? [[f.input_time, measured.get(f.input_time)]] : [];
    const pairs = start.concat(f.steps.map((s) => [s[0], s[feature]]));
    svg.appendChild(svgElement("path", { d: path(pairs), class: "forecast" }));
  }
}

function svgElement(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- data and live updates -------------------------------------------------------------------
async function load() {
  const url = nodePath === null ? "/api/nodes" : "/api/nodes/" + encodeURIComponent(nodePath);
  const response = await fetch(url);
  if (!response.ok) {
    document.getElementById("node-title").textContent = `no node "${nodePath}" has been heard`;
    document.getElementById("node").hidden = false;
    return;
  }
  current = await response.json();
  document.getElementById(nodePath === null ? "overview" : "node").hidden = false;
  (nodePath === null ? renderOverview : renderNode)();
}

let pending = null;
function refreshSoon() {  // many events in a burst: one reload
  if (pending === null) pending = setTimeout(() => { pending = null; load(); }, 250);
}

function listen() {
  const status = document.getElementById("connection");
  const source = new EventSource("/events");
  source.onopen = () => { status.textContent = "live"; status.className = "online"; refreshSoon(); };
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "offline"; };
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (nodePath === null || event.node_id === nodePath || event.client_id === nodePath) refreshSoon();
  };
}

load();
listen();
