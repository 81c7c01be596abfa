"""OMEMO key distribution at the PEP level (XEP-0384 over XEP-0163/XEP-0060),
driven with slixmpp's xep_0060/xep_0163/xep_0115 plugins the way OMEMO clients
use them: each account publishes its device list (`…axolotl.devicelist`, item
`current`) and a bundle per device (`…axolotl.bundles:<id>`) with
publish-options `access_model=open` + `persist_items=true`; a mutually
subscribed contact and a stranger both fetch the other side's list and bundle
(also while the owner is offline) and get exactly what was published, the
node configuration says `open` while a node published without options stays
closed to the stranger, and contradicting publish-options fail with
`precondition-not-met`. A contact that announced `devicelist+notify` in its
XEP-0115 caps gets the last published list when it comes online and an event
for every change (so does the owner's other device); a contact without that
interest gets none. OMEMO 2 (`urn:xmpp:omemo:2:devices` / `:bundles` with
`max_items=max`) is readable by a stranger the same way."""

import base64
import secrets
from xml.etree import ElementTree as ET

import pytest

from pep import (NS_PUBSUB_EVENT, PEP_PLUGINS, event_items, announce_interest, items_of,
                 node_config, publish, pubsub_error, shape)
from xmppclient import IqError, close_all, connect, server_roundtrip, subscribe_mutually

NS_AXOLOTL = "eu.siacs.conversations.axolotl"
DEVICELIST = f"{NS_AXOLOTL}.devicelist"
NS_OMEMO2 = "urn:xmpp:omemo:2"
OMEMO2_DEVICES = "urn:xmpp:omemo:2:devices"
OMEMO2_BUNDLES = "urn:xmpp:omemo:2:bundles"
OPEN = {"pubsub#access_model": "open", "pubsub#persist_items": "true"}
CAPS_PLUGINS = (*PEP_PLUGINS, "xep_0115")


def bundle_node(device_id: int) -> str:
    return f"{NS_AXOLOTL}.bundles:{device_id}"


def b64(n: int) -> str:
    return base64.b64encode(secrets.token_bytes(n)).decode()


def device_list(*ids: int) -> ET.Element:
    lst = ET.Element(f"{{{NS_AXOLOTL}}}list")
    for i in ids:
        ET.SubElement(lst, f"{{{NS_AXOLOTL}}}device", {"id": str(i)})
    return lst


def device_ids(payload: ET.Element | None) -> list[int]:
    assert payload is not None and payload.tag == f"{{{NS_AXOLOTL}}}list", \
        f"not an axolotl device list: {None if payload is None else ET.tostring(payload)}"
    return sorted(int(d.get("id")) for d in payload.findall(f"{{{NS_AXOLOTL}}}device"))


def legacy_bundle(prekeys: int = 5) -> ET.Element:
    """A XEP-0384 v0.3 bundle with random (well-formed base64) key material."""
    b = ET.Element(f"{{{NS_AXOLOTL}}}bundle")
    ET.SubElement(b, f"{{{NS_AXOLOTL}}}signedPreKeyPublic", {"signedPreKeyId": "1"}).text = b64(33)
    ET.SubElement(b, f"{{{NS_AXOLOTL}}}signedPreKeySignature").text = b64(64)
    ET.SubElement(b, f"{{{NS_AXOLOTL}}}identityKey").text = b64(33)
    pks = ET.SubElement(b, f"{{{NS_AXOLOTL}}}prekeys")
    for i in range(1, prekeys + 1):
        ET.SubElement(pks, f"{{{NS_AXOLOTL}}}preKeyPublic", {"preKeyId": str(i)}).text = b64(33)
    return b


def omemo2_bundle(prekeys: int = 5) -> ET.Element:
    b = ET.Element(f"{{{NS_OMEMO2}}}bundle")
    ET.SubElement(b, f"{{{NS_OMEMO2}}}spk", {"id": "1"}).text = b64(32)
    ET.SubElement(b, f"{{{NS_OMEMO2}}}spks").text = b64(64)
    ET.SubElement(b, f"{{{NS_OMEMO2}}}ik").text = b64(32)
    pks = ET.SubElement(b, f"{{{NS_OMEMO2}}}prekeys")
    for i in range(1, prekeys + 1):
        ET.SubElement(pks, f"{{{NS_OMEMO2}}}pk", {"id": str(i)}).text = b64(32)
    return b


def new_device_id() -> int:
    return secrets.randbelow(2**31 - 1) + 1


async def publish_omemo_keys(client, device_id: int, others: tuple[int, ...] = ()) -> ET.Element:
    """What an OMEMO client does at start: device list then its bundle, both open."""
    r = await publish(client, DEVICELIST, "current", device_list(*others, device_id), OPEN)
    assert r["type"] == "result"
    bundle = legacy_bundle()
    r = await publish(client, bundle_node(device_id), "current", bundle, OPEN)
    assert r["type"] == "result"
    return bundle


