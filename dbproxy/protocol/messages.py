"""Decoders (and the few encoders the proxy needs) for the messages dbproxy observes.

Every decoder takes a message body as captured by :mod:`dbproxy.protocol.framing`,
which may be cut short (``len(body) < length``); decoders therefore never assume a
terminator is present and never raise on short or malformed input: they return what
they could read.  Text is decoded with the connection's client_encoding and
``errors="replace"``.
"""

from __future__ import annotations

import codecs
import datetime
import struct
import uuid
from dataclasses import dataclass

from dbproxy.protocol import codes

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")

# PostgreSQL encoding names (as reported in ParameterStatus client_encoding) → Python.
_PG_ENCODINGS = {
    "UTF8": "utf-8",
    "UNICODE": "utf-8",
    "SQL_ASCII": "latin-1",  # bytes as they are; latin-1 never fails
    "LATIN1": "latin-1",
    "LATIN2": "iso8859-2",
    "LATIN9": "iso8859-15",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "KOI8R": "koi8-r",
    "EUC_JP": "euc-jp",
    "EUC_KR": "euc-kr",
    "SJIS": "shift-jis",
    "BIG5": "big5",
    "GBK": "gbk",
    "GB18030": "gb18030",
}


def python_encoding(pg_encoding: str) -> str:
    """The Python codec for a PostgreSQL client_encoding (UTF-8 when unknown)."""
    name = _PG_ENCODINGS.get(pg_encoding.upper().replace("-", "_"), "utf-8")
    try:
        codecs.lookup(name)
    except LookupError:  # pragma: no cover - all names above exist in CPython
        return "utf-8"
    return name


def read_cstring(body: bytes, pos: int, encoding: str = "utf-8") -> tuple[str, int]:
    """Read a NUL-terminated string at ``pos``; returns (text, position after the NUL)."""
    end = body.find(b"\x00", pos)
    if end < 0:
        return body[pos:].decode(encoding, "replace"), len(body)
    return body[pos:end].decode(encoding, "replace"), end + 1


# --- startup ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class StartupPacket:
    code: int
    params: dict[str, str]
    #: CancelRequest: backend pid and secret key (4 bytes in 3.0, up to 256 in 3.2)
    cancel_pid: int = 0
    cancel_key: bytes = b""


def decode_startup(body: bytes) -> StartupPacket:
    if len(body) < 4:
        return StartupPacket(code=0, params={})
    (code,) = _UINT32.unpack_from(body, 0)
    if code == codes.CANCEL_REQUEST_CODE:
        pid = _INT32.unpack_from(body, 4)[0] if len(body) >= 8 else 0
        return StartupPacket(code=code, params={}, cancel_pid=pid, cancel_key=body[8:])
    params: dict[str, str] = {}
    if code >> 16 == 3:
        pos = 4
        while pos < len(body) and body[pos] != 0:
            name, pos = read_cstring(body, pos)
            value, pos = read_cstring(body, pos)
            params[name] = value
    return StartupPacket(code=code, params=params)


