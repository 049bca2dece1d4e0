import { h } from "preact";
import htm from "htm";

export const html = htm.bind(h);
export const go = (hash) => { location.hash = hash; };
// The id in the URL: what follows /<collection>/ in the etcd key ("vault/1" for a secret).
export const idOfKey = (path, key) => {
  const at = key.indexOf(`/${path}/`);
  return at < 0 ? key : key.slice(at + path.length + 2);
};
export const pretty = (v) => JSON.stringify(v, null, 2);
export const fmtTime = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "");
