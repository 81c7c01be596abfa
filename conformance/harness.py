"""Server harness for the conformance suite.

Two kinds of target, chosen by the environment:

* ``XMPP_TARGET=xmppd`` (default): a fresh xmppd per test module.  A temp dir,
  free loopback ports, a config file, a fresh SQLite file or PostgreSQL
  database (``XMPPD_STORAGE=sqlite|postgres``), users created with the
  ``xmppd user add`` CLI, then ``xmppd serve`` in the foreground.
* ``XMPP_TARGET=external``: any already running server (used to validate the
  tests against Prosody).  See README.md for the variables.

Also usable from the command line, to give the JavaScript tests a server:

    python harness.py run [--registration-open] -- node --test js/
    python harness.py serve          # start one and print its settings
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_BIN = REPO / "target" / "debug" / "xmppd"
LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = float(os.environ.get("XMPPD_STARTUP_TIMEOUT", "30"))
CLI_TIMEOUT = 60


@dataclass(frozen=True)
class Account:
    localpart: str
    domain: str
    password: str

    @property
    def jid(self) -> str:
        return f"{self.localpart}@{self.domain}"

    def full(self, resource: str) -> str:
        return f"{self.jid}/{resource}"


class HarnessError(RuntimeError):
    pass


def free_ports(n: int) -> list[int]:
    """Ask the kernel for n distinct free loopback ports."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((LOOPBACK, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for_ports(host: str, ports: list[int], timeout: float, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    pending = [p for p in ports if p]
    while pending:
        if not alive():
            raise HarnessError("server process exited before its ports accepted connections")
        pending = [p for p in pending if not port_open(host, p)]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise HarnessError(f"ports {pending} on {host} did not accept within {timeout:.0f}s")
        time.sleep(0.1)


def toml_str(s: str) -> str:
    # A JSON string literal is a valid TOML basic string for our inputs.
    return json.dumps(s)


