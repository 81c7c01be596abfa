// XEP-0388 SASL2 + XEP-0386 Bind2 + XEP-0484 FAST with @xmpp/client's own
// login code (no custom credentials callback): a password login obtains a
// token, and a second client of the same installation logs in with the token
// alone (its password is wrong, so only the token can work).
import { test } from "node:test";
import assert from "node:assert/strict";
import { client } from "@xmpp/client";

import { accounts, env, startOnline, stopAll, withTimeout, xml, TIMEOUT } from "./helpers.mjs";

const [erin] = accounts(6, 1);

function fastClient(password, userAgentId) {
  const xmpp = client({
    service: `xmpp://${env.host}:${env.starttlsPort}`,
    domain: env.domain,
    username: erin.localpart,
    password,
    resource: "js-fast",
    timeout: TIMEOUT,
    userAgent: xml("user-agent", { id: userAgentId }, xml("software", {}, "xmppd conformance")),
  });
  xmpp.reconnect.stop();
  xmpp.on("error", () => {});
  return xmpp;
}

test("FAST: password login issues a token; the token alone logs in again", async () => {
  const agent = globalThis.crypto.randomUUID();
  let saved = null;
  const first = fastClient(erin.password, agent);
  first.fast.saveToken = async (t) => { saved = t; };
  first.fast.fetchToken = async () => null;
  await startOnline(first, "password login");
  const firstJid = first.jid.toString();
  assert.ok(first.jid.resource.startsWith("js-fast."), firstJid);
  await stopAll(first);
  assert.ok(saved?.token, "server issued a token");
  assert.equal(saved.mechanism, "HT-SHA-256-NONE");
  assert.ok(new Date(saved.expiry) > new Date(), `expiry ${saved.expiry}`);

  const second = fastClient("certainly-not-" + erin.password, agent);
  second.fast.fetchToken = async () => saved;
  let rotated = null;
  second.fast.saveToken = async (t) => { rotated = t; };
  await startOnline(second, "token login");
  try {
    // Same installation, same resource: Bind2 derives it from the user-agent id.
    assert.equal(second.jid.toString(), firstJid);
    const res = await second.iqCaller.request(
      xml("iq", { type: "get", to: env.domain }, xml("ping", { xmlns: "urn:xmpp:ping" })), 10_000);
    assert.equal(res.attrs.type, "result");
  } finally {
    await stopAll(second);
  }

  // A wrong token with the wrong password fails as a whole.
  const third = fastClient("certainly-not-" + erin.password, agent);
  third.fast.fetchToken = async () => ({ ...saved, token: "forged" });
  await assert.rejects(withTimeout(third.start(), "forged token login"), (err) => {
    assert.equal(err.condition, "not-authorized");
    return true;
  });
  try { await withTimeout(third.disconnect(), "disconnect"); } catch {}
});
