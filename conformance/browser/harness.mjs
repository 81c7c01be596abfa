// Pieces of the browser test that are not about the browser: a fresh xmppd in
// a temp dir, a static HTTP server for Converse.js, the TCP client (bob), a
// deterministic PNG, and bounded waits.
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import zlib from "node:zlib";

import { client, xml } from "@xmpp/client";

export { xml };

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const STEP_TIMEOUT = Number(process.env.BROWSER_STEP_TIMEOUT_MS || 20_000);

export function withTimeout(promise, what, ms = STEP_TIMEOUT) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

export const sha256 = (buf) => createHash("sha256").update(buf).digest("hex");
export const bare = (jid) => String(jid).split("/")[0];

// ------------------------------------------------------------------ ports
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function portOpen(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    sock.once("connect", () => { sock.destroy(); resolve(true); });
    sock.once("error", () => resolve(false));
  });
}

// ------------------------------------------------------------------ xmppd
// Start a fresh xmppd: temp data dir, SQLite, c2s STARTTLS listener and one
// plain HTTP listener (WebSocket, host-meta, upload) on free loopback ports.
// A port taken by someone else between choosing and binding it is retried.
export async function startXmppd(opts) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startXmppdOnce(opts);
    } catch (e) {
      if (attempt >= 3 || !e.addrInUse) throw e;
    }
  }
}

async function startXmppdOnce({ bin, users, logFile }) {
  const tmp = mkdtempSync(path.join(os.tmpdir(), "xmppd-browser-"));
  const c2sPort = await freePort();
  let httpPort = await freePort();
  while (httpPort === c2sPort) httpPort = await freePort();
  const publicUrl = `http://localhost:${httpPort}`;
  const config = path.join(tmp, "xmppd.toml");
  writeFileSync(
    config,
    [
      'hosts = ["localhost"]',
      `data_dir = ${JSON.stringify(path.join(tmp, "data"))}`,
      `log_level = ${JSON.stringify(process.env.XMPPD_LOG_LEVEL || "debug")}`,
      "",
      "[storage]",
      `url = ${JSON.stringify(`sqlite://${path.join(tmp, "xmppd.db")}`)}`,
      "",
      "[[listeners]]",
      'address = "127.0.0.1"',
      `port = ${c2sPort}`,
      'tls = "starttls"',
      "",
      "[http]",
      `listeners = [{ address = "127.0.0.1", port = ${httpPort}, tls = false }]`,
      `public_url = ${JSON.stringify(publicUrl)}`,
      "",
      "[s2s]",
      "enabled = false",
      "",
    ].join("\n"),
  );
  const cli = (...args) => {
    const r = spawnSync(bin, ["--config", config, ...args], { encoding: "utf8", timeout: 30_000 });
    if (r.status !== 0) {
      throw new Error(`xmppd ${args.join(" ")} failed (${r.status ?? r.error}): ${r.stderr}`);
    }
    return r.stdout;
  };
  try {
    cli("check-config");
    for (const u of users) cli("user", "add", u.jid, "--password", u.password);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }

  const out = openSync(logFile, "w");
  const proc = spawn(bin, ["--config", config, "serve"], { stdio: ["ignore", out, out] });
  let exited = null;
  proc.on("exit", (code, signal) => { exited = { code, signal }; });

  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited) {
      const e = new Error(`xmppd exited during startup (${JSON.stringify(exited)}); see ${logFile}`);
      e.addrInUse = /Address already in use/.test(readFileSync(logFile, "utf8"));
      rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
    if ((await portOpen(c2sPort)) && (await portOpen(httpPort))) break;
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      rmSync(tmp, { recursive: true, force: true });
      throw new Error(`xmppd did not open ports ${c2sPort}/${httpPort} within 30 s; see ${logFile}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }

  return {
    c2sPort,
    httpPort,
    publicUrl,
    websocketUrl: `ws://127.0.0.1:${httpPort}/xmpp-websocket`,
    get exited() { return exited; },
    async stop() {
      if (!exited) {
        proc.kill("SIGTERM");
        await withTimeout(new Promise((r) => proc.once("exit", r)), "xmppd to stop", 10_000).catch(() => {
          proc.kill("SIGKILL");
        });
      }
      if (!process.env.XMPPD_KEEP_TMP) rmSync(tmp, { recursive: true, force: true });
    },
  };
}

