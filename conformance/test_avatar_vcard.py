"""XEP-0084 user avatars and vCard photos kept in step by the server
(XEP-0398 style), driven with slixmpp's xep_0084 and xep_0054 plugins: an
avatar published through PEP (publish_avatar + publish_avatar_metadata) is
the PHOTO of the account's vCard as another client reads it — same bytes,
the type from the metadata, the rest of the vCard kept, one PHOTO after a
change; and a PHOTO set with publish_vcard becomes XEP-0084 data and metadata
items (id = SHA-1 hex of the image, type, size, dimensions) that a contact
fetches (get_items / retrieve_avatar) and is notified of through +notify."""

import hashlib
import secrets
import struct
import zlib

from slixmpp.plugins.xep_0084.stanza import Data, MetaData

from pep import PEP_PLUGINS, announce_interest, event_items, items_of
from xmppclient import close_all, connect, subscribe_mutually

NS_DATA = "urn:xmpp:avatar:data"
NS_META = "urn:xmpp:avatar:metadata"
PLUGINS = (*PEP_PLUGINS, "xep_0084", "xep_0054")


def png(width: int, height: int) -> bytes:
    """A valid RGBA PNG of that size with random pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + secrets.token_bytes(width * 4) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def sha1_hex(b: bytes) -> str:
    return hashlib.sha1(b).hexdigest()


async def vcard_of(client, jid: str | None):
    """The vCard as the server serves it (never slixmpp's local cache)."""
    r = await client.plugin["xep_0054"].get_vcard(jid, local=False, timeout=10)
    return r["vcard_temp"]


def photos(card) -> list[tuple[str, bytes]]:
    return [(p["TYPE"], p["BINVAL"]) for p in card["photos"]]


async def publish_pep_avatar(client, img: bytes, mime: str, width: int = 0, height: int = 0) -> str:
    """XEP-0084 §4.1/§4.2: data first, then metadata, both under the SHA-1 id."""
    av = client.plugin["xep_0084"]
    r = await av.publish_avatar(img, timeout=10)
    assert r["type"] == "result"
    info = {"id": av.generate_id(img), "type": mime, "bytes": len(img)}
    if width and height:
        info.update(width=str(width), height=str(height))  # slixmpp wants strings here
    r = await av.publish_avatar_metadata(info, timeout=10)
    assert r["type"] == "result"
    return info["id"]


async def test_pep_avatar_becomes_the_vcard_photo(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="pep", plugins=PLUGINS)
    b = await connect(server, bob, resource="reader", plugins=PLUGINS)
    try:
        await subscribe_mutually(a, b)
        vc = a.plugin["xep_0054"].make_vcard()
        vc["FN"] = "Alice Avatar"
        vc["NICKNAME"] = "ally"
        await a.plugin["xep_0054"].publish_vcard(vc, timeout=10)

        img = png(4, 3)
        assert await publish_pep_avatar(a, img, "image/png", 4, 3) == sha1_hex(img)
        # A contact and the owner read it as the vCard PHOTO, with the rest intact.
        for reader in (b, a):
            card = await vcard_of(reader, alice.jid)
            assert photos(card) == [("image/png", img)], f"vCard of {alice.jid} as {reader.boundjid}: {card}"
            assert card["FN"] == "Alice Avatar"

        # A new avatar (other type) replaces the photo; still exactly one PHOTO.
        jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + secrets.token_bytes(600) + b"\xff\xd9"
        await publish_pep_avatar(a, jpeg, "image/jpeg")
        card = await vcard_of(b, alice.jid)
        assert photos(card) == [("image/jpeg", jpeg)], card
        assert card["FN"] == "Alice Avatar"
    finally:
        await close_all(a, b)


async def test_vcard_photo_becomes_a_pep_avatar(server):
    alice, bob = server.accounts("alice", "bob")
    a = await connect(server, alice, resource="legacy", plugins=PLUGINS)
    b = await connect(server, bob, resource="modern", plugins=PLUGINS)
    try:
        await subscribe_mutually(a, b)
        await announce_interest(b, NS_META)

        for width, height in ((5, 7), (2, 2)):
            img = png(width, height)
            want_id = sha1_hex(img)
            vc = a.plugin["xep_0054"].make_vcard()
            vc["FN"] = "Alice Legacy"
            vc["PHOTO"]["TYPE"] = "image/png"
            vc["PHOTO"]["BINVAL"] = img
            await a.plugin["xep_0054"].publish_vcard(vc, timeout=10)

            # bob (metadata+notify) is told, from alice's bare JID, under the SHA-1 id.
            ev = await b.wait_message(
                lambda m: any(i == want_id for i, _ in (event_items(m, NS_META) or [])),
                f"avatar metadata event with id {want_id}")
            assert ev["from"].full == alice.jid

            # The metadata item, fetched like a XEP-0084 client does.
            r = await b.plugin["xep_0060"].get_items(alice.jid, NS_META, max_items=1, timeout=10)
            [(item_id, payload)] = items_of(r)
            assert item_id == want_id, f"metadata item id {item_id}, SHA-1 of the photo is {want_id}"
            infos = list(MetaData(xml=payload)["items"])
            assert len(infos) == 1, payload
            info = infos[0]
            assert (info["id"], info["type"], info["bytes"]) == (want_id, "image/png", len(img))
            if info.xml.get("width") or info.xml.get("height"):
                assert (info["width"], info["height"]) == (width, height)

            # The data item under that id holds the same bytes.
            r = await b.plugin["xep_0084"].retrieve_avatar(alice.jid, want_id, timeout=10)
            [(data_id, data)] = items_of(r)
            assert data_id == want_id and data is not None and data.tag == f"{{{NS_DATA}}}data"
            assert Data(xml=data)["value"] == img
    finally:
        await close_all(a, b)
