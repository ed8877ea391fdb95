"""SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, and its SASL messages
(sans-I/O: no sockets, no clocks; the nonce source is passed in).

Used when the proxy authenticates a client itself (TLS on both legs, see
``dbproxy.proxy.auth``): it plays the server towards the client with a stored secret
(``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, as in ``pg_authid``),
recovers the client's ``ClientKey`` from its proof (``ClientProof XOR ClientSignature``)
and plays the client towards the upstream with that key — no plaintext password.

Channel binding: ``tls-server-end-point`` (RFC 5929), the hash of the server's DER
certificate with the hash of its signature algorithm (SHA-256 for MD5 and SHA-1), read by
the small DER walk in :func:`certificate_signature_hash`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from dataclasses import dataclass

from dbproxy.errors import ProtocolError

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
CBIND_TYPE = "tls-server-end-point"

# Authentication request codes (the int32 after 'R').
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_INT32 = struct.Struct("!i")


class ScramError(ProtocolError):
    """A SCRAM exchange that must stop (bad message, wrong proof, unusable secret)."""


@dataclass(frozen=True, slots=True)
class ScramSecret:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def __repr__(self) -> str:  # never print keys
        return f"ScramSecret(iterations={self.iterations}, salt=<{len(self.salt)} bytes>)"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ScramError("invalid base64 in SCRAM message") from None


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def parse_secret(text: str) -> ScramSecret:
    """A ``pg_authid.rolpassword`` SCRAM secret; :class:`ScramError` for anything else
    (an md5 hash or a plaintext password cannot be used)."""
    try:
        mech, iter_salt, keys = text.strip().split("$")
        iterations_text, salt_text = iter_salt.split(":")
        stored_text, server_text = keys.split(":")
        iterations = int(iterations_text)
    except ValueError:
        raise ScramError("not a SCRAM-SHA-256 secret") from None
    if mech != MECHANISM or iterations < 1:
        raise ScramError("not a SCRAM-SHA-256 secret")
    stored, server = _unb64(stored_text), _unb64(server_text)
    if len(stored) != 32 or len(server) != 32:
        raise ScramError("not a SCRAM-SHA-256 secret")
    return ScramSecret(iterations, _unb64(salt_text), stored, server)


def make_secret(password: str, salt: bytes, iterations: int = 4096) -> tuple[str, ScramSecret]:
    """The secret PostgreSQL would store (for tests and auth files; no SASLprep beyond
    ASCII)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    stored = hashlib.sha256(client_key).digest()
    server = _hmac(salted, b"Server Key")
    text = f"{MECHANISM}${iterations}:{_b64(salt)}${_b64(stored)}:{_b64(server)}"
    return text, ScramSecret(iterations, salt, stored, server)


def client_key_from_password(password: str, salt: bytes, iterations: int) -> bytes:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return _hmac(salted, b"Client Key")


