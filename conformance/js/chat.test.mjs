// Two users chat both ways with @xmpp/client; bodies arrive byte-for-byte.
import { test } from "node:test";
import assert from "node:assert/strict";

import { accounts, online, stopAll, waitStanza, xml } from "./helpers.mjs";

const [alice, bob] = accounts(1, 2);

const BODIES = [
  "hello from js",
  "markup & <escapes> \"quotes\" 'apos' </body>",
  "Grüße 日本語 עברית 😀👩‍👩‍👧",
  "  leading\n\ttabs and newlines  ",
];

test("alice and bob chat both ways", async () => {
  const a = await online(alice, { resource: "js-a" });
  const b = await online(bob, { resource: "js-b", direct: true });
  try {
    for (const [i, body] of BODIES.entries()) {
      await a.send(xml("message", { to: b.jid.toString(), type: "chat", id: `a2b-${i}` }, xml("body", {}, body)));
      const got = await waitStanza(b, (el) => el.is("message") && el.attrs.id === `a2b-${i}`, `bob: a2b-${i}`);
      assert.equal(got.getChildText("body"), body);
      assert.equal(got.attrs.from, a.jid.toString(), "server must stamp the sender's full JID");
      assert.equal(got.attrs.type, "chat");

      await b.send(xml("message", { to: got.attrs.from, type: "chat", id: `b2a-${i}` }, xml("body", {}, body + " ↩")));
      const back = await waitStanza(a, (el) => el.is("message") && el.attrs.id === `b2a-${i}`, `alice: b2a-${i}`);
      assert.equal(back.getChildText("body"), body + " ↩");
      assert.equal(back.attrs.from, b.jid.toString());
    }
  } finally {
    await stopAll(a, b);
  }
});

test("message to an unknown user bounces service-unavailable", async () => {
  const a = await online(alice, { resource: "js-bounce" });
  try {
    const ghost = `nobody-${Date.now()}@${alice.jid.split("@")[1]}`;
    await a.send(xml("message", { to: ghost, type: "chat", id: "ghost-1" }, xml("body", {}, "hi?")));
    const err = await waitStanza(a, (el) => el.is("message") && el.attrs.type === "error", "error bounce");
    assert.equal(err.attrs.id, "ghost-1");
    assert.equal(err.attrs.from.split("/")[0], ghost);
    const e = err.getChild("error");
    assert.ok(e.getChild("service-unavailable", "urn:ietf:params:xml:ns:xmpp-stanzas"), err.toString());
  } finally {
    await stopAll(a);
  }
});
