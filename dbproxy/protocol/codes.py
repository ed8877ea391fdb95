"""Message-type bytes, startup request codes and limits of the PostgreSQL protocol.

Names follow the protocol documentation ("Message Formats").  Type bytes are ints so
that ``data[i]`` can be compared without creating a one-byte ``bytes`` object.
"""

from __future__ import annotations

from typing import Final

# --- startup-phase request codes (the int32 after the length) -------------------------
PROTOCOL_3_0: Final = 3 << 16
PROTOCOL_3_2: Final = (3 << 16) | 2
SSL_REQUEST_CODE: Final = 80877103
GSSENC_REQUEST_CODE: Final = 80877104
CANCEL_REQUEST_CODE: Final = 80877102

#: The server refuses a startup packet whose body (length - 4) is longer than this
#: (MAX_STARTUP_PACKET_LENGTH in pqcomm.h; checked as ``len - 4 > 10000`` in backend_startup.c).
MAX_STARTUP_PACKET_LENGTH: Final = 10_000
#: Largest regular message the server accepts (PQ_LARGE_MESSAGE_LIMIT, MaxAllocSize - 1).
MAX_MESSAGE_LENGTH: Final = 0x3FFFFFFF - 1

#: First byte of a TLS ClientHello: a PostgreSQL 17 ``sslnegotiation=direct`` client.
TLS_HANDSHAKE_BYTE: Final = 0x16

# --- frontend (client → server) message types ----------------------------------------
BIND: Final = ord("B")
CLOSE: Final = ord("C")
COPY_DATA: Final = ord("d")
COPY_DONE: Final = ord("c")
COPY_FAIL: Final = ord("f")
DESCRIBE: Final = ord("D")
EXECUTE: Final = ord("E")
FLUSH: Final = ord("H")
FUNCTION_CALL: Final = ord("F")
PARSE: Final = ord("P")
PASSWORD: Final = ord("p")  # also SASLInitialResponse, SASLResponse, GSSResponse
QUERY: Final = ord("Q")
SYNC: Final = ord("S")
TERMINATE: Final = ord("X")

# --- backend (server → client) message types -----------------------------------------
AUTHENTICATION: Final = ord("R")
BACKEND_KEY_DATA: Final = ord("K")
BIND_COMPLETE: Final = ord("2")
CLOSE_COMPLETE: Final = ord("3")
COMMAND_COMPLETE: Final = ord("C")
COPY_IN_RESPONSE: Final = ord("G")
COPY_OUT_RESPONSE: Final = ord("H")
COPY_BOTH_RESPONSE: Final = ord("W")
DATA_ROW: Final = ord("D")
EMPTY_QUERY_RESPONSE: Final = ord("I")
ERROR_RESPONSE: Final = ord("E")
FUNCTION_CALL_RESPONSE: Final = ord("V")
NEGOTIATE_PROTOCOL_VERSION: Final = ord("v")
NO_DATA: Final = ord("n")
NOTICE_RESPONSE: Final = ord("N")
NOTIFICATION_RESPONSE: Final = ord("A")
PARAMETER_DESCRIPTION: Final = ord("t")
PARAMETER_STATUS: Final = ord("S")
PARSE_COMPLETE: Final = ord("1")
PORTAL_SUSPENDED: Final = ord("s")
READY_FOR_QUERY: Final = ord("Z")
ROW_DESCRIPTION: Final = ord("T")

# --- ReadyForQuery transaction status --------------------------------------------------
TX_IDLE: Final = ord("I")
TX_IN_BLOCK: Final = ord("T")
TX_FAILED: Final = ord("E")

# --- SQLSTATEs the proxy itself sends ---------------------------------------------------
SQLSTATE_CONNECTION_FAILURE: Final = "08006"
SQLSTATE_PROTOCOL_VIOLATION: Final = "08P01"
SQLSTATE_ADMIN_SHUTDOWN: Final = "57P01"
SQLSTATE_CANNOT_CONNECT_NOW: Final = "57P03"
SQLSTATE_INVALID_AUTHORIZATION: Final = "28000"  # e.g. TLS required
SQLSTATE_INVALID_PASSWORD: Final = "28P01"
SQLSTATE_TOO_MANY_CONNECTIONS: Final = "53300"
SQLSTATE_IDLE_SESSION_TIMEOUT: Final = "57P05"
SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT: Final = "25P03"
