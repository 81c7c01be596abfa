"""Helpers for the PEP-based scenarios (test_omemo_pep.py, test_bookmarks.py,
test_avatar_vcard.py): publish-options forms, reading items out of results
and events, comparing payloads, and XEP-0115 `+notify` interest announced the
way slixmpp's xep_0163/xep_0115 plugins do it."""

from __future__ import annotations

import asyncio
from xml.etree import ElementTree as ET

from xmppclient import TIMEOUT, Client, server_roundtrip

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBSUB_OWNER = "http://jabber.org/protocol/pubsub#owner"
NS_PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_PUBSUB_ERRORS = "http://jabber.org/protocol/pubsub#errors"
NS_DATA = "jabber:x:data"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
PEP_PLUGINS = ("xep_0004", "xep_0060", "xep_0163")


def publish_options(client: Client, options: dict[str, str]):
    """A XEP-0060 §7.1.5 publish-options form (slixmpp xep_0004)."""
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value=PUBLISH_OPTIONS)
    for var, value in options.items():
        form.add_field(var=var, value=value)
    return form


async def publish(client: Client, node: str, item_id: str | None, payload: ET.Element,
                  options: dict[str, str] | None = None):
    """Publish to the client's own PEP service (no `to`, as clients do)."""
    form = publish_options(client, options) if options else None
    return await client.plugin["xep_0060"].publish(None, node, id=item_id, payload=payload,
                                                   options=form, timeout=TIMEOUT)


def items_of(iq) -> list[tuple[str, ET.Element | None]]:
    """(item id, payload) of a pubsub <items/> result, in document order."""
    items = iq.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}items")
    assert items is not None, f"no <pubsub><items/> in {iq}"
    out = []
    for it in items.findall(f"{{{NS_PUBSUB}}}item"):
        kids = list(it)
        out.append((it.get("id"), kids[0] if kids else None))
    return out


def event_items(msg, node: str | None = None) -> list[tuple[str, ET.Element | None]] | None:
    """(item id, payload) of a PEP notification, None if `msg` is not one (for `node`)."""
    items = msg.xml.find(f"{{{NS_PUBSUB_EVENT}}}event/{{{NS_PUBSUB_EVENT}}}items")
    if items is None or (node is not None and items.get("node") != node):
        return None
    out = []
    for it in items.findall(f"{{{NS_PUBSUB_EVENT}}}item"):
        kids = list(it)
        out.append((it.get("id"), kids[0] if kids else None))
    return out


def shape(e: ET.Element):
    """A namespace-prefix-independent structure of an element, for equality."""
    return (e.tag, tuple(sorted(e.attrib.items())), (e.text or "").strip(),
            tuple(shape(c) for c in e))


def node_config(iq) -> dict[str, str]:
    """Field values of a pubsub#owner <configure/> result."""
    x = iq.xml.find(f"{{{NS_PUBSUB_OWNER}}}pubsub/{{{NS_PUBSUB_OWNER}}}configure/{{{NS_DATA}}}x")
    assert x is not None, f"no configuration form in {iq}"
    out = {}
    for f in x.findall(f"{{{NS_DATA}}}field"):
        v = f.find(f"{{{NS_DATA}}}value")
        out[f.get("var")] = (v.text or "") if v is not None else ""
    return out


def pubsub_error(exc) -> tuple[str, list[str]]:
    """(condition, pubsub#errors children) of an IqError."""
    err = exc.iq.xml.find("{jabber:client}error")
    specific = [c.tag.split("}", 1)[1] for c in (err if err is not None else [])
                if c.tag.startswith(f"{{{NS_PUBSUB_ERRORS}}}")]
    return exc.iq["error"]["condition"], specific


async def announce_interest(client: Client, *nodes: str) -> None:
    """Announce `<node>+notify` through XEP-0115 caps (slixmpp xep_0163
    add_interest + xep_0115) in a presence and return once the server knows
    them: if it asks for the `ver` (disco#info, answered by slixmpp), once it
    has read the answer; if it knows the `ver` already (same client software
    before), once it has read the presence."""
    loop = asyncio.get_running_loop()
    answered = loop.create_future()
    wanted = {f"{n}+notify" for n in nodes}

    def watch(stanza):
        if (stanza.name == "iq" and stanza["type"] == "result" and not answered.done()
                and stanza["to"].full in ("", client.boundjid.domain)):
            feats = {f.get("var") for f in stanza.xml.iter(f"{{{NS_DISCO_INFO}}}feature")}
            if wanted <= feats:
                answered.set_result(stanza)
        return stanza

    def caps_query(s) -> bool:
        q = s.xml.find(f"{{{NS_DISCO_INFO}}}query")
        return (s.name == "iq" and s["type"] == "get" and q is not None and "#" in (q.get("node") or "")
                and s["from"].full in ("", client.boundjid.domain))

    client.add_filter("out", watch)
    try:
        for node in nodes:
            client.plugin["xep_0163"].add_interest(node)
        await client.plugin["xep_0115"].update_caps(broadcast=False)
        ver = await client.plugin["xep_0115"].get_verstring()
        mark = len(client.inbox.items)
        client.send_presence()
        await server_roundtrip(client)  # the presence has been read (and any query sent)
        asked = [s for s in client.inbox.items[mark:] if caps_query(s)
                 and s.xml.find(f"{{{NS_DISCO_INFO}}}query").get("node").endswith("#" + ver)]
        if asked:
            try:
                await asyncio.wait_for(answered, TIMEOUT)
            except asyncio.TimeoutError:
                raise AssertionError(f"{client.boundjid}: slixmpp sent no disco#info answer with "
                                     f"{sorted(wanted)} within {TIMEOUT}s") from None
            await server_roundtrip(client)  # the answer has been read
    finally:
        client.del_filter("out", watch)
