// `make ui`: bundles the dashboard's sources (src/) into the package's assets
// (../src/tollway/admin/ui_assets), which are committed so pip install and make run need no Node.
import { build } from "esbuild";
import { cpSync, mkdirSync, rmSync } from "node:fs";

const out = new URL("../src/tollway/admin/ui_assets/", import.meta.url).pathname;
rmSync(out, { recursive: true, force: true });
mkdirSync(out + "app", { recursive: true });
const common = { bundle: true, minify: true, format: "esm", target: "es2020", legalComments: "none" };
// The login page's script: public, no dependencies; it imports the application after a login.
await build({ ...common, entryPoints: ["src/login.js"], outfile: out + "login.js", external: ["./app/app.js"] });
// The application (Preact + htm + uPlot and uPlot's CSS): served only with a session.
await build({ ...common, entryPoints: ["src/app/main.js"], outfile: out + "app/app.js" });
for (const f of ["index.html", "style.css", "favicon.svg"]) cpSync("src/" + f, out + f);
