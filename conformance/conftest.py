"""pytest wiring: one server per test module, its log attached to failures."""

from __future__ import annotations

import os

import pytest

import harness


def pytest_report_header(config):
    t = harness.target()
    if t == "external":
        return [f"target: external server {os.environ.get('XMPP_HOST', '127.0.0.1')}:"
                f"{os.environ.get('XMPP_STARTTLS_PORT', '5222')} domain={os.environ.get('XMPP_DOMAIN', 'localhost')}",
                f"known differences: {os.environ.get('XMPP_KNOWN_DIFFERENCES', '') or '(none)'}"]
    return [f"target: xmppd {os.environ.get('XMPPD_BIN') or harness.DEFAULT_BIN} "
            f"storage={os.environ.get('XMPPD_STORAGE', 'sqlite')}"]


def pytest_collection_modifyitems(config, items):
    known = set()
    if harness.target() == "external":
        known = {t.strip() for t in os.environ.get("XMPP_KNOWN_DIFFERENCES", "").split(",") if t.strip()}
    for item in items:
        for m in item.iter_markers("difference"):
            tag = m.args[0]
            if tag in known:
                item.add_marker(pytest.mark.xfail(
                    reason=f"declared difference of the external server: {tag}", strict=False))
        if item.get_closest_marker("xmppd_only") and harness.target() != "xmppd":
            item.add_marker(pytest.mark.skip(reason="needs xmppd itself (CLI/config)"))


@pytest.fixture(scope="module")
def server(request):
    opts = dict(getattr(request.module, "SERVER_OPTIONS", {}))
    try:
        srv = harness.start_server(**opts)
    except harness.HarnessError as e:
        pytest.fail(f"could not start the server: {e}", pytrace=False)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _server_watch(request):
    """Restart a crashed server before a test; fail a test during which it died."""
    if "server" not in request.fixturenames:
        yield
        return
    srv = request.getfixturevalue("server")
    note = srv.ensure_running()
    request.node._xmpp_server = (srv, srv.log_size(), note)
    yield
    if isinstance(srv, harness.XmppdServer) and not srv.alive():
        pytest.fail(f"xmppd exited during this test (code {srv.proc.returncode if srv.proc else '?'})",
                    pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    info = getattr(item, "_xmpp_server", None)
    if info and rep.failed and not hasattr(rep, "wasxfail"):
        srv, offset, note = info
        text = srv.log_since(offset)
        if note:
            text = f"[harness] {note}\n{text}"
        if text:
            rep.sections.append((f"{srv.kind} log during this test ({rep.when})", text))