// ------------------------------------------------------------------ static files
const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".map": "application/json",
  ".wasm": "application/wasm",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".woff": "font/woff",
  ".woff2": "font/woff2",
  ".ttf": "font/ttf",
  ".eot": "application/vnd.ms-fontobject",
  ".mp3": "audio/mpeg",
  ".ogg": "audio/ogg",
};

// Serve `html` at / and the Converse.js dist folder at /dist/ (and /) on 127.0.0.1.
export function startStatic({ distDir, html }) {
  const root = path.resolve(distDir);
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    if (url.pathname === "/favicon.ico") {
      res.writeHead(204);
      res.end();
      return;
    }
    if (url.pathname === "/" || url.pathname === "/index.html") {
      res.writeHead(200, { "content-type": TYPES[".html"], "cache-control": "no-store" });
      res.end(html);
      return;
    }
    {
      // /dist/X, and /X too: libsignal's curve25519_compiled.wasm is fetched
      // relative to the page, not to assets_path.
      const rel = url.pathname.startsWith("/dist/") ? url.pathname.slice("/dist".length) : url.pathname;
      const file = path.resolve(root, "." + decodeURIComponent(rel));
      if (file.startsWith(root + path.sep)) {
        let st = null;
        try { st = statSync(file); } catch { /* 404 below */ }
        if (st?.isFile()) {
          res.writeHead(200, {
            "content-type": TYPES[path.extname(file)] || "application/octet-stream",
            "content-length": st.size,
          });
          createReadStream(file).pipe(res);
          return;
        }
      }
    }
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found\n");
  });
  return new Promise((resolve, reject) => {
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      resolve({
        url: `http://127.0.0.1:${server.address().port}/`,
        close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(() => r()); }),
      });
    });
  });
}

// ------------------------------------------------------------------ TCP client
// @xmpp/client over STARTTLS; every received stanza is kept in `inbox`.
export function makeTcpClient({ port, domain, username, password, resource }) {
  const xmpp = client({ service: `xmpp://127.0.0.1:${port}`, domain, resource, username, password, timeout: STEP_TIMEOUT });
  xmpp.reconnect.stop();
  // Acknowledge roster pushes (RFC 6121 §2.1.6); the push is still recorded.
  xmpp.iqCallee.set("jabber:iq:roster", "query", () => true);
  xmpp.inbox = [];
  xmpp.waiters = [];
  xmpp.on("error", () => {});
  xmpp.on("stanza", (el) => {
    xmpp.inbox.push(el);
    for (const w of [...xmpp.waiters]) w();
  });
  return xmpp;
}

// Wait for (and consume) the first received stanza matching pred.
export function waitStanza(xmpp, pred, what, ms = STEP_TIMEOUT) {
  const find = () => {
    const i = xmpp.inbox.findIndex((el) => !el.consumed && pred(el));
    if (i < 0) return null;
    xmpp.inbox[i].consumed = true;
    return xmpp.inbox[i];
  };
  const hit = find();
  if (hit) return Promise.resolve(hit);
  let waiter;
  const p = new Promise((resolve) => {
    waiter = () => {
      const el = find();
      if (el) resolve(el);
    };
    xmpp.waiters.push(waiter);
  });
  return withTimeout(p, what, ms).finally(() => {
    xmpp.waiters = xmpp.waiters.filter((w) => w !== waiter);
  });
}

// ------------------------------------------------------------------ PNG
function crc32(buf) {
  let c = ~0;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}

// A valid RGB PNG of `size`×`size` pixels: a colour gradient with
// deterministic noise (so it does not compress to nothing: a few KB).
export function makePng(size = 48, seed = 7395) {
  let s = seed >>> 0;
  const rnd = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 24);
  const raw = Buffer.alloc(size * (1 + size * 3));
  let o = 0;
  for (let y = 0; y < size; y++) {
    raw[o++] = 0; // filter: none
    for (let x = 0; x < size; x++) {
      raw[o++] = (x * 255) / size ^ (rnd() & 0x3f);
      raw[o++] = (y * 255) / size ^ (rnd() & 0x3f);
      raw[o++] = 128 ^ (rnd() & 0x7f);
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0);
  ihdr.writeUInt32BE(size, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", zlib.deflateSync(raw, { level: 9 })),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}
