// Live views: polls /ui/api/live (node health, the workers' counters, config revisions) and
// turns successive reports into rates and latency quantiles, drawn with uPlot.
import { useEffect, useRef, useState } from "preact/hooks";
import uPlot from "uplot";
import { live } from "./api.js";
import { html } from "./ui.js";

const POLL_MS = 1000;
const KEEP = 120; // reports kept: two minutes at one a second

const feed = { history: [], last: null, error: "", subs: new Set(), timer: null };

async function poll() {
  const r = await live();
  if (r.ok) {
    feed.error = "";
    feed.last = r.data;
    feed.history.push(r.data);
    if (feed.history.length > KEEP) feed.history.shift();
  } else {
    feed.error = r.data.error_msg || `HTTP ${r.status}`;
  }
  for (const fn of feed.subs) fn(feed.history.length);
}

export function useLive() {
  const [, setTick] = useState(0);
  useEffect(() => {
    const fn = (n) => setTick(n + Math.random());
    feed.subs.add(fn);
    if (feed.timer === null) { poll(); feed.timer = setInterval(poll, POLL_MS); }
    return () => {
      feed.subs.delete(fn);
      if (feed.subs.size === 0) { clearInterval(feed.timer); feed.timer = null; }
    };
  }, []);
  return feed;
}

// Prometheus' histogram_quantile over the buckets' increase between two reports.
export function quantile(q, before, after) {
  const prev = new Map((before || []).map(([le, n]) => [String(le), n]));
  const inc = (after || []).map(([le, n]) => [le === "+Inf" ? Infinity : Number(le), n - (prev.get(String(le)) || 0)]);
  const total = inc.length ? inc[inc.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lowLe = 0, lowN = 0;
  for (const [le, n] of inc) {
    if (n >= rank) {
      if (le === Infinity) return lowLe;
      return lowLe + ((le - lowLe) * (rank - lowN)) / Math.max(n - lowN, 1e-9);
    }
    lowLe = le; lowN = n;
  }
  return lowLe;
}

const sum = (o) => Object.values(o || {}).reduce((a, b) => a + b, 0);

// Per route: [times, rps, 2xx/s, 4xx/s, 5xx/s, p50, p99] over the kept reports.
export function routeSeries(history, route) {
  const cols = [[], [], [], [], [], [], []];
  for (let i = 1; i < history.length; i++) {
    const a = history[i - 1], b = history[i];
    const ra = a.traffic?.routes?.[route], rb = b.traffic?.routes?.[route];
    const dt = Math.max(b.time - a.time, 1e-3);
    const rate = (f) => (rb ? Math.max(0, (f(rb) - (ra ? f(ra) : 0)) / dt) : 0);
    cols[0].push(b.time);
    cols[1].push(rate((r) => sum(r.status)));
    cols[2].push(rate((r) => r.status["2xx"] || 0));
    cols[3].push(rate((r) => r.status["4xx"] || 0));
    cols[4].push(rate((r) => r.status["5xx"] || 0));
    cols[5].push(rb ? quantile(0.5, ra?.buckets, rb.buckets) : null);
    cols[6].push(rb ? quantile(0.99, ra?.buckets, rb.buckets) : null);
  }
  return cols;
}

const COLORS = ["#1f6feb", "#2da44e", "#bf8700", "#cf222e", "#8250df"];

function Chart({ title, labels, data, unit }) {
  const box = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    const opts = {
      title, width: 300, height: 140,
      series: [{}, ...labels.map((l, i) => ({ label: l, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true }))],
      axes: [{ show: false }, { size: 56, values: (_, ticks) => ticks.map((t) => `${+t.toFixed(2)}${unit}`) }],
      legend: { live: false },
      cursor: { show: false },
    };
    plot.current = new uPlot(opts, data, box.current);
    return () => plot.current.destroy();
  }, []);
  useEffect(() => { plot.current && plot.current.setData(data); }, [data]);
  return html`<div class="chart" ref=${box}></div>`;
}

export function RouteTraffic({ route }) {
  const f = useLive();
  const s = routeSeries(f.history, route);
  const last = (i) => (s[i].length ? s[i][s[i].length - 1] : null);
  const fmt = (v, d = 1) => (v === null || v === undefined ? "–" : v.toFixed(d));
  if (f.last && f.last.traffic === null) return html`<p class="muted">Traffic: the Prometheus export is off.</p>`;
  return html`<div class="traffic" data-route=${route}>
    <p class="stats">route <b>${route}</b>: <span class="rps">${fmt(last(1))}</span> req/s ·
      p50 <span class="p50">${fmt(last(5))}</span> ms · p99 <span class="p99">${fmt(last(6))}</span> ms ·
      total <span class="total">${sum(f.last?.traffic?.routes?.[route]?.status)}</span></p>
    <div class="charts">
      <${Chart} title="requests/s" labels=${["all"]} data=${[s[0], s[1]]} unit="" />
      <${Chart} title="status classes/s" labels=${["2xx", "4xx", "5xx"]} data=${[s[0], s[2], s[3], s[4]]} unit="" />
      <${Chart} title="latency" labels=${["p50", "p99"]} data=${[s[0], s[5], s[6]]} unit="ms" />
    </div></div>`;
}