def toml_value(v) -> str:
    """A TOML literal for the simple values module options use."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table, e.g. a [components] service
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise HarnessError(f"cannot render {v!r} as a TOML value")


# --------------------------------------------------------------------------- postgres
def create_pg_database(base_url: str) -> tuple[str, str]:
    """Create a fresh database next to base_url; returns (its url, its name)."""
    name = f"xmppd_conf_{os.getpid()}_{secrets.token_hex(4)}"
    _pg_exec(base_url, f'CREATE DATABASE "{name}"')
    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment)), name


def drop_pg_database(base_url: str, name: str) -> None:
    try:
        _pg_exec(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as e:  # best effort: never mask a test result
        print(f"harness: could not drop database {name}: {e}", file=sys.stderr)


def _pg_exec(url: str, sql: str) -> None:
    try:
        import psycopg  # type: ignore
    except ImportError:
        psycopg = None
    if psycopg is not None:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)
        return
    if shutil.which("psql"):
        subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True,
                       timeout=CLI_TIMEOUT, capture_output=True)
        return
    raise HarnessError("XMPPD_STORAGE=postgres needs psycopg (pip) or psql")


# --------------------------------------------------------------------------- servers
class Server:
    """What the tests see of a server under test."""

    kind = "abstract"
    host = LOOPBACK
    domain = "localhost"
    starttls_port = 0
    tls_port = 0
    component_port = 0  # XEP-0114 listener, when the config has [components] services
    max_stanza_bytes = 262144
    registration_open = False
    version_name: str | None = None
    known_differences: frozenset[str] = frozenset()
    can_restart = False
    has_cli = False

    # accounts -----------------------------------------------------------
    def account(self, hint: str = "user") -> Account:
        raise NotImplementedError

    def accounts(self, *hints: str) -> list[Account]:
        return [self.account(h) for h in hints]

    def unused_localpart(self, hint: str = "nobody") -> str:
        return f"{hint}-{secrets.token_hex(5)}"

    # lifecycle ------------------------------------------------------------
    def restart(self) -> None:
        raise NotImplementedError

    def ensure_running(self) -> str | None:
        """Restart a dead server; returns a message if it had died."""
        return None

    def stop(self) -> None:
        pass

    # logs -----------------------------------------------------------------
    def log_path(self) -> Path | None:
        return None

    def log_size(self) -> int:
        p = self.log_path()
        try:
            return p.stat().st_size if p else 0
        except OSError:
            return 0

    def log_since(self, offset: int, limit: int = 40000) -> str:
        p = self.log_path()
        if not p:
            return ""
        try:
            with open(p, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return ""
        if len(data) > limit:
            data = b"[... cut ...]\n" + data[-limit:]
        return data.decode("utf-8", "replace")

    def env(self, accounts: list[Account]) -> dict[str, str]:
        """Settings exported to non-Python clients (the JS tests)."""
        return {
            "XMPP_HOST": self.host,
            "XMPP_DOMAIN": self.domain,
            "XMPP_STARTTLS_PORT": str(self.starttls_port),
            "XMPP_TLS_PORT": str(self.tls_port or ""),
            "XMPP_ACCOUNTS": json.dumps(
                [{"jid": a.jid, "localpart": a.localpart, "password": a.password} for a in accounts]
            ),
            "XMPP_KNOWN_DIFFERENCES": ",".join(sorted(self.known_differences)),
        }


class XmppdServer(Server):
    kind = "xmppd"
    can_restart = True
    has_cli = True

    def __init__(self, *, binary: str | None = None, storage: str | None = None,
                 registration_open: bool = False, max_stanza_bytes: int = 65536,
                 pool_size: int = 16, domain: str = "localhost", log_level: str | None = None,
                 config: dict[str, dict] | None = None):
        self.binary = str(binary or os.environ.get("XMPPD_BIN") or DEFAULT_BIN)
        self.storage = (storage or os.environ.get("XMPPD_STORAGE") or "sqlite").lower()
        if self.storage not in ("sqlite", "postgres"):
            raise HarnessError(f"XMPPD_STORAGE must be sqlite or postgres, not {self.storage!r}")
        self.pg_base_url = os.environ.get("XMPPD_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
        self.registration_open = registration_open
        self.max_stanza_bytes = max_stanza_bytes
        self.pool_size = pool_size
        self.domain = domain
        self.log_level = log_level or os.environ.get("XMPPD_LOG_LEVEL", "debug")
        # Extra config tables, e.g. {"c2s": {"resume_timeout": 2},
        # "modules.offline": {"max_per_user": 5}}; keys of [registration] and
        # [limits] given here override the harness's own.
        self.extra_config = {k: dict(v) for k, v in (config or {}).items()}
        self.version_name = "xmppd"
        self.proc: subprocess.Popen | None = None
        self.tmp: Path | None = None
        self.http_port = 0
        self.component_port = 0
        self.pg_db: str | None = None
        self._pool: list[Account] = []
        self._counter = 0
        self._stderr = None

    # ------------------------------------------------------------ setup
    def start(self) -> "XmppdServer":
        if not Path(self.binary).is_file():
            raise HarnessError(f"xmppd binary not found at {self.binary} (set XMPPD_BIN)")
        self.tmp = Path(tempfile.mkdtemp(prefix="xmppd-conformance-"))
        (self.tmp / "data").mkdir()
        self.starttls_port, self.tls_port, http_port, component_port = free_ports(4)
        # With component services configured (`config={"components": {"services":
        # [{"domain": ..., "secret": ...}]}}`) and no port given, their XEP-0114
        # listener goes on a free loopback port too.
        self._component_port_free = self._wants_component_port()
        self.component_port = component_port if self._component_port_free else 0
        # Newer xmppd builds also serve HTTP (default 0.0.0.0:5280/5443): keep
        # it on loopback and on a free port so servers can run side by side.
        self.http_port = http_port if "http" not in self.extra_config and self._accepts("[http]\nlisteners = []") else 0
        if self.storage == "postgres":
            url, self.pg_db = create_pg_database(self.pg_base_url)
        else:
            url = f"sqlite://{self.tmp / 'xmppd.db'}"
        self.storage_url = url
        self.config_path = self.tmp / "xmppd.toml"
        self.config_path.write_text(self.render_config())
        for i in range(self.pool_size):
            self._pool.append(self._create_account(f"user{i + 1:02d}"))
        for attempt in range(3):
            try:
                self._spawn()
                return self
            except HarnessError as e:
                # A "free" port taken by someone else between our probe and the
                # server's bind (other processes on the machine): new ports, again.
                if "Address already in use" not in str(e) or attempt == 2:
                    self.stop()  # no leftover temp dir or scratch database
                    raise
                self.starttls_port, self.tls_port, http_port, component_port = free_ports(4)
                self.http_port = http_port if self.http_port else 0
                self.component_port = component_port if self._component_port_free else 0
                self.config_path.write_text(self.render_config())
        return self

    def render_config(self) -> str:
        tables: dict[str, dict] = {
            "registration": {"open": self.registration_open},
            "limits": {"max_stanza_bytes": self.max_stanza_bytes},
        }
        if "s2s" not in self.extra_config and self._accepts("[s2s]\nenabled = false"):
            # No federation in these runs (and no port 5269 to collide on).
            tables["s2s"] = {"enabled": False}
        for name, opts in self.extra_config.items():
            tables.setdefault(name, {}).update(opts)
        if self.component_port:
            tables["components"] = {"address": LOOPBACK, "port": self.component_port, **tables["components"]}
        lines = [
            f"hosts = [{toml_str(self.domain)}]",
            f"data_dir = {toml_str(str(self.tmp / 'data'))}",
            f"log_level = {toml_str(self.log_level)}",
            "",
            "[storage]",
            f"url = {toml_str(self.storage_url)}",
            "",
            "[[listeners]]",
            f"address = {toml_str(LOOPBACK)}",
            f"port = {self.starttls_port}",
            'tls = "starttls"',
            "",
            "[[listeners]]",
            f"address = {toml_str(LOOPBACK)}",
            f"port = {self.tls_port}",
            'tls = "direct"',
            "",
        ]
        for name, opts in tables.items():
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in opts.items())
            lines.append("")
        if self.http_port:
            lines += ["[http]",
                      f"listeners = [{{ address = {toml_str(LOOPBACK)}, port = {self.http_port}, tls = false }}]",
                      ""]
        return "\n".join(lines)

    def _wants_component_port(self) -> bool:
        comp = self.extra_config.get("components", {})
        return bool(comp.get("services")) and "port" not in comp

    _accepted: dict = {}

    def _accepts(self, snippet: str) -> bool:
        """Does this binary's `check-config` accept a config with `snippet`?
        (Cached per binary; used to configure optional newer features.)"""
        key = (self.binary, snippet)
        if key not in XmppdServer._accepted:
            assert self.tmp is not None
            probe = self.tmp / "probe.toml"
            probe.write_text(f"hosts = [{toml_str(self.domain)}]\n"
                             f"data_dir = {toml_str(str(self.tmp / 'probe-data'))}\n{snippet}\n")
            cp = self.cli("check-config", check=False, config=probe)
            probe.unlink()
            XmppdServer._accepted[key] = cp.returncode == 0
        return XmppdServer._accepted[key]

    def cli(self, *args: str, input: str | None = None, check: bool = True,
            config: Path | None = None) -> subprocess.CompletedProcess:
        cmd = [self.binary, "--config", str(config or self.config_path), *args]
        cp = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=CLI_TIMEOUT)
        if check and cp.returncode != 0:
            raise HarnessError(
                f"{shlex.join(cmd)} exited {cp.returncode}\nstdout: {cp.stdout}\nstderr: {cp.stderr}"
            )
        return cp

    def _create_account(self, localpart: str) -> Account:
        password = f"pw-{localpart}-{secrets.token_hex(4)}"
        acct = Account(localpart, self.domain, password)
        self.cli("user", "add", acct.jid, "--password", password)
        return acct

    def account(self, hint: str = "user") -> Account:
        if self._pool:
            return self._pool.pop(0)
        # Pool exhausted: create one through the CLI while the server runs.
        self._counter += 1
        return self._create_account(f"{hint}x{self._counter:02d}")

    # ------------------------------------------------------------ process
    def _spawn(self) -> None:
        assert self.tmp is not None
        self._stderr = open(self.tmp / "xmppd.stderr.log", "ab")
        self._stderr.write(f"==== harness: starting {self.binary} serve ====\n".encode())
        self._stderr.flush()
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(
            [self.binary, "--config", str(self.config_path), "serve"],
            stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr,
            env=env, start_new_session=True,
        )
        try:
            wait_for_ports(LOOPBACK, [self.starttls_port, self.tls_port, self.http_port, self.component_port],
                           STARTUP_TIMEOUT,
                           alive=lambda: self.proc is not None and self.proc.poll() is None)
        except HarnessError as e:
            tail = self.log_since(0)[-6000:]
            self._terminate()
            raise HarnessError(f"{e}\n--- xmppd stderr ---\n{tail}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _terminate(self, grace: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        rc = self.proc.returncode
        self.proc = None
        if self._stderr:
            self._stderr.write(f"==== harness: xmppd exited with {rc} ====\n".encode())
            self._stderr.close()
            self._stderr = None
        return rc

    def restart(self) -> None:
        self._terminate()
        self._spawn()

    def ensure_running(self) -> str | None:
        if self.alive():
            return None
        rc = self.proc.returncode if self.proc else None
        self._terminate()
        self._spawn()
        return f"xmppd had exited (code {rc}); the harness restarted it"

    def stop(self) -> None:
        self._terminate()
        if self.pg_db:
            drop_pg_database(self.pg_base_url, self.pg_db)
            self.pg_db = None
        if self.tmp and not os.environ.get("XMPPD_KEEP_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def log_path(self) -> Path | None:
        return self.tmp / "xmppd.stderr.log" if self.tmp else None


class ExternalServer(Server):
    """An already running server described by XMPP_* environment variables."""

    kind = "external"

    def __init__(self) -> None:
        e = os.environ
        self.host = e.get("XMPP_HOST", LOOPBACK)
        self.domain = e.get("XMPP_DOMAIN", "localhost")
        self.starttls_port = int(e.get("XMPP_STARTTLS_PORT", "5222"))
        self.tls_port = int(e.get("XMPP_TLS_PORT") or 0)
        self.max_stanza_bytes = int(e.get("XMPP_MAX_STANZA_BYTES", "262144"))
        self.registration_open = e.get("XMPP_REGISTRATION_OPEN", "0") in ("1", "true", "yes")
        self.version_name = e.get("XMPP_VERSION_NAME") or None
        self.known_differences = frozenset(
            t.strip() for t in e.get("XMPP_KNOWN_DIFFERENCES", "").split(",") if t.strip()
        )
        self.add_cmd = e.get("XMPP_ADD_USER_CMD", "")
        self.del_cmd = e.get("XMPP_DEL_USER_CMD", "")
        self.restart_cmd = e.get("XMPP_RESTART_CMD", "")
        self.can_restart = bool(self.restart_cmd)
        self._log = Path(e["XMPP_LOG_FILE"]) if e.get("XMPP_LOG_FILE") else None
        self._fixed: list[Account] = []
        for item in e.get("XMPP_USERS", "").split():
            jid, _, pw = item.partition(":")
            local, _, dom = jid.partition("@")
            self._fixed.append(Account(local, dom or self.domain, pw))
        self._created: list[Account] = []
        if not self.add_cmd and not self._fixed:
            raise HarnessError("external target needs XMPP_ADD_USER_CMD or XMPP_USERS")

    def start(self) -> "ExternalServer":
        wait_for_ports(self.host, [self.starttls_port, self.tls_port], STARTUP_TIMEOUT)
        return self

    def _run(self, template: str, **kw: str) -> None:
        cmd = template.format(**{k: shlex.quote(v) for k, v in kw.items()})
        cp = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=CLI_TIMEOUT)
        if cp.returncode != 0:
            raise HarnessError(f"`{cmd}` exited {cp.returncode}: {cp.stdout}{cp.stderr}")

    def account(self, hint: str = "user") -> Account:
        if self.add_cmd:
            local = f"{hint}-{secrets.token_hex(3)}"
            acct = Account(local, self.domain, f"pw-{secrets.token_hex(6)}")
            self._run(self.add_cmd, user=acct.localpart, domain=acct.domain,
                      jid=acct.jid, password=acct.password)
            self._created.append(acct)
            return acct
        if not self._fixed:
            import pytest  # only reachable under pytest
            pytest.skip("XMPP_USERS exhausted (set XMPP_ADD_USER_CMD for fresh accounts)")
        return self._fixed.pop(0)

    def restart(self) -> None:
        if not self.restart_cmd:
            raise HarnessError("XMPP_RESTART_CMD not set")
        self._run(self.restart_cmd)
        wait_for_ports(self.host, [self.starttls_port, self.tls_port], STARTUP_TIMEOUT)

    def stop(self) -> None:
        if self.del_cmd:
            for a in self._created:
                try:
                    self._run(self.del_cmd, user=a.localpart, domain=a.domain, jid=a.jid,
                              password=a.password)
                except Exception as e:
                    print(f"harness: could not delete {a.jid}: {e}", file=sys.stderr)
        self._created.clear()

    def log_path(self) -> Path | None:
        return self._log


def target() -> str:
    t = os.environ.get("XMPP_TARGET", "xmppd").lower()
    if t not in ("xmppd", "external"):
        raise HarnessError(f"XMPP_TARGET must be xmppd or external, not {t!r}")
    return t


def start_server(*, registration_open: bool = False, **kw) -> Server:
    if target() == "external":
        return ExternalServer().start()
    return XmppdServer(registration_open=registration_open, **kw).start()


# --------------------------------------------------------------------------- CLI
def _main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="start a server, run a command against it, stop it")
    run.add_argument("--registration-open", action="store_true")
    run.add_argument("--accounts", type=int, default=10)
    run.add_argument("command", nargs=argparse.REMAINDER)
    serve = sub.add_parser("serve", help="start a server and print its settings until Ctrl-C")
    serve.add_argument("--registration-open", action="store_true")
    serve.add_argument("--accounts", type=int, default=4)
    args = ap.parse_args()

    command = [c for c in getattr(args, "command", [])]
    if command and command[0] == "--":
        command = command[1:]
    if args.cmd == "run" and not command:
        ap.error("run needs a command after --")

    # Stop the server on SIGTERM/SIGINT too (background jobs ignore SIGINT).
    def _terminate(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    try:
        srv = start_server(registration_open=args.registration_open,
                           **({"pool_size": args.accounts} if target() == "xmppd" else {}))
    except HarnessError as e:
        print(f"harness: {e}", file=sys.stderr)
        return 2
    try:
        accounts = srv.accounts(*[f"js{i}" for i in range(args.accounts)])
        env = dict(os.environ)
        env.update(srv.env(accounts))
        env.setdefault("NODE_TLS_REJECT_UNAUTHORIZED", "0")
        env.setdefault("NODE_NO_WARNINGS", "1")
        if args.cmd == "serve":
            for k, v in srv.env(accounts).items():
                print(f"export {k}={shlex.quote(v)}")
            if isinstance(srv, XmppdServer):
                print(f"# config: {srv.config_path}  log: {srv.log_path()}")
            sys.stdout.flush()
            while True:
                time.sleep(3600)
        rc = subprocess.call(command, env=env, cwd=HERE)
        if rc != 0 and srv.log_path():
            print(f"\n---- {srv.kind} log (tail) ----\n{srv.log_since(0)[-12000:]}", file=sys.stderr)
        return rc
    finally:
        srv.stop()


if __name__ == "__main__":
    sys.exit(_main())