# --- frontend ----------------------------------------------------------------------------
def decode_query(body: bytes, encoding: str) -> str:
    return read_cstring(body, 0, encoding)[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class ParseMessage:
    name: str
    query: str
    param_type_oids: tuple[int, ...]


def decode_parse(body: bytes, encoding: str) -> ParseMessage:
    name, pos = read_cstring(body, 0, encoding)
    query, pos = read_cstring(body, pos, encoding)
    oids: tuple[int, ...] = ()
    if pos + 2 <= len(body):
        (count,) = _INT16.unpack_from(body, pos)
        pos += 2
        if count > 0 and pos + 4 * count <= len(body):
            oids = struct.unpack_from(f"!{count}I", body, pos)
    return ParseMessage(name=name, query=query, param_type_oids=oids)


def decode_bind(body: bytes, encoding: str) -> tuple[str, str]:
    """(portal, statement) of a Bind."""
    portal, pos = read_cstring(body, 0, encoding)
    statement, _ = read_cstring(body, pos, encoding)
    return portal, statement


_PG_EPOCH = datetime.datetime(2000, 1, 1)
_PG_EPOCH_DATE = datetime.date(2000, 1, 1)


def _binary_text(oid: int, data: bytes, encoding: str) -> str | None:
    """The text form of a binary-format value of the common types; None for others."""
    if oid in (20, 21, 23, 26):  # int8, int2, int4, oid
        return str(int.from_bytes(data, "big", signed=oid != 26))
    if oid in (25, 1043, 1042, 19, 114, 705):  # text, varchar, bpchar, name, json, unknown
        return data.decode(encoding)
    if oid == 3802 and data[:1] == b"\x01":  # jsonb: version 1, then the text
        return data[1:].decode(encoding)
    if oid == 16:
        return "t" if data == b"\x01" else "f"
    if oid == 700:
        return repr(struct.unpack("!f", data)[0])
    if oid == 701:
        return repr(struct.unpack("!d", data)[0])
    if oid == 2950 and len(data) == 16:
        return str(uuid.UUID(bytes=data))
    if oid == 1082:
        days = struct.unpack("!i", data)[0]
        return (_PG_EPOCH_DATE + datetime.timedelta(days=days)).isoformat()
    if oid in (1114, 1184):  # timestamp, timestamptz (UTC)
        micros = struct.unpack("!q", data)[0]
        text = (_PG_EPOCH + datetime.timedelta(microseconds=micros)).isoformat(" ")
        return text + "+00" if oid == 1184 else text
    return None


def decode_bind_values(
    body: bytes, encoding: str, param_type_oids: tuple[int, ...] = ()
) -> tuple[str | None, ...] | None:
    """A Bind's parameter values as text (None: SQL NULL) when the body was captured whole
    and every binary-format value has a type decoded here (``param_type_oids``: the Parse's
    types); otherwise None.

    Only the opt-in sampler (``--sample-analyze``) asks for these; they are never logged."""
    try:
        pos = body.index(0) + 1  # portal
        pos = body.index(0, pos) + 1  # statement
        nformats = _INT16.unpack_from(body, pos)[0]
        pos += 2
        formats = [_INT16.unpack_from(body, pos + 2 * i)[0] for i in range(nformats)]
        pos += 2 * nformats
        nparams = _INT16.unpack_from(body, pos)[0]
        pos += 2
        values: list[str | None] = []
        for i in range(nparams):
            size = _INT32.unpack_from(body, pos)[0]
            pos += 4
            if size < 0:
                values.append(None)
                continue
            if pos + size > len(body):
                return None
            data = body[pos : pos + size]
            pos += size
            binary = formats[0] if nformats == 1 else formats[i] if nformats else 0
            if not binary:
                values.append(data.decode(encoding))
                continue
            oid = param_type_oids[i] if i < len(param_type_oids) else 0
            text = _binary_text(oid, data, encoding)
            if text is None:
                return None
            values.append(text)
    except (ValueError, IndexError, struct.error, UnicodeDecodeError):
        return None
    return tuple(values)


def decode_execute(body: bytes, encoding: str) -> tuple[str, int]:
    """(portal, max_rows) of an Execute; max_rows 0 means no limit."""
    portal, pos = read_cstring(body, 0, encoding)
    max_rows = _INT32.unpack_from(body, pos)[0] if pos + 4 <= len(body) else 0
    return portal, max_rows


def decode_target(body: bytes, encoding: str) -> tuple[int, str]:
    """(kind, name) of a Describe or Close: kind is ord('S') or ord('P')."""
    if not body:
        return 0, ""
    name, _ = read_cstring(body, 1, encoding)
    return body[0], name


def decode_function_call(body: bytes) -> int:
    return _UINT32.unpack_from(body, 0)[0] if len(body) >= 4 else 0


# --- backend -----------------------------------------------------------------------------
def decode_command_complete(body: bytes) -> tuple[str, int | None]:
    """(command, rows) of a CommandComplete tag: ``INSERT 0 5`` → ("INSERT", 5)."""
    tag = read_cstring(body, 0, "ascii")[0]
    head, _, last = tag.rpartition(" ")
    if head and last.isdigit():
        command = head.split(" ", 1)[0] if head.startswith("INSERT ") else head
        return command, int(last)
    return tag, None


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorFields:
    severity: str
    sqlstate: str
    message: str
    #: character position (1-based) in the query string, when the server gave one
    position: int | None = None


def decode_error(body: bytes, encoding: str = "utf-8") -> ErrorFields:
    """Decode an ErrorResponse/NoticeResponse.  ``V`` (non-localised) wins over ``S``."""
    fields: dict[str, str] = {}
    pos = 0
    n = len(body)
    while pos < n and body[pos] != 0:
        code = chr(body[pos])
        value, pos = read_cstring(body, pos + 1, encoding)
        fields[code] = value
    position = fields.get("P")
    return ErrorFields(
        severity=fields.get("V") or fields.get("S", ""),
        sqlstate=fields.get("C", ""),
        message=fields.get("M", ""),
        position=int(position) if position and position.isdigit() else None,
    )


def decode_parameter_status(body: bytes) -> tuple[str, str]:
    name, pos = read_cstring(body, 0)
    value, _ = read_cstring(body, pos)
    return name, value


def decode_backend_key_data(body: bytes) -> tuple[int, bytes]:
    if len(body) < 4:
        return 0, b""
    return _INT32.unpack_from(body, 0)[0], body[4:]


def decode_authentication(body: bytes) -> int:
    return _INT32.unpack_from(body, 0)[0] if len(body) >= 4 else -1


# --- encoders for what the proxy says itself ---------------------------------------------
def encode_error_response(
    *, severity: str, sqlstate: str, message: str, detail: str | None = None
) -> bytes:
    """An ErrorResponse as the server would send it (S, V, C, M and optional D fields)."""
    parts = [
        b"S" + severity.encode() + b"\x00",
        b"V" + severity.encode() + b"\x00",
        b"C" + sqlstate.encode() + b"\x00",
        b"M" + message.encode("utf-8", "replace") + b"\x00",
    ]
    if detail:
        parts.append(b"D" + detail.encode("utf-8", "replace") + b"\x00")
    payload = b"".join(parts) + b"\x00"
    return b"E" + _UINT32.pack(len(payload) + 4) + payload


def encode_startup(params: dict[str, str], code: int = codes.PROTOCOL_3_0) -> bytes:
    payload = _UINT32.pack(code)
    for name, value in params.items():
        payload += name.encode() + b"\x00" + value.encode() + b"\x00"
    payload += b"\x00"
    return _UINT32.pack(len(payload) + 4) + payload


def encode_message(msg_type: int, payload: bytes) -> bytes:
    return bytes((msg_type,)) + _UINT32.pack(len(payload) + 4) + payload
