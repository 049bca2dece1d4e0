// What each Admin API resource looks like in the dashboard: its list columns, the filters the
// Admin API offers for it, and the common fields its form edits (the rest is JSON).
const join = (a) => (Array.isArray(a) ? a.join(", ") : a || "");
const nodesText = (nodes) => {
  if (!nodes) return "";
  if (Array.isArray(nodes)) return nodes.map((n) => `${n.host}:${n.port ?? ""} ${n.weight ?? 1}`).join("\n");
  return Object.entries(nodes).map(([a, w]) => `${a} ${w}`).join("\n");
};
const upstreamOf = (v) =>
  v.upstream_id ? `upstream ${v.upstream_id}` : v.upstream ? nodesText(v.upstream.nodes).replace(/\n/g, ", ") : v.service_id ? `service ${v.service_id}` : "";

const F = {
  text: (key, label, extra = {}) => ({ key, label: label || key, type: "text", ...extra }),
  number: (key, label) => ({ key, label: label || key, type: "number" }),
  list: (key, label) => ({ key, label: `${label || key} (comma-separated)`, type: "list" }),
  area: (key, label, extra = {}) => ({ key, label: label || key, type: "area", ...extra }),
  nodes: (key, label) => ({ key, label: label || "nodes (one per line: host:port weight)", type: "nodes" }),
  select: (key, options, label) => ({ key, label: label || key, type: "select", options }),
};
const name = F.text("name");
const desc = F.text("desc", "description");

export const KINDS = [
  {
    path: "routes", title: "Routes", filters: ["name", "uri", "label", "filter"],
    cols: [["name", (v) => v.name], ["uri", (v) => v.uri || join(v.uris)], ["methods", (v) => join(v.methods) || "all"],
      ["host", (v) => v.host || join(v.hosts)], ["upstream", upstreamOf]],
    fields: [name, F.text("uri"), F.list("methods"), F.text("host"), F.text("upstream_id"), F.text("service_id"),
      F.nodes("upstream.nodes", "inline upstream nodes (host:port weight per line)"), F.number("priority"), desc],
  },
  {
    path: "services", title: "Services", filters: ["name", "label"],
    cols: [["name", (v) => v.name], ["hosts", (v) => join(v.hosts)], ["upstream", upstreamOf]],
    fields: [name, F.list("hosts"), F.text("upstream_id"), desc],
  },
  {
    path: "upstreams", title: "Upstreams", filters: ["name", "label"],
    cols: [["name", (v) => v.name], ["type", (v) => v.type || "roundrobin"], ["nodes", (v) => nodesText(v.nodes).replace(/\n/g, ", ")]],
    fields: [name, F.select("type", ["roundrobin", "chash", "ewma", "least_conn"]), F.nodes("nodes"), F.text("scheme"), desc],
  },
  {
    path: "consumers", title: "Consumers", filters: ["name", "label"], idField: "username",
    cols: [["group", (v) => v.group_id], ["plugins", (v) => Object.keys(v.plugins || {}).join(", ")], ["desc", (v) => v.desc]],
    fields: [F.text("username", "username", { idOnly: true }), F.text("group_id"), desc],
  },
  {
    path: "consumer_groups", title: "Consumer groups", filters: ["name", "label"],
    cols: [["name", (v) => v.name], ["plugins", (v) => Object.keys(v.plugins || {}).join(", ")], ["desc", (v) => v.desc]],
    fields: [name, desc],
  },
  {
    path: "plugin_configs", title: "Plugin configs", filters: ["name", "label"],
    cols: [["name", (v) => v.name], ["plugins", (v) => Object.keys(v.plugins || {}).join(", ")], ["desc", (v) => v.desc]],
    fields: [name, desc],
  },
  {
    path: "global_rules", title: "Global rules", filters: [],
    cols: [["plugins", (v) => Object.keys(v.plugins || {}).join(", ")]],
    fields: [],
  },
  {
    path: "ssls", title: "SSL certificates", filters: ["label"], secret: ["key", "keys"],
    cols: [["snis", (v) => v.sni || join(v.snis)], ["type", (v) => v.type || "server"], ["status", (v) => (v.status === 0 ? "disabled" : "enabled")]],
    fields: [F.list("snis"), F.area("cert", "certificate (PEM)"), F.area("key", "private key (PEM; write-only, never shown)", { secret: true })],
  },
  {
    path: "plugin_metadata", title: "Plugin metadata", filters: [], idLabel: "plugin",
    cols: [["fields", (v) => Object.keys(v).filter((k) => k !== "id").join(", ")]],
    fields: [],
  },
  {
    path: "protos", title: "Protos", filters: ["name", "label"],
    cols: [["name", (v) => v.name], ["desc", (v) => v.desc]],
    fields: [name, F.area("content", "content (.proto)"), desc],
  },
  {
    path: "secrets", title: "Secrets", filters: [], idLabel: "manager/id",
    cols: [["uri", (v) => v.uri], ["prefix", (v) => v.prefix]],
    fields: [F.text("uri"), F.text("prefix")],
  },
  {
    path: "stream_routes", title: "Stream routes", filters: ["filter"],
    cols: [["server_port", (v) => v.server_port], ["remote_addr", (v) => v.remote_addr], ["upstream", upstreamOf]],
    fields: [F.number("server_port"), F.text("remote_addr"), F.text("server_addr"), F.text("sni"), F.text("upstream_id"), desc],
  },
];

