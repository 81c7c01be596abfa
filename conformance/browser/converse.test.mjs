// Real-browser interop: Converse.js (npm) in Debian's headless Chromium,
// driven by playwright-core, against a fresh xmppd.
//
//   alice: Converse.js over XMPP-over-WebSocket (RFC 7395) on xmppd's HTTP listener
//   bob:   @xmpp/client over TCP with STARTTLS
//
// 1. alice logs in from the browser (the page also reads XEP-0156 host-meta);
//    she adds bob in Converse's UI, bob (TCP) approves and asks back, Converse
//    approves: subscription "both" on both sides, bob sees alice's presence
//    from the WebSocket session and Converse shows bob online;
// 2. bob → alice appears in Converse's DOM; alice types a reply, bob gets it;
// 3. alice sends a PNG through Converse's upload button (XEP-0363); bob gets a
//    message with its URL, downloads it over HTTP and compares SHA-256; the
//    browser displays the same image in the chat.
//
// Run with ./run.sh (installs Chromium and node_modules when missing). Artifacts
// of the last run (all git-ignored) beside this file: last-run.png (screenshot),
// last-run-ws.log (every WebSocket frame), last-run-console.log (Converse's
// debug log), last-run-bob.log (bob's stanzas), last-run-xmppd.log (server log).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, appendFileSync } from "node:fs";
import path from "node:path";

import { chromium } from "playwright-core";

import {
  HERE, STEP_TIMEOUT, bare, makePng, makeTcpClient, sha256, startStatic, startXmppd, waitStanza,
  withTimeout, xml,
} from "./harness.mjs";

process.env.NODE_TLS_REJECT_UNAUTHORIZED ??= "0"; // xmppd's self-signed certificate (bob over STARTTLS)

const XMPPD_BIN = process.env.XMPPD_BIN || path.resolve(HERE, "../../target/debug/xmppd");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const ALICE = { jid: "alice@localhost", password: "alice-pw-Ünï" };
const BOB = { jid: "bob@localhost", password: "bob-pw" };
const ART = {
  screenshot: path.join(HERE, "last-run.png"),
  ws: path.join(HERE, "last-run-ws.log"),
  console: path.join(HERE, "last-run-console.log"),
  xmppd: path.join(HERE, "last-run-xmppd.log"),
  bob: path.join(HERE, "last-run-bob.log"),
};

const t0 = Date.now();
const stamp = () => `[${((Date.now() - t0) / 1000).toFixed(3)}]`;

// ------------------------------------------------------------------ state
let server, web, browser, page, bob;
const frames = []; // { dir: "C2S"|"S2C", text }
let broken = null; // first failed step: later steps are skipped

function converseHtml({ websocketUrl }) {
  const settings = {
    websocket_url: websocketUrl,
    discover_connection_methods: false,
    authentication: "login",
    auto_login: true,
    jid: ALICE.jid,
    password: ALICE.password,
    view_mode: "fullscreen",
    assets_path: "/dist/",
    loglevel: "debug",
    persistent_store: "sessionStorage",
    auto_reconnect: false,
    play_sounds: false,
    show_images_inline: true,
    i18n: "en",
  };
  return `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>xmppd × Converse.js</title>
  <link rel="stylesheet" href="/dist/converse.min.css">
</head>
<body class="converse-fullscreen">
  <script type="module">
    import converse from "/dist/converse.min.js";
    window.__xmppdTestSettings = ${JSON.stringify(settings)};
    converse.initialize(window.__xmppdTestSettings).catch((e) => console.error("converse.initialize failed", e));
  </script>
</body>
</html>
`;
}

// The IQs Converse sent that got an error or no answer, from the frame log.
function iqReport() {
  const sent = new Map();
  const errors = [];
  for (const f of frames) {
    for (const m of f.text.matchAll(/<iq\b[^>]*>/g)) {
      const tag = m[0];
      const id = /\bid=["']([^"']+)["']/.exec(tag)?.[1];
      const type = /\btype=["']([^"']+)["']/.exec(tag)?.[1];
      if (!id) continue;
      if (f.dir === "C2S" && (type === "get" || type === "set")) sent.set(id, f.text);
      if (f.dir === "S2C" && (type === "result" || type === "error")) {
        if (type === "error") errors.push({ request: sent.get(id), reply: f.text });
        sent.delete(id);
      }
    }
  }
  return { unanswered: [...sent.values()], errors };
}