async def fetch_keys(client, owner: str, device_id: int):
    """What an OMEMO client does before encrypting to `owner`: its device list
    (get_items), then the bundle of a device (get_item 'current')."""
    ps = client.plugin["xep_0060"]
    lst = items_of(await ps.get_items(owner, DEVICELIST, timeout=10))
    assert [i for i, _ in lst] == ["current"], f"device list items of {owner}: {lst}"
    bundle = items_of(await ps.get_item(owner, bundle_node(device_id), "current", timeout=10))
    assert len(bundle) == 1 and bundle[0][0] == "current", f"bundle items of {owner}: {bundle}"
    return device_ids(lst[0][1]), bundle[0][1]


async def test_pep_service_on_the_account(server):
    alice = server.account("alice")
    a = await connect(server, alice, resource="omemo", plugins=PEP_PLUGINS)
    try:
        info = await a.plugin["xep_0030"].get_info(jid=alice.jid, timeout=10)
        identities = {(c, t) for c, t, _, _ in info["disco_info"]["identities"]}
        assert ("pubsub", "pep") in identities, identities
        feats = set(info["disco_info"]["features"])
        for f in ("http://jabber.org/protocol/pubsub#publish",
                  "http://jabber.org/protocol/pubsub#publish-options",
                  "http://jabber.org/protocol/pubsub#access-open"):
            assert f in feats, f"{f} missing from {alice.jid}'s disco#info"
    finally:
        await close_all(a)


async def test_contact_and_stranger_fetch_device_lists_and_bundles(server):
    alice, bob, carol = server.accounts("alice", "bob", "carol")
    a = await connect(server, alice, resource="conversations", plugins=PEP_PLUGINS)
    b = await connect(server, bob, resource="dino", plugins=PEP_PLUGINS)
    c = await connect(server, carol, resource="stranger", plugins=PEP_PLUGINS)
    try:
        await subscribe_mutually(a, b)
        dev_a, dev_b = new_device_id(), new_device_id()
        bundle_a = await publish_omemo_keys(a, dev_a)
        bundle_b = await publish_omemo_keys(b, dev_b)

        # The contact and the stranger see exactly what was published.
        for reader, owner, dev, bundle in ((b, alice.jid, dev_a, bundle_a), (c, alice.jid, dev_a, bundle_a),
                                           (a, bob.jid, dev_b, bundle_b), (c, bob.jid, dev_b, bundle_b)):
            ids, got = await fetch_keys(reader, owner, dev)
            assert ids == [dev], f"{reader.boundjid.bare} read {owner}'s device list as {ids}"
            assert shape(got) == shape(bundle), \
                f"{reader.boundjid.bare} read {owner}'s bundle as {ET.tostring(got)!r}"

        # The nodes were created with the requested access model.
        cfg = node_config(await a.plugin["xep_0060"].get_node_config(None, DEVICELIST, timeout=10))
        assert cfg.get("pubsub#access_model") == "open", cfg
        cfg = node_config(await a.plugin["xep_0060"].get_node_config(None, bundle_node(dev_a), timeout=10))
        assert cfg.get("pubsub#access_model") == "open", cfg

        # A second device: the list is republished (same options) and replaces the item.
        dev_a2 = new_device_id()
        r = await publish(a, DEVICELIST, "current", device_list(dev_a, dev_a2), OPEN)
        assert r["type"] == "result"
        ids, _ = await fetch_keys(c, alice.jid, dev_a)
        assert ids == sorted([dev_a, dev_a2])

        # Publish-options that contradict the node's configuration are refused (XEP-0060 §7.1.5).
        with pytest.raises(IqError) as ei:
            await publish(a, DEVICELIST, "current", device_list(dev_a), {"pubsub#access_model": "presence"})
        assert pubsub_error(ei.value) == ("conflict", ["precondition-not-met"])
        ids, _ = await fetch_keys(b, alice.jid, dev_a)
        assert ids == sorted([dev_a, dev_a2]), "a refused publish changed the device list"

        # Contrast: a node published without options keeps the default (presence)
        # access: the contact reads it, the stranger does not.
        r = await publish(a, "urn:example:omemo-test:private", "current", device_list(1))
        assert r["type"] == "result"
        assert items_of(await b.plugin["xep_0060"].get_items(alice.jid, "urn:example:omemo-test:private",
                                                             timeout=10))
        with pytest.raises(IqError) as ei:
            await c.plugin["xep_0060"].get_items(alice.jid, "urn:example:omemo-test:private", timeout=10)
        assert pubsub_error(ei.value) == ("not-authorized", ["presence-subscription-required"])

        # Keys stay fetchable while their owner is offline (persist_items).
        await a.close()
        ids, got = await fetch_keys(c, alice.jid, dev_a)
        assert ids == sorted([dev_a, dev_a2]) and shape(got) == shape(bundle_a)
        # An unknown device's bundle is item-not-found, not an empty success.
        with pytest.raises(IqError) as ei:
            await c.plugin["xep_0060"].get_item(alice.jid, bundle_node(new_device_id()), "current", timeout=10)
        assert ei.value.iq["error"]["condition"] == "item-not-found"
    finally:
        await close_all(a, b, c)


