// Login with @xmpp/client: STARTTLS and direct TLS, SCRAM-SHA-1 and PLAIN. The
// library prefers SASL2 (XEP-0388) with Bind2 when offered, so this is that path;
// the slixmpp suite covers RFC 6120 SASL and bind.
import { test } from "node:test";
import assert from "node:assert/strict";

import { accounts, bare, env, makeClient, online, stopAll, withTimeout, xml } from "./helpers.mjs";

const [alice] = accounts(0, 1);

for (const direct of [false, true]) {
  for (const mechanism of ["SCRAM-SHA-1", "PLAIN"]) {
    const name = `${mechanism} over ${direct ? "direct TLS" : "STARTTLS"}`;
    test(`login ${name}`, async () => {
      const xmpp = await online(alice, { resource: `js-${mechanism}-${direct}`, direct, mechanism });
      try {
        assert.equal(xmpp.used.mechanism, mechanism);
        assert.ok(xmpp.isSecure(), "connection is not TLS");
        assert.equal(bare(xmpp.jid), alice.jid);
        // Bind2 (XEP-0386): the server picks the resource, starting with the client's tag.
        assert.ok(xmpp.jid.resource.startsWith(`js-${mechanism}-${direct}.`), String(xmpp.jid));
        // The session works: ping the server.
        const res = await xmpp.iqCaller.request(
          xml("iq", { type: "get", to: env.domain }, xml("ping", { xmlns: "urn:xmpp:ping" })), 10_000);
        assert.equal(res.attrs.type, "result");
      } finally {
        await stopAll(xmpp);
      }
    });
  }
}

test("SCRAM offered after STARTTLS", async () => {
  const xmpp = await online(alice, { resource: "js-offer" });
  try {
    assert.ok(xmpp.used.offered.includes("SCRAM-SHA-1"), `offered: ${xmpp.used.offered}`);
  } finally {
    await stopAll(xmpp);
  }
});

test("wrong password is refused with not-authorized", async () => {
  const xmpp = makeClient(alice, { resource: "js-bad", password: "not-" + alice.password });
  await assert.rejects(withTimeout(xmpp.start(), "failed login"), (err) => {
    assert.equal(err.name, "SASLError");
    assert.equal(err.condition, "not-authorized");
    return true;
  });
  assert.notEqual(xmpp.status, "online");
  try { await withTimeout(xmpp.disconnect(), "disconnect"); } catch {}
});
