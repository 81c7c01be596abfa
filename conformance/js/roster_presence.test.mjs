// Roster get/set and presence to a subscribed contact with @xmpp/client.
import { test } from "node:test";
import assert from "node:assert/strict";

import { accounts, bare, isRosterPush, online, rosterItems, stopAll, waitStanza, xml } from "./helpers.mjs";

const [carol, dave, erin] = accounts(3, 3);

const rosterGet = (c) =>
  c.iqCaller.request(xml("iq", { type: "get" }, xml("query", { xmlns: "jabber:iq:roster" })), 10_000);

test("roster set, push, get and remove", async () => {
  const c = await online(carol, { resource: "js-roster" });
  try {
    const before = await rosterGet(c);
    assert.equal(before.attrs.type, "result");
    await c.iqCaller.request(
      xml("iq", { type: "set" },
        xml("query", { xmlns: "jabber:iq:roster" },
          xml("item", { jid: erin.jid, name: "Erin ✓" }, xml("group", {}, "JS")))), 10_000);
    const push = await waitStanza(c, (el) => isRosterPush(el) && rosterItems(el)[0]?.jid === erin.jid, "roster push");
    const [pushed] = rosterItems(push);
    assert.equal(pushed.name, "Erin ✓");
    assert.deepEqual(pushed.groups, ["JS"]);
    const after = rosterItems(await rosterGet(c)).find((i) => i.jid === erin.jid);
    assert.ok(after, "added item missing from roster get");
    assert.equal(after.subscription ?? "none", "none");

    await c.iqCaller.request(
      xml("iq", { type: "set" },
        xml("query", { xmlns: "jabber:iq:roster" }, xml("item", { jid: erin.jid, subscription: "remove" }))), 10_000);
    await waitStanza(c, (el) => isRosterPush(el) && rosterItems(el)[0]?.subscription === "remove", "remove push");
    assert.equal(rosterItems(await rosterGet(c)).find((i) => i.jid === erin.jid), undefined);
  } finally {
    await stopAll(c);
  }
});

test("subscription handshake, then presence reaches the subscribed contact", async () => {
  const c = await online(carol, { resource: "js-c" });
  const d = await online(dave, { resource: "js-d" });
  const dJid = d.jid.toString(); // Bind2: the server picked the resource
  try {
    // Requesting the roster makes each session an "interested resource"
    // (RFC 6121 §2.1.6), which is what receives pushes and subscription approvals.
    await rosterGet(c);
    await rosterGet(d);
    await c.send(xml("presence"));
    await d.send(xml("presence"));
    // carol subscribes to dave; dave approves.
    await c.send(xml("presence", { to: dave.jid, type: "subscribe" }));
    const req = await waitStanza(d, (el) => el.is("presence") && el.attrs.type === "subscribe", "dave: request");
    assert.equal(req.attrs.from, carol.jid, "request must come from carol's bare JID");
    await d.send(xml("presence", { to: carol.jid, type: "subscribed" }));
    await waitStanza(c, (el) => el.is("presence") && el.attrs.type === "subscribed" && bare(el.attrs.from) === dave.jid,
      "carol: subscribed");
    await waitStanza(c, (el) => isRosterPush(el) && rosterItems(el)[0]?.jid === dave.jid
      && rosterItems(el)[0]?.subscription === "to", "carol: roster push subscription=to");

    // dave's presence updates now reach carol.
    await d.send(xml("presence", {}, xml("show", {}, "chat"), xml("status", {}, "from js ✨")));
    const p = await waitStanza(c, (el) => el.is("presence") && el.attrs.from === dJid
      && el.getChildText("status") === "from js ✨", "carol: dave's presence");
    assert.equal(p.getChildText("show"), "chat");

    const item = rosterItems(await rosterGet(c)).find((i) => i.jid === dave.jid);
    assert.equal(item.subscription, "to");

    // and dave going offline is seen too.
    await stopAll(d);
    await waitStanza(c, (el) => el.is("presence") && el.attrs.from === dJid
      && el.attrs.type === "unavailable", "carol: dave unavailable");
  } finally {
    await stopAll(c, d);
  }
});