function step(name, fn) {
  it(name, async (t) => {
    if (broken) {
      t.skip(`an earlier step failed: ${broken}`);
      return;
    }
    try {
      await fn(t);
    } catch (e) {
      broken = name;
      if (server?.exited) e.message += ` (xmppd exited: ${JSON.stringify(server.exited)}; see ${ART.xmppd})`;
      throw e;
    }
  });
}

const isMessageFrom = (from, pred = () => true) => (el) =>
  el.is("message") && bare(el.attrs.from) === from && el.attrs.type !== "error" && pred(el);

// ------------------------------------------------------------------ setup
describe("Converse.js in headless Chromium against xmppd", { timeout: 240_000 }, () => {
  before(async () => {
    writeFileSync(ART.ws, "");
    writeFileSync(ART.console, "");
    writeFileSync(ART.bob, "");
    server = await startXmppd({ bin: XMPPD_BIN, users: [ALICE, BOB], logFile: ART.xmppd });
    web = await startStatic({
      distDir: path.join(HERE, "node_modules/converse.js/dist"),
      html: converseHtml(server),
    });
    browser = await withTimeout(
      chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: [
          "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
        ],
      }),
      "Chromium to start",
      60_000,
    );
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    // Loopback only: whatever the page asks of other hosts (Converse's login
    // page shows sponsor logos from its website) is refused here, not looked up.
    await context.route(
      (url) => !["127.0.0.1", "localhost", "[::1]"].includes(url.hostname),
      (route) => {
        appendFileSync(ART.console, `${stamp()} BLOCKED (not loopback): ${route.request().url()}\n`);
        return route.abort("blockedbyclient");
      },
    );
    page = await context.newPage();
    page.setDefaultTimeout(STEP_TIMEOUT);
    page.on("console", (m) => appendFileSync(ART.console, `${stamp()} ${m.type()}: ${m.text()}\n`));
    page.on("pageerror", (e) => appendFileSync(ART.console, `${stamp()} PAGEERROR: ${e.stack || e}\n`));
    page.on("response", (r) => {
      if (r.status() >= 400) appendFileSync(ART.console, `${stamp()} HTTP ${r.status()}: ${r.request().method()} ${r.url()}\n`);
    });
    page.on("requestfailed", (r) =>
      appendFileSync(ART.console, `${stamp()} REQUESTFAILED: ${r.method()} ${r.url()} ${r.failure()?.errorText}\n`),
    );
    page.on("websocket", (ws) => {
      appendFileSync(ART.ws, `${stamp()} OPEN ${ws.url()}\n`);
      const rec = (dir) => (f) => {
        const text = typeof f.payload === "string" ? f.payload : f.payload.toString("utf8");
        frames.push({ dir, text });
        appendFileSync(ART.ws, `${stamp()} ${dir} ${text}\n`);
      };
      ws.on("framesent", rec("C2S"));
      ws.on("framereceived", rec("S2C"));
      ws.on("socketerror", (e) => appendFileSync(ART.ws, `${stamp()} SOCKETERROR ${e}\n`));
      ws.on("close", () => appendFileSync(ART.ws, `${stamp()} CLOSE\n`));
    });

    bob = makeTcpClient({
      port: server.c2sPort, domain: "localhost", username: "bob", password: BOB.password, resource: "tcp",
    });
    bob.on("stanza", (el) => appendFileSync(ART.bob, `${stamp()} S2C ${el}\n`));
    bob.on("send", (el) => appendFileSync(ART.bob, `${stamp()} C2S ${el}\n`));
    await withTimeout(bob.start(), "bob's login over TCP/STARTTLS");
    // Fetch the roster: only "interested" resources get roster pushes (RFC 6121 §2.1.6).
    await withTimeout(bob.iqCaller.get(xml("query", { xmlns: "jabber:iq:roster" })), "bob's roster");
    await bob.send(xml("presence", {}, xml("status", {}, "bob over TCP")));
  });

  after(async () => {
    if (page) {
      await page.screenshot({ path: ART.screenshot, fullPage: false }).catch((e) => console.error("screenshot:", e));
    }
    const { unanswered, errors } = iqReport();
    const notes = [];
    for (const e of errors) notes.push(`IQ error:\n  C2S ${e.request ?? "(request not seen)"}\n  S2C ${e.reply}`);
    for (const u of unanswered) notes.push(`IQ never answered:\n  C2S ${u}`);
    appendFileSync(ART.ws, `\n==== IQ summary ====\n${notes.join("\n") || "every IQ answered with a result"}\n`);
    if (notes.length) console.log(`${notes.length} IQ(s) from Converse got an error or no answer; see ${ART.ws}`);
    await Promise.allSettled([
      bob?.status === "online" ? withTimeout(bob.stop(), "bob to stop", 5_000) : null,
      browser ? withTimeout(browser.close(), "Chromium to close", 10_000) : null,
    ]);
    await web?.close();
    await server?.stop();
  });

  // ---------------------------------------------------------------- 1
  step("1. Converse logs in over WebSocket; alice adds bob (TCP) in the UI; subscription both ways; presence both ways", async () => {
    await page.goto(web.url);
    // Logged in: the controlbox shows the roster (it is only rendered once connected).
    await page.locator("converse-roster").waitFor({ state: "visible" });
    assert.ok(frames.some((f) => f.dir === "S2C" && /<success\b[^>]*urn:ietf:params:xml:ns:xmpp-sasl/.test(f.text)),
      "SASL success seen on the WebSocket");
    assert.ok(frames.some((f) => f.dir === "S2C" && /<jid>alice@localhost\/[^<]+<\/jid>/.test(f.text)),
      "resource bound on the WebSocket");

    // XEP-0156 as a web client sees it: host-meta fetched cross-origin (CORS)
    // from the page names the WebSocket endpoint on the public URL.
    const hostMeta = await page.evaluate(async (u) => {
      const r = await fetch(u);
      return { status: r.status, text: await r.text() };
    }, `${server.publicUrl}/.well-known/host-meta`);
    assert.equal(hostMeta.status, 200, "host-meta");
    const link = /<Link\b[^>]*rel=['"]urn:xmpp:alt-connections:websocket['"][^>]*>/.exec(hostMeta.text)?.[0] ?? "";
    assert.match(link, new RegExp(`href=['"]ws://localhost:${server.httpPort}/xmpp-websocket['"]`), hostMeta.text);

    // alice adds bob from the roster menu: "Add a contact" → modal → Add.
    const rosterMenu = page.locator("converse-roster converse-dropdown").filter({ has: page.locator("a.add-contact") });
    await rosterMenu.locator(".dropdown-toggle").click();
    await rosterMenu.locator("a.add-contact").click();
    const modal = page.locator("converse-add-contact-modal");
    await modal.locator("input[name=jid]").fill(BOB.jid);
    await modal.locator("input[name=name]").fill("Bob (TCP)");
    await modal.locator("form.add-xmpp-contact button[type=submit]").click();

    // bob (TCP) gets the request from the WebSocket session, approves it and asks back.
    const sub = await waitStanza(
      bob,
      (el) => el.is("presence") && el.attrs.type === "subscribe" && bare(el.attrs.from) === ALICE.jid,
      "alice's subscription request at bob",
    );
    assert.equal(sub.attrs.from, ALICE.jid, "subscription requests come from the bare JID (RFC 6121 §3.1.2)");
    await bob.send(xml("presence", { to: ALICE.jid, type: "subscribed" }));
    await bob.send(xml("presence", { to: ALICE.jid, type: "subscribe" }));

    // Converse approves bob's request by itself (alice asked first); the
    // server then routes alice's presence (from the WebSocket session) to bob.
    const push = await waitStanza(
      bob,
      (el) => el.is("iq") && el.attrs.type === "set" &&
        el.getChild("query", "jabber:iq:roster")?.getChild("item")?.attrs.subscription === "both",
      "roster push subscription=both at bob",
    );
    assert.equal(push.getChild("query").getChild("item").attrs.jid, ALICE.jid);
    const pres = await waitStanza(
      bob,
      (el) => el.is("presence") && bare(el.attrs.from) === ALICE.jid && !el.attrs.type,
      "alice's available presence at bob",
    );
    assert.match(pres.attrs.from, /^alice@localhost\/.+/, "presence from alice's full JID");
    // And alice's roster shows bob online (his presence reached the browser).
    await page
      .locator(`converse-roster-contact a.open-chat[data-jid="${BOB.jid}"] .contact-name--online`)
      .waitFor({ state: "visible" });
  });

  // ---------------------------------------------------------------- 2
  step("2. bob's message appears in Converse; alice's reply typed in Converse reaches bob", async () => {
    const hello = `Hello alice, bob here over TCP <&> ${Date.now()}`;
    await bob.send(xml("message", { to: ALICE.jid, type: "chat", id: "bob-hello" }, xml("body", {}, hello)));

    await page.locator(`converse-roster-contact a.open-chat[data-jid="${BOB.jid}"]`).click();
    const chatView = page.locator(`converse-chat[jid="${BOB.jid}"]`);
    await chatView.locator(".chat-msg__text", { hasText: hello }).waitFor({ state: "visible" });

    const reply = `Hi bob! Alice from Chromium — ünïcödé ✓ ${Date.now()}`;
    const textarea = chatView.locator("textarea.chat-textarea");
    await textarea.fill(reply);
    await textarea.press("Enter");
    const got = await waitStanza(bob, isMessageFrom(ALICE.jid, (el) => el.getChildText("body") === reply),
      "alice's reply at bob");
    assert.equal(got.attrs.type, "chat");
    assert.match(got.attrs.from, /^alice@localhost\/.+/);
    await chatView.locator(".chat-msg__text", { hasText: reply }).waitFor({ state: "visible" });
  });

  // ---------------------------------------------------------------- 3
  step("3. alice sends a PNG through Converse's upload; bob downloads it intact; the browser shows it", async () => {
    const png = makePng();
    const digest = sha256(png);
    const chatView = page.locator(`converse-chat[jid="${BOB.jid}"]`);
    const input = chatView.locator("converse-chat-toolbar input.fileupload");
    await input.waitFor({ state: "attached" }); // present only when the server offers XEP-0363
    await input.setInputFiles({ name: "xmppd-upload.png", mimeType: "image/png", buffer: png });

    const msg = await waitStanza(
      bob,
      isMessageFrom(ALICE.jid, (el) => /\/upload\//.test(el.getChildText("body") || "") ||
        !!el.getChild("x", "jabber:x:oob")),
      "alice's file message at bob",
    );
    const oob = msg.getChild("x", "jabber:x:oob")?.getChildText("url");
    const body = (msg.getChildText("body") || "").trim();
    const url = oob || body;
    assert.ok(url.startsWith(`${server.publicUrl}/upload/`), `URL on the public HTTP listener: ${url}`);
    if (oob) assert.equal(body, oob, "body carries the same URL as XEP-0066 oob");
    assert.ok(url.endsWith("/xmppd-upload.png"), `file name kept in the URL: ${url}`);

    const res = await withTimeout(fetch(url), `GET ${url}`);
    assert.equal(res.status, 200, `GET ${url}`);
    const got = Buffer.from(await withTimeout(res.arrayBuffer(), `body of ${url}`));
    assert.equal(got.length, png.length, "downloaded size");
    assert.equal(sha256(got), digest, "downloaded bytes are the uploaded bytes (SHA-256)");
    assert.match(res.headers.get("content-type") || "", /^image\/png/);

    // The sender's own chat shows the image, loaded by the browser from xmppd.
    const img = chatView.locator(`img.chat-image[src="${url}"]`);
    await img.waitFor({ state: "visible" });
    await page.waitForFunction((el) => el.complete && el.naturalWidth > 0, await img.elementHandle(), {
      timeout: STEP_TIMEOUT,
    });
    assert.equal(await img.evaluate((el) => el.naturalWidth), 48, "image decoded by Chromium");
  });
});