function HealthTable({ checks }) {
  if (!checks.length) return html`<p class="muted">No health checks configured.</p>`;
  return html`<table class="health"><thead><tr><th>checker</th><th>type</th><th>node</th><th>status</th>
    <th>success</th><th>tcp fail</th><th>http fail</th><th>timeouts</th></tr></thead><tbody>
    ${checks.flatMap((c) => c.nodes.map((n) => html`<tr class=${"node " + n.status} data-node=${`${n.ip}:${n.port}`} data-checker=${c.name}>
      <td>${c.name}</td><td>${c.type}</td><td>${n.ip}:${n.port}</td><td class="status">${n.status}</td>
      <td>${n.counter.success}</td><td>${n.counter.tcp_failure}</td><td>${n.counter.http_failure}</td><td>${n.counter.timeout_failure}</td></tr>`))}
  </tbody></table>`;
}

// The IPs of an upstream's nodes (hash or array form): APISIX's node label is the IP alone.
function nodeIps(nodes) {
  if (!nodes) return [];
  const addrs = Array.isArray(nodes) ? nodes.map((n) => n.host) : Object.keys(nodes).map((a) => a.replace(/:\d+$/, ""));
  return addrs.map((h) => h.replace(/^\[|\]$/g, ""));
}

// Health of one upstream's nodes (checker named by its config key) and requests per node.
export function NodeHealth({ name, nodes: configured }) {
  const f = useLive();
  const ips = new Set(nodeIps(configured));
  const checks = (f.last?.health || []).filter((c) => c.name.endsWith(name));
  const a = f.history[f.history.length - 2], b = f.last;
  const nodes = Object.fromEntries(Object.entries(b?.traffic?.nodes || {}).filter(([ip]) => ips.has(ip)));
  const dt = a && b ? Math.max(b.time - a.time, 1e-3) : 1;
  return html`<div class="node-health">
    ${checks.length > 0 && html`<h3>Health</h3><${HealthTable} checks=${checks} />`}
    ${Object.keys(nodes).length > 0 && html`<h3>Requests per node IP (every route to it; APISIX's <code>node</code> label)</h3><table class="per-node"><tbody>
      ${Object.entries(nodes).map(([node, n]) => html`<tr data-node=${node}><td>${node}</td>
        <td class="node-total">${n}</td><td>${a ? ((n - (a.traffic?.nodes?.[node] || 0)) / dt).toFixed(1) : "–"} req/s</td></tr>`)}
    </tbody></table>`}</div>`;
}

export function Overview() {
  const f = useLive();
  const d = f.last;
  if (!d) return html`<p class="muted">${f.error || "Loading…"}</p>`;
  const c = d.config || {};
  const routes = Object.keys(d.traffic?.routes || {}).filter((r) => r !== "");
  return html`<section class="overview">
    <h2>Overview</h2>
    ${f.error && html`<p class="error">${f.error}</p>`}
    <h3>Configuration</h3>
    <p id="config-state">source <b>${c.provider}</b>
      ${c.source_connected === false ? html` <span class="bad">(disconnected)</span>` : ""} ·
      served revision <b id="revision">${c.revision}</b> · etcd revision ${c.etcd_revision ?? "–"} ·
      lag <b id="lag">${c.lag ?? "–"}</b> · rejected items ${c.rejected} ·${" "}
      ${c.from_snapshot ? html`<b class="bad" id="snapshot">serving from the on-disk snapshot</b>` : html`<span id="snapshot">live config</span>`}</p>
    <table class="workers"><thead><tr><th>worker pid</th><th>ready</th><th>applied revision</th><th>lag</th></tr></thead><tbody>
      ${(c.workers || []).map((w) => html`<tr><td>${w.pid}</td><td>${w.ready ? "yes" : "no"}</td><td class="worker-revision">${w.revision}</td><td>${w.lag ?? "–"}</td></tr>`)}
    </tbody></table>
    <h3>Upstream health</h3>
    <${HealthTable} checks=${d.health || []} />
    <h3>Traffic per route</h3>
    ${d.traffic === null ? html`<p class="muted">The Prometheus export is off.</p>`
      : routes.length === 0 ? html`<p class="muted">No requests counted yet. Traffic is counted on routes with the <code>prometheus</code> plugin (or a global rule with it).</p>`
      : routes.map((r) => html`<${RouteTraffic} route=${r} />`)}
  </section>`;
}
