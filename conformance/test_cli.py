"""The xmppd administration CLI against a running server: `user add/passwd/
del/list` take effect for logins at once, and `check-config` validates.
(xmppd only: skipped for XMPP_TARGET=external.)"""

import re

import pytest

from harness import Account
from xmppclient import Client, LoginFailed, close_all

pytestmark = pytest.mark.xmppd_only


async def login_ok(server, acct: Account, mech: str = "SCRAM-SHA-256") -> None:
    c = Client(server, acct, resource="cli", mechanism=mech)
    try:
        await c.login()
        assert c.boundjid.bare == acct.jid
    finally:
        await close_all(c)


async def login_refused(server, acct: Account, mech: str = "SCRAM-SHA-256") -> None:
    c = Client(server, acct, mechanism=mech)
    with pytest.raises(LoginFailed) as ei:
        await c.login()
    assert ei.value.condition == "not-authorized"
    await close_all(c)


def test_user_list_shows_created_users(server):
    a, b = server.accounts("alice", "bob")
    out = server.cli("user", "list").stdout.split()
    assert a.jid in out and b.jid in out
    assert set(server.cli("user", "list", server.domain).stdout.split()) == set(out)


async def test_user_add_with_password_from_stdin(server):
    acct = Account(server.unused_localpart("stdin"), server.domain, "from-stdin-Ω")
    server.cli("user", "add", acct.jid, input=acct.password + "\n")
    await login_ok(server, acct)
    await login_ok(server, acct, "PLAIN")


def test_user_add_duplicate_fails(server):
    acct = server.account("dup")
    cp = server.cli("user", "add", acct.jid, "--password", "other", check=False)
    assert cp.returncode != 0, "adding an existing user succeeded"


async def test_user_passwd_takes_effect(server):
    acct = server.account("pw")
    server.cli("user", "passwd", acct.jid, "--password", "changed-by-admin")
    await login_refused(server, acct)
    await login_ok(server, Account(acct.localpart, acct.domain, "changed-by-admin"), "SCRAM-SHA-1")


async def test_user_del_takes_effect(server):
    acct = server.account("gone")
    await login_ok(server, acct)
    server.cli("user", "del", acct.jid)
    assert acct.jid not in server.cli("user", "list").stdout.split()
    await login_refused(server, acct)


def test_check_config_accepts_the_harness_config(server):
    cp = server.cli("check-config", check=False)
    assert cp.returncode == 0, cp.stderr


def test_check_config_reports_file_and_line(server, tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text('hosts = ["localhost"]\nlog_level = "info"\n[storage\nurl = "sqlite:///x.db"\n')
    cp = server.cli("check-config", check=False, config=bad)
    assert cp.returncode != 0
    msg = cp.stdout + cp.stderr
    assert str(bad) in msg or bad.name in msg, f"message does not name the file: {msg}"
    assert re.search(r"line\s*3\b|:3\b", msg), f"message does not name line 3: {msg}"


def test_check_config_rejects_wrong_type(server, tmp_path):
    bad = tmp_path / "types.toml"
    bad.write_text('hosts = ["localhost"]\n\n[limits]\nmax_stanza_bytes = "lots"\n')
    cp = server.cli("check-config", check=False, config=bad)
    assert cp.returncode != 0
    msg = cp.stdout + cp.stderr
    assert re.search(r"line\s*4\b|:4\b", msg) or "max_stanza_bytes" in msg, msg