def _attributes(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError(f"malformed SCRAM attribute {part[:1]!r}")
        out.setdefault(part[0], part[2:])
    return out


# --------------------------------------------------------------------- server role
@dataclass(frozen=True, slots=True)
class ClientFirst:
    gs2_header: str  # "n,,", "y,," or "p=tls-server-end-point,,"
    cbind_flag: str  # "n", "y" or "p"
    bare: str  # "n=…,r=…"
    nonce: str


def parse_client_first(data: bytes) -> ClientFirst:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ScramError("non-ASCII client-first-message") from None
    parts = text.split(",", 2)
    if len(parts) != 3:
        raise ScramError("malformed client-first-message")
    flag, authzid, bare = parts
    if flag not in ("n", "y") and flag != f"p={CBIND_TYPE}":
        raise ScramError(f"unsupported channel binding flag {flag!r}")
    if authzid:
        raise ScramError("authorization identities are not supported")
    attrs = _attributes(bare)
    nonce = attrs.get("r", "")
    if not nonce or "m" in attrs:
        raise ScramError("malformed client-first-message")
    return ClientFirst(f"{flag},{authzid},", flag[0], bare, nonce)


def server_first(client_nonce: str, server_nonce: str, secret: ScramSecret) -> str:
    return f"r={client_nonce}{server_nonce},s={_b64(secret.salt)},i={secret.iterations}"


@dataclass(frozen=True, slots=True)
class ClientFinal:
    without_proof: str
    channel_binding: bytes
    nonce: str
    proof: bytes


def parse_client_final(data: bytes) -> ClientFinal:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ScramError("non-ASCII client-final-message") from None
    without_proof, sep, proof_part = text.rpartition(",p=")
    if not sep:
        raise ScramError("client-final-message without proof")
    attrs = _attributes(without_proof)
    if "c" not in attrs or "r" not in attrs:
        raise ScramError("malformed client-final-message")
    proof = _unb64(proof_part)
    if len(proof) != 32:
        raise ScramError("malformed client proof")
    return ClientFinal(without_proof, _unb64(attrs["c"]), attrs["r"], proof)


def verify_client_proof(secret: ScramSecret, auth_message: str, proof: bytes) -> bytes | None:
    """The client's ``ClientKey`` when its proof is right, else None."""
    signature = _hmac(secret.stored_key, auth_message.encode("ascii"))
    client_key = _xor(proof, signature)
    if not hmac.compare_digest(hashlib.sha256(client_key).digest(), secret.stored_key):
        return None
    return client_key


def server_final(secret: ScramSecret, auth_message: str) -> str:
    return "v=" + _b64(_hmac(secret.server_key, auth_message.encode("ascii")))


def expected_channel_binding(gs2_header: str, cbind_data: bytes) -> bytes:
    """What ``c=`` must decode to: the GS2 header, plus the binding data for ``p``."""
    return gs2_header.encode("ascii") + (cbind_data if gs2_header.startswith("p=") else b"")


# --------------------------------------------------------------------- client role
@dataclass(slots=True)
class ScramClient:
    """The proxy logging in upstream with a recovered ``ClientKey``."""

    client_key: bytes
    nonce: str
    cbind_data: bytes | None = None  # set: use SCRAM-SHA-256-PLUS
    server_key: bytes | None = None  # known: the server's signature is checked
    _first_bare: str = ""
    _auth_message: str = ""

    @property
    def mechanism(self) -> str:
        return MECHANISM_PLUS if self.cbind_data is not None else MECHANISM

    @property
    def gs2_header(self) -> str:
        # "n": the proxy picks PLUS whenever the server offers it and it can bind
        return f"p={CBIND_TYPE},," if self.cbind_data is not None else "n,,"

    def first(self) -> bytes:
        self._first_bare = f"n=,r={self.nonce}"
        return (self.gs2_header + self._first_bare).encode("ascii")

    def final(self, server_first_data: bytes, *, salt: bytes, iterations: int) -> bytes:
        """The client-final-message; raises when the server's salt or iteration count is
        not the secret's (the recovered key only fits the identical secret)."""
        text = server_first_data.decode("ascii", "replace")
        attrs = _attributes(text)
        nonce = attrs.get("r", "")
        if not nonce.startswith(self.nonce) or len(nonce) == len(self.nonce):
            raise ScramError("the server's nonce does not extend ours")
        if _unb64(attrs.get("s", "")) != salt or attrs.get("i") != str(iterations):
            raise ScramError(
                "the server's SCRAM salt or iteration count differs from the secret the "
                "proxy holds for this user (auth_file out of date?)"
            )
        cbind = expected_channel_binding(self.gs2_header, self.cbind_data or b"")
        without_proof = f"c={_b64(cbind)},r={nonce}"
        self._auth_message = f"{self._first_bare},{text},{without_proof}"
        stored_key = hashlib.sha256(self.client_key).digest()
        proof = _xor(self.client_key, _hmac(stored_key, self._auth_message.encode("ascii")))
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def check_final(self, server_final_data: bytes) -> None:
        if self.server_key is None:
            return
        expected = server_final_data_for(self.server_key, self._auth_message)
        if not hmac.compare_digest(server_final_data, expected):
            raise ScramError("the upstream server's SCRAM signature is wrong")


def server_final_data_for(server_key: bytes, auth_message: str) -> bytes:
    return ("v=" + _b64(_hmac(server_key, auth_message.encode("ascii")))).encode("ascii")


# --------------------------------------------------------------------- SASL messages
def encode_auth(code: int, payload: bytes = b"") -> bytes:
    body = _INT32.pack(code) + payload
    return b"R" + _INT32.pack(len(body) + 4) + body


def encode_sasl_mechanisms(mechanisms: list[str]) -> bytes:
    return encode_auth(AUTH_SASL, b"".join(m.encode() + b"\x00" for m in mechanisms) + b"\x00")


def decode_sasl_mechanisms(payload: bytes) -> list[str]:
    return [m.decode("ascii", "replace") for m in payload.split(b"\x00") if m]


def encode_sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    body = mechanism.encode() + b"\x00" + _INT32.pack(len(data)) + data
    return b"p" + _INT32.pack(len(body) + 4) + body


def decode_sasl_initial_response(body: bytes) -> tuple[str, bytes]:
    end = body.find(b"\x00")
    if end < 0 or len(body) < end + 5:
        raise ScramError("malformed SASLInitialResponse")
    mechanism = body[:end].decode("ascii", "replace")
    (length,) = _INT32.unpack_from(body, end + 1)
    data = body[end + 5 :]
    if length != len(data):
        raise ScramError("malformed SASLInitialResponse")
    return mechanism, data


def encode_sasl_response(data: bytes) -> bytes:
    return b"p" + _INT32.pack(len(data) + 4) + data


def split_message(buf: bytes | bytearray, max_length: int = 1 << 20) -> tuple[int, bytes] | None:
    """The typed message at the start of ``buf`` as ``(type, body)``, None until whole."""
    if len(buf) < 5:
        return None
    (length,) = _INT32.unpack_from(buf, 1)
    if length < 4 or length > max_length:
        raise ScramError(f"invalid message length {length} during authentication")
    if len(buf) < length + 1:
        return None
    return buf[0], bytes(buf[5 : length + 1])


# --------------------------------------------------------------------- certificates
# DER-encoded OBJECT IDENTIFIER contents of signature algorithms → hash for RFC 5929.
_SIG_HASHES: dict[bytes, str] = {
    bytes.fromhex("2a864886f70d010104"): "sha256",  # md5WithRSAEncryption → SHA-256
    bytes.fromhex("2a864886f70d010105"): "sha256",  # sha1WithRSAEncryption → SHA-256
    bytes.fromhex("2a864886f70d01010e"): "sha224",
    bytes.fromhex("2a864886f70d01010b"): "sha256",
    bytes.fromhex("2a864886f70d01010c"): "sha384",
    bytes.fromhex("2a864886f70d01010d"): "sha512",
    bytes.fromhex("2a8648ce3d0401"): "sha256",  # ecdsa-with-SHA1 → SHA-256
    bytes.fromhex("2a8648ce3d040301"): "sha224",
    bytes.fromhex("2a8648ce3d040302"): "sha256",
    bytes.fromhex("2a8648ce3d040303"): "sha384",
    bytes.fromhex("2a8648ce3d040304"): "sha512",
    bytes.fromhex("2a8648ce380403"): "sha256",  # dsa-with-sha1 → SHA-256
    bytes.fromhex("608648016503040302"): "sha256",  # dsa-with-sha256
}


def _der_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """``(tag, content_start, content_end)`` of the DER element at ``pos``."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[pos]
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def certificate_signature_hash(der: bytes) -> str:
    """The hash ``tls-server-end-point`` uses for this certificate; ValueError when its
    signature algorithm has none (Ed25519, RSASSA-PSS: PostgreSQL refuses those too)."""
    tag, start, _end = _der_tlv(der, 0)  # Certificate SEQUENCE
    if tag != 0x30:
        raise ValueError("not a DER certificate")
    tag, _tbs_start, tbs_end = _der_tlv(der, start)  # tbsCertificate
    tag, alg_start, _alg_end = _der_tlv(der, tbs_end)  # signatureAlgorithm SEQUENCE
    if tag != 0x30:
        raise ValueError("not a DER certificate")
    tag, oid_start, oid_end = _der_tlv(der, alg_start)
    if tag != 0x06:
        raise ValueError("not a DER certificate")
    name = _SIG_HASHES.get(der[oid_start:oid_end])
    if name is None:
        raise ValueError("certificate signature algorithm has no tls-server-end-point hash")
    return name


def tls_server_end_point(der: bytes) -> bytes:
    """RFC 5929 channel-binding data for a DER certificate."""
    return hashlib.new(certificate_signature_hash(der), der).digest()
