import "uplot/dist/uPlot.min.css";
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { session } from "./api.js";
import { KINDS, kindByPath } from "./kinds.js";
import { Overview } from "./live.js";
import { DetailPage, EditPage, ListPage } from "./pages.js";
import { html } from "./ui.js";

function useHash() {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const on = () => setHash(location.hash);
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return hash;
}

// #/<kind>[/<id>[/edit]] | #/<kind>/new | #/consumers/<name>/credentials/... | #/
function Page({ hash }) {
  const parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts.length === 0) return html`<${Overview} />`;
  let base = "";
  if (parts[0] === "consumers" && parts[2] === "credentials") {
    base = `/consumers/${parts[1]}`;
    parts.splice(0, 2);
  }
  const kind = base
    ? { path: "credentials", title: "Credentials", filters: [], cols: [], fields: [] }
    : kindByPath(parts[0]);
  if (!kind) return html`<p class="error">No page ${parts[0]}</p>`;
  if (kind.path === "stream_routes" && !session.stream)
    return html`<h2>Stream routes</h2><p class="notice" id="stream-off">Stream proxying is off on this
      instance (<code>apisix.proxy_mode</code> is <code>http</code>): the Admin API refuses stream routes.</p>`;
  const rest = parts.slice(1);
  // secrets: <manager>/<id>
  const id = kind.path === "secrets" && rest.length >= 2 && rest[0] !== "new" ? `${rest[0]}/${rest[1]}` : rest[0];
  const tail = kind.path === "secrets" ? rest.slice(2) : rest.slice(1);
  if (rest.length === 0) return html`<${ListPage} kind=${kind} base=${base} key=${kind.path} />`;
  if (rest[0] === "new") return html`<${EditPage} kind=${kind} base=${base} key=${"new" + kind.path} />`;
  if (tail[0] === "edit") return html`<${EditPage} kind=${kind} id=${id} base=${base} key=${"edit" + id} />`;
  return html`<${DetailPage} kind=${kind} id=${id} base=${base} key=${"d" + id} />`;
}

function App() {
  const hash = useHash();
  const active = (p) => (hash.replace(/^#\/?/, "").split("/")[0] === p ? "active" : "");
  return html`<div class="layout">
    <nav>
      <h1>Tollway</h1>
      <a href="#/" class=${active("")}>Overview</a>
      ${KINDS.map((k) => html`<a href=${"#/" + k.path} class=${active(k.path)} id=${"nav-" + k.path}>${k.title}</a>`)}
      <p class="muted">role: <b id="role">${session.role}</b></p>
      <button id="logout" onClick=${() => session.logout()}>Log out</button>
    </nav>
    <main><${Page} hash=${hash} /></main>
  </div>`;
}

export function mount(el, { key, role, stream, logout }) {
  // the bundle's CSS (uPlot's): a file of this origin, as the CSP allows
  const css = document.createElement("link");
  css.rel = "stylesheet";
  css.href = new URL("app.css", import.meta.url).href;
  document.head.append(css);
  Object.assign(session, { key, role, stream, logout });
  render(html`<${App} />`, el);
}
