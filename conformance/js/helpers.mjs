// Shared helpers for the @xmpp/client scenarios. The server and accounts come
// from the environment set by `python harness.py run -- node --test js/`.
import { client, xml } from "@xmpp/client";

export { xml };

export const TIMEOUT = 10_000;

function required(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run through 'python harness.py run -- node --test js/'`);
  return v;
}

export const env = {
  host: process.env.XMPP_HOST || "127.0.0.1",
  domain: process.env.XMPP_DOMAIN || "localhost",
  get starttlsPort() { return Number(required("XMPP_STARTTLS_PORT")); },
  get tlsPort() { return Number(process.env.XMPP_TLS_PORT || 0); },
  get accounts() { return JSON.parse(required("XMPP_ACCOUNTS")); },
};

// Each test file takes its own accounts so files can run in parallel.
export function accounts(offset, n) {
  const all = env.accounts;
  if (all.length < offset + n) throw new Error(`need ${offset + n} accounts, have ${all.length}`);
  return all.slice(offset, offset + n);
}

export function withTimeout(promise, what, ms = TIMEOUT) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// Build a client; it records every stanza it receives in `inbox`.
export function makeClient(account, { resource, direct = false, mechanism = "SCRAM-SHA-1", password } = {}) {
  const service = direct
    ? `xmpps://${env.host}:${env.tlsPort}`
    : `xmpp://${env.host}:${env.starttlsPort}`;
  const used = { mechanism: null };
  const xmpp = client({
    service,
    domain: env.domain,
    resource,
    timeout: TIMEOUT,
    // Force the SASL mechanism instead of the library's first choice.
    credentials: async (authenticate, mechanisms) => {
      used.offered = mechanisms;
      if (!mechanisms.includes(mechanism)) {
        throw new Error(`server did not offer ${mechanism}; offered ${mechanisms}`);
      }
      used.mechanism = mechanism;
      await authenticate({ username: account.localpart, password: password ?? account.password }, mechanism);
    },
  });
  xmpp.reconnect.stop(); // never reconnect behind the test's back
  // Acknowledge roster pushes as RFC 6121 §2.1.6 asks (the stanza itself is
  // still recorded in the inbox below).
  xmpp.iqCallee.set("jabber:iq:roster", "query", () => true);
  xmpp.used = used;
  xmpp.inbox = [];
  xmpp.waiters = [];
  xmpp.on("error", () => {}); // errors surface through start()/waits
  xmpp.on("stanza", (el) => {
    xmpp.inbox.push(el);
    for (const w of [...xmpp.waiters]) w();
  });
  return xmpp;
}

// Wait for (and consume) the first received stanza matching pred.
export function waitStanza(xmpp, pred, what = "stanza", ms = TIMEOUT) {
  const find = () => {
    const i = xmpp.inbox.findIndex((el) => !el.consumed && pred(el));
    if (i >= 0) {
      xmpp.inbox[i].consumed = true;
      return xmpp.inbox[i];
    }
    return null;
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

export async function online(account, opts = {}) {
  const xmpp = makeClient(account, opts);
  await startOnline(xmpp, `login of ${account.jid}`);
  return xmpp;
}

// xmpp.start(), robust to a race in @xmpp/client 0.14: it listens for the
// server's stream header only once its own header write has completed, so over
// direct TLS a fast server's header can arrive first and be missed. With RFC
// 6120 SASL the post-auth restart hid this; SASL2 has no restart, so start()
// would wait for its timeout although the session is online. Wait for the
// 'online' event too (errors still reject through start()).
export async function startOnline(xmpp, what) {
  const started = xmpp.start();
  started.catch(() => {});
  const isOnline = new Promise((resolve) => xmpp.once("online", resolve));
  await withTimeout(Promise.race([started, isOnline]), what);
}

export async function stopAll(...clients) {
  await Promise.allSettled(
    clients.filter(Boolean).map((c) => (c.status === "online" ? withTimeout(c.stop(), "stop") : Promise.resolve())),
  );
}

export const bare = (jid) => String(jid).split("/")[0];

export function rosterItems(iq) {
  const q = iq.getChild("query", "jabber:iq:roster");
  return q ? q.getChildren("item").map((i) => ({ ...i.attrs, groups: i.getChildren("group").map((g) => g.text()) })) : [];
}

export const isRosterPush = (el) =>
  el.is("iq") && el.attrs.type === "set" && el.getChild("query", "jabber:iq:roster");
