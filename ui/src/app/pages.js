import { useEffect, useState } from "preact/hooks";
import { admin, session } from "./api.js";
import { fieldOfError, joinObject, splitObject } from "./kinds.js";
import { NodeHealth, RouteTraffic } from "./live.js";
import { fmtTime, go, html, idOfKey, pretty } from "./ui.js";

const PAGE_SIZE = 10;

export function ListPage({ kind, base = "", title }) {
  const [query, setQuery] = useState({});
  const [draft, setDraft] = useState({});
  const [page, setPage] = useState(1);
  const [res, setRes] = useState(null);
  useEffect(() => {
    const q = new URLSearchParams({ page: String(page), page_size: String(PAGE_SIZE) });
    for (const [k, v] of Object.entries(query)) if (v) q.set(k, v);
    let alive = true;
    admin("GET", `${base}/${kind.path}?${q}`).then((r) => alive && setRes(r));
    return () => { alive = false; };
  }, [kind.path, base, page, query]);
  const items = res && res.ok ? res.data.list || [] : [];
  const total = res && res.ok ? res.data.total || 0 : 0;
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
  const here = `#/${base ? base.slice(1) + "/" : ""}${kind.path}`;
  return html`<section class="list" data-kind=${kind.path}>
    <header class="bar">
      <h2>${title || kind.title}</h2>
      ${session.role === "admin" && html`<a class="button" id="create" href=${`${here}/new`}>Create</a>`}
    </header>
    ${kind.filters.length > 0 && html`<form class="filters" onSubmit=${(e) => { e.preventDefault(); setPage(1); setQuery({ ...draft }); }}>
      ${kind.filters.map((f) => html`<label>${f} <input name=${"filter-" + f} value=${draft[f] || ""}
        placeholder=${f === "filter" ? "service_id=1&upstream_id=2" : ""}
        onInput=${(e) => setDraft({ ...draft, [f]: e.target.value })} /></label>`)}
      <button type="submit" id="search">Search</button>
    </form>`}
    ${res && !res.ok && html`<p class="error">${res.data.error_msg || `HTTP ${res.status}`}</p>`}
    ${res === null ? html`<p class="muted">Loading…</p>` : html`<table class="items">
      <thead><tr><th>id</th>${kind.cols.map(([c]) => html`<th>${c}</th>`)}<th>updated</th></tr></thead>
      <tbody>${items.map((it) => {
        const id = idOfKey(kind.path, it.key);
        const v = it.value || {};
        return html`<tr data-id=${id}>
          <td><a href=${`${here}/${encodeURIComponent(id)}`}>${id}</a></td>
          ${kind.cols.map(([, f]) => html`<td>${String(f(v) ?? "")}</td>`)}
          <td>${fmtTime(v.update_time)}</td></tr>`;
      })}</tbody></table>
      <p class="pager"><span id="total">${total}</span> item${total === 1 ? "" : "s"} ·
        <button disabled=${page <= 1} onClick=${() => setPage(page - 1)}>‹ prev</button>
        page ${page} of ${pages}
        <button disabled=${page >= pages} onClick=${() => setPage(page + 1)}>next ›</button></p>`}
  </section>`;
}

export function DetailPage({ kind, id, base = "" }) {
  const [res, setRes] = useState(null);
  const [msg, setMsg] = useState(null);
  const [confirming, setConfirming] = useState(false);
  const url = `${base}/${kind.path}/${id}`;
  const here = `#/${base ? base.slice(1) + "/" : ""}${kind.path}`;
  useEffect(() => { admin("GET", url).then(setRes); }, [url]);
  if (res === null) return html`<p class="muted">Loading…</p>`;
  if (!res.ok) return html`<p class="error">${res.data.error_msg || `HTTP ${res.status}`}</p>`;
  const value = { ...res.data.value };
  for (const k of kind.secret || []) delete value[k];
  const remove = async () => {
    const r = await admin("DELETE", url);
    if (r.ok) go(here);
    else { setConfirming(false); setMsg(r.data.error_msg || `HTTP ${r.status}`); }
  };
  return html`<section class="detail" data-kind=${kind.path}>
    <header class="bar"><h2>${kind.title}: <span id="item-id">${id}</span></h2>
      ${session.role === "admin" && html`<span>
        <a class="button" id="edit" href=${`${here}/${encodeURIComponent(id)}/edit`}>Edit</a>
        ${confirming
          ? html`<button class="danger" id="confirm-delete" onClick=${remove}>Really delete</button>
                 <button onClick=${() => setConfirming(false)}>Keep</button>`
          : html`<button class="danger" id="delete" onClick=${() => setConfirming(true)}>Delete</button>`}
      </span>`}
    </header>
    ${msg && html`<p class="error" id="delete-error" role="alert">${msg}</p>`}
    <p class="muted">created ${fmtTime(value.create_time)} · updated ${fmtTime(value.update_time)} · modifiedIndex ${res.data.modifiedIndex}</p>
    ${kind.path === "upstreams" && html`<${NodeHealth} name=${`/upstreams/${id}`} nodes=${value.nodes} />`}
    ${kind.path === "routes" && html`<${NodeHealth} name=${`/routes/${id}`} nodes=${value.upstream?.nodes} /><${RouteTraffic} route=${id} />`}
    <pre class="json" id="item-json">${pretty(value)}</pre>
    ${kind.path === "consumers" && html`<${Credentials} username=${id} />`}
  </section>`;
}

