// The Admin API, with the key in the X-API-KEY header (never in a URL, no cookies sent).
export const session = { key: "", role: "viewer", stream: false, logout: () => {} };

export async function call(method, url, body) {
  const headers = { "X-API-KEY": session.key };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let r;
  try {
    r = await fetch(url, {
      method,
      headers,
      credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    return { status: 0, ok: false, data: { error_msg: `network error: ${e.message}` } };
  }
  const text = await r.text();
  let data;
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { error_msg: text.trim() }; // e.g. APISIX's plain-text page_size answer
  }
  if (r.status === 401 && data.description === "wrong apikey") session.logout();
  return { status: r.status, ok: r.ok, data };
}

export const admin = (method, path, body) => call(method, "/apisix/admin" + path, body);
export const live = () => call("GET", "/ui/api/live");
