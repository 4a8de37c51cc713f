// Builds the console into server/console/dist, which the gateway embeds:
// one hashed script, one hashed stylesheet, a hashed icon and index.html
// naming them. The output depends only on the sources and the pinned
// esbuild, so CI rebuilds it and fails on any difference from what is
// committed.
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const web = dirname(fileURLToPath(import.meta.url));
const out = join(web, "..", "server", "console", "dist");

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

const result = await esbuild.build({
  entryPoints: [join(web, "src", "main.ts")],
  outdir: out,
  entryNames: "[name]-[hash]",
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2022", "chrome109", "firefox115", "safari16"],
  platform: "browser",
  legalComments: "none",
  charset: "utf8",
  metafile: true,
  logLevel: "warning",
});

const names = {};
for (const [file, meta] of Object.entries(result.metafile.outputs)) {
  if (meta.entryPoint && file.endsWith(".js")) {
    names["main.js"] = basename(file);
    if (meta.cssBundle) names["main.css"] = basename(meta.cssBundle);
  }
}
if (!names["main.js"] || !names["main.css"]) {
  throw new Error(`esbuild did not produce a script and a stylesheet: ${JSON.stringify(Object.keys(result.metafile.outputs))}`);
}

const icon = readFileSync(join(web, "favicon.svg"));
names["favicon.svg"] = `favicon-${createHash("sha256").update(icon).digest("hex").slice(0, 12)}.svg`;
writeFileSync(join(out, names["favicon.svg"]), icon);

let html = readFileSync(join(web, "index.html"), "utf8");
html = html.replace(/\{\{(main\.js|main\.css|favicon\.svg)\}\}/g, (_, key) => names[key]);
writeFileSync(join(out, "index.html"), html);

for (const name of Object.values(names)) console.log(relative(process.cwd(), join(out, name)));