function Credentials({ username }) {
  const kind = { path: "credentials", title: "Credentials", filters: [], cols: [["plugins", (v) => Object.keys(v.plugins || {}).join(", ")], ["desc", (v) => v.desc]], fields: [] };
  return html`<${ListPage} kind=${kind} base=${`/consumers/${username}`} title=${`Credentials of ${username}`} />`;
}

export function EditPage({ kind, id, base = "" }) {
  const creating = id === undefined;
  const here = `#/${base ? base.slice(1) + "/" : ""}${kind.path}`;
  const [state, setState] = useState(creating ? { texts: {}, rest: "{}", newId: "" } : null);
  const [errors, setErrors] = useState({});
  const [saved, setSaved] = useState("");
  useEffect(() => {
    if (creating) return;
    admin("GET", `${base}/${kind.path}/${id}`).then((r) => {
      if (!r.ok) { setErrors({ _: r.data.error_msg || `HTTP ${r.status}` }); return; }
      const { texts, rest } = splitObject(kind, r.data.value);
      delete rest.id;
      setState({ texts, rest: pretty(rest), newId: id });
    });
  }, [kind.path, id]);
  if (state === null) return errors._ ? html`<p class="error">${errors._}</p>` : html`<p class="muted">Loading…</p>`;
  const readOnly = session.role !== "admin";

  const save = async (ev) => {
    ev.preventDefault();
    setSaved("");
    let rest;
    try {
      rest = JSON.parse(state.rest || "{}");
    } catch (e) {
      setErrors({ json: `invalid JSON: ${e.message}` });
      return;
    }
    const obj = joinObject(kind, state.texts, rest);
    const itemId = creating ? state.newId.trim() : id;
    let method = itemId ? "PUT" : "POST";
    let path = itemId ? `${base}/${kind.path}/${itemId}` : `${base}/${kind.path}`;
    if (kind.idField) { method = "PUT"; path = `${base}/${kind.path}`; obj[kind.idField] = itemId || obj[kind.idField]; }
    if (kind.secret && !creating && !obj.key) method = "PATCH"; // keep the stored private key
    // Checked by the Admin API first (?dry_run=true): nothing is written unless all of it is valid.
    const check = await admin(method, `${path}?dry_run=true`, obj);
    const bad = check.ok ? null : check;
    const done = bad || (await admin(method, path, obj));
    if (!done.ok) {
      const d = done.data;
      const message = (d.error_msg || `HTTP ${done.status}`) + (d.description ? `: ${d.description}` : "");
      const field = fieldOfError(kind, message);
      setErrors(field ? { [field]: message } : { json: message });
      return;
    }
    setErrors({});
    const newId = idOfKey(kind.path, done.data.key || "");
    setSaved("saved");
    go(`${here}/${encodeURIComponent(newId || itemId)}`);
  };
  const set = (k, v) => setState({ ...state, texts: { ...state.texts, [k]: v } });
  return html`<section class="edit" data-kind=${kind.path}>
    <h2>${creating ? `New ${kind.title.toLowerCase()}` : `Edit ${kind.path} ${id}`}</h2>
    ${readOnly && html`<p class="notice" id="read-only">Read-only: the viewer role cannot save.</p>`}
    <form id="edit-form" onSubmit=${save}>
      ${creating && !kind.idField && html`<div class="field"><label for="f-id">${kind.idLabel || "id"} (empty: generated)</label>
        <input id="f-id" value=${state.newId} onInput=${(e) => setState({ ...state, newId: e.target.value })} /></div>`}
      ${kind.fields.map((f) => {
        if (f.idOnly && !creating) return null;
        const fid = "f-" + f.key.replace(/\./g, "-");
        const value = f.idOnly ? state.newId : state.texts[f.key] || "";
        const onInput = (e) => (f.idOnly ? setState({ ...state, newId: e.target.value }) : set(f.key, e.target.value));
        const input = f.type === "area" || f.type === "nodes"
          ? html`<textarea id=${fid} rows=${f.type === "nodes" ? 3 : 6} value=${value} onInput=${onInput}></textarea>`
          : f.type === "select"
          ? html`<select id=${fid} value=${value} onChange=${onInput}><option value="">(default)</option>${f.options.map((o) => html`<option value=${o}>${o}</option>`)}</select>`
          : html`<input id=${fid} value=${value} onInput=${onInput} />`;
        return html`<div class="field" data-field=${f.key}><label for=${fid}>${f.label}</label>${input}
          ${errors[f.key] && html`<p class="error field-error" id=${fid + "-error"} role="alert">${errors[f.key]}</p>`}</div>`;
      })}
      <div class="field" data-field="json"><label for="f-json">Other fields (JSON, as the Admin API takes them)</label>
        <textarea id="f-json" class="code" rows="10" value=${state.rest} onInput=${(e) => setState({ ...state, rest: e.target.value })}></textarea>
        ${errors.json && html`<p class="error field-error" id="f-json-error" role="alert">${errors.json}</p>`}</div>
      <p><button type="submit" id="save" disabled=${readOnly}>Save</button> <a href=${here}>Cancel</a> <span id="saved">${saved}</span></p>
    </form>
  </section>`;
}
