// The login page (public). The key is kept in this tab's sessionStorage and sent as the
// X-API-KEY header; /ui/session checks it and sets the HttpOnly cookie that lets this page load
// the application's files. The key never goes into a URL.
const KEY = "tollway.key";

async function openSession(key) {
  const r = await fetch("session", { method: "POST", headers: { "X-API-KEY": key } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.description || body.error_msg || `HTTP ${r.status}`);
  return body;
}

async function start(key) {
  const info = await openSession(key);
  sessionStorage.setItem(KEY, key);
  document.getElementById("login-page").hidden = true;
  const app = await import("./app/app.js");
  app.mount(document.getElementById("app"), { key, role: info.role, stream: info.stream, logout });
}

async function logout() {
  sessionStorage.removeItem(KEY);
  await fetch("session", { method: "DELETE" }).catch(() => {});
  location.hash = "";
  location.reload();
}

function showLogin(message) {
  document.getElementById("login-page").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = document.getElementById("key");
  start(input.value)
    .then(() => { input.value = ""; })
    .catch((e) => showLogin(`Login failed: ${e.message}`));
});

const saved = sessionStorage.getItem(KEY);
if (saved) {
  start(saved).catch(() => { sessionStorage.removeItem(KEY); showLogin(""); });
} else {
  showLogin("");
}
