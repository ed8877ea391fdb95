"""Where the proxy listens and how it reaches the upstream: TCP (IPv4, IPv6) and Unix sockets.

An :class:`~dbproxy.config.Address` whose host is an absolute path is a Unix-socket
directory, as in libpq (``host=/var/run/postgresql``): the socket is
``DIR/.s.PGSQL.<port>``.

Listening (``--listen`` one or more TCP addresses, ``--listen-unix DIR``):

* every TCP address gets its own server socket; a later address with port 0 takes the
  port the first one got, so ``--listen 127.0.0.1:0,[::1]:0`` is one port on both;
* the Unix socket is named after the first TCP port (``psql -h DIR -p PORT``), created
  with ``--listen-unix-mode`` (0777 as PostgreSQL's ``unix_socket_permissions``: the
  directory's own permissions decide who may connect), refused when another live process
  answers on it, replaced when it is a stale file, and removed on shutdown;
* with ``--workers N`` the TCP sockets use ``SO_REUSEPORT`` (each worker its own socket,
  the kernel spreads connections); a Unix path can be bound only once, so worker 0 binds
  it and the other workers accept on the same socket, inherited (``inherit_unix``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable
from typing import TypeVar

from dbproxy.config import Address, ProxyConfig
from dbproxy.errors import ConfigError

log = logging.getLogger(__name__)

_P = TypeVar("_P", bound=asyncio.BaseProtocol)


def is_unix(address: Address) -> bool:
    """A Unix-socket directory rather than a TCP host."""
    return address.host.startswith("/")


def unix_socket_path(directory: str, port: int) -> str:
    """libpq's socket name for ``host=directory port=port``."""
    return os.path.join(directory, f".s.PGSQL.{port}")


async def open_upstream(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], _P], address: Address
) -> tuple[asyncio.Transport, _P]:
    """Connect ``factory``'s protocol to ``address`` (TCP, or a Unix-socket directory)."""
    if is_unix(address):
        path = unix_socket_path(address.host, address.port)
        transport, protocol = await loop.create_unix_connection(factory, path)
    else:
        transport, protocol = await loop.create_connection(factory, address.host, address.port)
    return transport, protocol


async def open_stream(address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream connection to ``address`` (TCP, or a Unix-socket directory)."""
    if is_unix(address):
        return await asyncio.open_unix_connection(unix_socket_path(address.host, address.port))
    return await asyncio.open_connection(address.host, address.port)


async def probe(address: Address, timeout_s: float) -> str | None:
    """None when a connection to ``address`` opens within ``timeout_s``, else why not."""
    try:
        _reader, writer = await asyncio.wait_for(open_stream(address), timeout_s)
    except (OSError, TimeoutError) as exc:
        code = exc.errno if isinstance(exc, OSError) else None
        return os.strerror(code).lower() if code else "timed out"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


def bind_unix(path: str, mode: int) -> socket.socket:
    """A listening Unix socket at ``path``; refuses a path another process listens on."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(f"cannot listen on {path} (--listen-unix): not a socket")
        probe_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe_sock.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody accepts on it
        else:
            raise ConfigError(
                f"cannot listen on {path} (--listen-unix): another process is listening there"
            )
        finally:
            probe_sock.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise ConfigError(f"cannot listen on {path} (--listen-unix): {reason}") from None
    sock.setblocking(False)
    return sock


class Listeners:
    """The proxy's listening sockets (TCP addresses, the optional Unix socket)."""

    def __init__(self, config: ProxyConfig) -> None:
        self._config = config
        self.servers: list[asyncio.Server] = []
        self.addresses: list[Address] = []
        self.unix_path: str | None = None
        #: the listening Unix socket (worker 0 binds it, other workers are handed it)
        self.unix_socket: socket.socket | None = None
        self._unix_owner = False
        self._unix_inode: tuple[int, int] | None = None

    def inherit_unix(self, sock: socket.socket) -> None:
        """Accept on worker 0's Unix socket instead of binding one (``--workers N``)."""
        self.unix_socket = sock

    async def start(self, factory: Callable[[], asyncio.BaseProtocol]) -> None:
        loop = asyncio.get_running_loop()
        config = self._config
        port = 0
        try:
            for address in (config.listen, *config.listen_also):
                wanted = address.port or port
                try:
                    server = await loop.create_server(
                        factory,
                        address.host,
                        wanted,
                        reuse_address=True,
                        # --workers N: every worker listens on the same port; the kernel
                        # spreads new connections over them
                        reuse_port=config.workers > 1 or None,
                        backlog=1024,
                    )
                except OSError as exc:
                    code = exc.errno
                    reason = os.strerror(code).lower() if code else str(exc)
                    if code == errno.EADDRNOTAVAIL and ":" in address.host:
                        reason += " (is IPv6 enabled on this host?)"
                    raise ConfigError(f"cannot listen on {address}: {reason}") from None
                self.servers.append(server)
                bound = server.sockets[0].getsockname()
                self.addresses.append(Address(str(bound[0]), int(bound[1])))
                port = port or int(bound[1])
            if config.listen_unix is not None:
                await self._start_unix(loop, factory, port)
        except BaseException:
            self.close()
            raise

    async def _start_unix(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], asyncio.BaseProtocol],
        port: int,
    ) -> None:
        assert self._config.listen_unix is not None
        self.unix_path = unix_socket_path(self._config.listen_unix, port)
        if self.unix_socket is None:
            self.unix_socket = bind_unix(self.unix_path, self._config.listen_unix_mode)
            self._unix_owner = True
            st = os.stat(self.unix_path)
            self._unix_inode = (st.st_dev, st.st_ino)
        server = await loop.create_unix_server(factory, sock=self.unix_socket)
        self.servers.append(server)

    def close(self) -> None:
        """Stop accepting; the owner of the Unix socket removes its file."""
        for server in self.servers:
            server.close()
        if self._unix_owner and self.unix_path is not None:
            self._unix_owner = False
            with contextlib.suppress(OSError):
                st = os.stat(self.unix_path)
                if (st.st_dev, st.st_ino) == self._unix_inode:  # still ours
                    os.unlink(self.unix_path)

    async def wait_closed(self) -> None:
        for server in self.servers:
            await server.wait_closed()

    @property
    def serving(self) -> bool:
        return bool(self.servers) and all(s.is_serving() for s in self.servers)

    def describe(self) -> str:
        where = [str(a) for a in self.addresses]
        if self.unix_path is not None:
            where.append(self.unix_path)
        return ", ".join(where)