export const kindByPath = (p) => KINDS.find((k) => k.path === p);

// -- the form: field values <-> the object ----------------------------------------------------

const getPath = (obj, key) => key.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);

export function fieldText(field, obj) {
  const v = getPath(obj, field.key);
  if (v === undefined || v === null) return "";
  if (field.type === "list") return join(v);
  if (field.type === "nodes") return nodesText(v);
  return String(v);
}

function parseNodes(text) {
  const nodes = {};
  for (const line of text.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const [addr, weight] = line.split(/\s+/);
    nodes[addr] = weight === undefined ? 1 : Number(weight);
  }
  return nodes;
}

export function fieldValue(field, text) {
  if (text.trim() === "") return undefined;
  if (field.type === "list") return text.split(",").map((s) => s.trim()).filter(Boolean);
  if (field.type === "number") return Number(text);
  if (field.type === "nodes") return parseNodes(text);
  return text;
}

// Splits an object into the form's fields and the rest (shown as JSON).
export function splitObject(kind, obj) {
  const rest = JSON.parse(JSON.stringify(obj || {}));
  for (const k of ["create_time", "update_time", ...(kind.secret || [])]) delete rest[k];
  const texts = {};
  for (const f of kind.fields) {
    texts[f.key] = f.secret ? "" : fieldText(f, rest);
    const [top, sub] = f.key.split(".");
    if (sub === undefined) delete rest[top];
    else if (rest[top]) {
      delete rest[top][sub];
      if (Object.keys(rest[top]).length === 0) delete rest[top];
    }
  }
  return { texts, rest };
}

export function joinObject(kind, texts, rest) {
  const obj = JSON.parse(JSON.stringify(rest));
  for (const f of kind.fields) {
    const v = fieldValue(f, texts[f.key] || "");
    if (v === undefined) continue;
    const [top, sub] = f.key.split(".");
    if (sub === undefined) obj[top] = v;
    else obj[top] = { ...(obj[top] || {}), [sub]: v };
  }
  return obj;
}

// The field an Admin API message names: `property "uri" validation failed: ...`.
export function fieldOfError(kind, message) {
  const m = /property "([^"]+)"/.exec(message || "");
  if (!m) return null;
  const f = kind.fields.find((f) => f.key === m[1] || f.key.split(".")[0] === m[1]);
  return f ? f.key : null;
}
