"""Builders for PostgreSQL protocol messages, for feeding the session machine in tests.

Written from the protocol documentation ("Message Formats"), independent of the
decoders under test.
"""

from __future__ import annotations

import struct


def _msg(type_char: str, payload: bytes = b"") -> bytes:
    return type_char.encode() + struct.pack("!I", len(payload) + 4) + payload


def _cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


# --- client → server -----------------------------------------------------------------
def startup(user: str = "alice", database: str = "shop", **params: str) -> bytes:
    payload = struct.pack("!I", 196608) + _cstr("user") + _cstr(user)
    payload += _cstr("database") + _cstr(database)
    for name, value in params.items():
        payload += _cstr(name) + _cstr(value)
    payload += b"\x00"
    return struct.pack("!I", len(payload) + 4) + payload


def ssl_request() -> bytes:
    return struct.pack("!II", 8, 80877103)


def cancel_request(pid: int, key: bytes = b"\x00\x00\x00\x01") -> bytes:
    payload = struct.pack("!Ii", 80877102, pid) + key
    return struct.pack("!I", len(payload) + 4) + payload


def password(secret: str = "pw") -> bytes:
    return _msg("p", _cstr(secret))


def query(sql: str) -> bytes:
    return _msg("Q", _cstr(sql))


def parse(sql: str, name: str = "", oids: tuple[int, ...] = ()) -> bytes:
    return _msg(
        "P",
        _cstr(name)
        + _cstr(sql)
        + struct.pack("!h", len(oids))
        + b"".join(struct.pack("!I", o) for o in oids),
    )


def bind(statement: str = "", portal: str = "", params: tuple[bytes, ...] = ()) -> bytes:
    payload = _cstr(portal) + _cstr(statement) + struct.pack("!h", 0)
    payload += struct.pack("!h", len(params))
    for p in params:
        payload += struct.pack("!i", len(p)) + p
    payload += struct.pack("!h", 0)
    return _msg("B", payload)


def describe(kind: str = "P", name: str = "") -> bytes:
    return _msg("D", kind.encode() + _cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return _msg("E", _cstr(portal) + struct.pack("!i", max_rows))


def close(kind: str, name: str) -> bytes:
    return _msg("C", kind.encode() + _cstr(name))


def sync() -> bytes:
    return _msg("S")


def flush() -> bytes:
    return _msg("H")


def terminate() -> bytes:
    return _msg("X")


def function_call(oid: int) -> bytes:
    return _msg("F", struct.pack("!Ih", oid, 0) + struct.pack("!h", 0) + struct.pack("!h", 0))


def copy_data(data: bytes) -> bytes:
    return _msg("d", data)


def copy_done() -> bytes:
    return _msg("c")


# --- server → client -----------------------------------------------------------------
def auth_ok() -> bytes:
    return _msg("R", struct.pack("!i", 0))


def auth_sasl() -> bytes:
    return _msg("R", struct.pack("!i", 10) + _cstr("SCRAM-SHA-256") + b"\x00")


def parameter_status(name: str, value: str) -> bytes:
    return _msg("S", _cstr(name) + _cstr(value))


def backend_key(pid: int, key: int = 1234) -> bytes:
    return _msg("K", struct.pack("!ii", pid, key))


def ready(status: str = "I") -> bytes:
    return _msg("Z", status.encode())


def row_description(*names: str) -> bytes:
    payload = struct.pack("!h", len(names))
    for n in names:
        payload += _cstr(n) + struct.pack("!IhIhih", 0, 0, 23, 4, -1, 0)
    return _msg("T", payload)


def data_row(*values: bytes | None) -> bytes:
    payload = struct.pack("!h", len(values))
    for v in values:
        payload += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return _msg("D", payload)


def command_complete(tag: str) -> bytes:
    return _msg("C", _cstr(tag))


def error(sqlstate: str, message: str, severity: str = "ERROR") -> bytes:
    payload = (
        b"S"
        + _cstr(severity)
        + b"V"
        + _cstr(severity)
        + b"C"
        + _cstr(sqlstate)
        + b"M"
        + _cstr(message)
        + b"\x00"
    )
    return _msg("E", payload)


def notice(message: str) -> bytes:
    return _msg(
        "N", b"S" + _cstr("NOTICE") + b"C" + _cstr("00000") + b"M" + _cstr(message) + b"\x00"
    )


def notification(pid: int, channel: str, payload: str) -> bytes:
    return _msg("A", struct.pack("!i", pid) + _cstr(channel) + _cstr(payload))


def parse_complete() -> bytes:
    return _msg("1")


def bind_complete() -> bytes:
    return _msg("2")


def close_complete() -> bytes:
    return _msg("3")


def no_data() -> bytes:
    return _msg("n")


def parameter_description(*oids: int) -> bytes:
    return _msg("t", struct.pack("!h", len(oids)) + b"".join(struct.pack("!I", o) for o in oids))


def portal_suspended() -> bytes:
    return _msg("s")


def empty_query() -> bytes:
    return _msg("I")


def copy_in_response() -> bytes:
    return _msg("G", struct.pack("!bh", 0, 0))


def copy_out_response() -> bytes:
    return _msg("H", struct.pack("!bh", 0, 0))


def copy_both_response() -> bytes:
    return _msg("W", struct.pack("!bh", 0, 0))


def function_result(value: bytes) -> bytes:
    return _msg("V", struct.pack("!i", len(value)) + value)


def server_hello(pid: int = 4242) -> bytes:
    """What a server sends after a successful login, up to ReadyForQuery."""
    return (
        auth_ok()
        + parameter_status("server_version", "18.1")
        + parameter_status("client_encoding", "UTF8")
        + backend_key(pid)
        + ready("I")
    )