async def test_device_list_change_notifies_interested_contacts(server):
    alice, bob, dave = server.accounts("alice", "bob", "dave")
    a = await connect(server, alice, resource="phone", plugins=PEP_PLUGINS)
    # bob's client does OMEMO (devicelist+notify in its caps), dave's does not.
    b = await connect(server, bob, resource="omemo", plugins=CAPS_PLUGINS)
    d = await connect(server, dave, resource="plain", plugins=PEP_PLUGINS)
    a2 = None
    try:
        await subscribe_mutually(a, b)
        await subscribe_mutually(a, d)
        dev1 = new_device_id()
        await publish_omemo_keys(a, dev1)

        # Announcing the interest: the last published list (XEP-0163 §6.2).
        await announce_interest(b, DEVICELIST)
        first = await b.wait_message(lambda m: event_items(m, DEVICELIST) is not None,
                                     "the last published device list on coming online")
        assert first["from"].full == alice.jid
        [(item_id, payload)] = event_items(first, DEVICELIST)
        assert item_id == "current" and device_ids(payload) == [dev1]

        # Alice's other device also wants OMEMO device lists (its own account's).
        a2 = await connect(server, alice, resource="desktop", plugins=CAPS_PLUGINS)
        await announce_interest(a2, DEVICELIST)
        own = await a2.wait_message(lambda m: event_items(m, DEVICELIST) is not None,
                                    "own last device list")
        assert device_ids(event_items(own, DEVICELIST)[0][1]) == [dev1]

        # A change reaches both, from alice's bare JID, as a headline.
        dev2 = new_device_id()
        r = await publish(a, DEVICELIST, "current", device_list(dev1, dev2), OPEN)
        assert r["type"] == "result"
        want = sorted([dev1, dev2])
        for who in (b, a2):
            ev = await who.wait_message(
                lambda m: (x := event_items(m, DEVICELIST)) is not None and device_ids(x[0][1]) == want,
                f"device list event with {want} at {who.boundjid}")
            assert ev["from"].full == alice.jid and ev["type"] == "headline"
            assert ev.xml.find(f"{{{NS_PUBSUB_EVENT}}}event") is not None

        # dave announced no interest: no event (the ping answer comes first).
        await server_roundtrip(d)
        got = [m for m in d.inbox.items if m.name == "message" and event_items(m) is not None]
        assert not got, f"an event reached a contact without +notify: {got[0]}"
    finally:
        await close_all(a, b, d, a2)


async def test_omemo2_devices_and_bundles_open_to_a_stranger(server):
    alice, carol = server.accounts("alice", "carol")
    a = await connect(server, alice, resource="omemo2", plugins=PEP_PLUGINS)
    c = await connect(server, carol, resource="stranger", plugins=PEP_PLUGINS)
    try:
        dev1, dev2 = new_device_id(), new_device_id()
        devices = ET.Element(f"{{{NS_OMEMO2}}}devices")
        ET.SubElement(devices, f"{{{NS_OMEMO2}}}device", {"id": str(dev1), "label": "Phone ☎"})
        ET.SubElement(devices, f"{{{NS_OMEMO2}}}device", {"id": str(dev2)})
        r = await publish(a, OMEMO2_DEVICES, "current", devices, OPEN)
        assert r["type"] == "result"
        # XEP-0384 §5.3.2: one bundles node, one item per device, max_items=max.
        bundles = {}
        for dev in (dev1, dev2):
            bundles[str(dev)] = omemo2_bundle()
            r = await publish(a, OMEMO2_BUNDLES, str(dev), bundles[str(dev)],
                              {**OPEN, "pubsub#max_items": "max"})
            assert r["type"] == "result"

        ps = c.plugin["xep_0060"]
        got = items_of(await ps.get_item(alice.jid, OMEMO2_DEVICES, "current", timeout=10))
        assert len(got) == 1 and shape(got[0][1]) == shape(devices), got
        for dev, bundle in bundles.items():
            got = items_of(await ps.get_item(alice.jid, OMEMO2_BUNDLES, dev, timeout=10))
            assert [i for i, _ in got] == [dev] and shape(got[0][1]) == shape(bundle), got
        # Both bundles are kept (max_items=max), not just the newest.
        got = dict(items_of(await ps.get_items(alice.jid, OMEMO2_BUNDLES, timeout=10)))
        assert set(got) == set(bundles), f"bundle items: {sorted(got)}"
        assert all(shape(got[d]) == shape(bundles[d]) for d in bundles)
    finally:
        await close_all(a, c)
