"""SCRAM-SHA-256 maths and SASL codecs (dbproxy.protocol.scram) against RFC 7677."""

from __future__ import annotations

import base64
import contextlib
import hashlib

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from dbproxy.protocol import scram

# RFC 7677 section 3 (user "user", password "pencil")
CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = (
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")


def _secret() -> scram.ScramSecret:
    text, secret = scram.make_secret("pencil", SALT, 4096)
    assert scram.parse_secret(text) == secret
    return secret


def test_server_role_verifies_the_rfc_7677_exchange() -> None:
    secret = _secret()
    first = scram.parse_client_first(CLIENT_FIRST)
    assert (first.cbind_flag, first.nonce) == ("n", "rOprNGfwEbeRWgbNEkqO")
    server_first = scram.server_first(first.nonce, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", secret)
    assert server_first == SERVER_FIRST
    final = scram.parse_client_final(CLIENT_FINAL)
    assert final.channel_binding == scram.expected_channel_binding(first.gs2_header, b"")
    auth_message = f"{first.bare},{server_first},{final.without_proof}"
    client_key = scram.verify_client_proof(secret, auth_message, final.proof)
    assert client_key == scram.client_key_from_password("pencil", SALT, 4096)
    assert scram.server_final(secret, auth_message) == SERVER_FINAL


def test_a_wrong_proof_recovers_no_key() -> None:
    secret = _secret()
    final = scram.parse_client_final(CLIENT_FINAL)
    first = scram.parse_client_first(CLIENT_FIRST)
    auth_message = f"{first.bare},{SERVER_FIRST},{final.without_proof}"
    bad = bytes([final.proof[0] ^ 1]) + final.proof[1:]
    assert scram.verify_client_proof(secret, auth_message, bad) is None
    _, other = scram.make_secret("not pencil", SALT, 4096)
    assert scram.verify_client_proof(other, auth_message, final.proof) is None


def test_client_role_reproduces_the_rfc_7677_proof_from_the_client_key() -> None:
    secret = _secret()
    key = scram.client_key_from_password("pencil", SALT, 4096)
    client = scram.ScramClient(key, "rOprNGfwEbeRWgbNEkqO", server_key=secret.server_key)
    assert client.first() == b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"  # PostgreSQL: empty user name
    final = client.final(SERVER_FIRST.encode(), salt=SALT, iterations=4096)
    # the proof differs from the RFC's only through n= (the user name is in AuthMessage)
    parsed = scram.parse_client_final(final)
    am = f"n=,r=rOprNGfwEbeRWgbNEkqO,{SERVER_FIRST},{parsed.without_proof}"
    assert scram.verify_client_proof(secret, am, parsed.proof) == key
    client.check_final(scram.server_final(secret, am).encode())
    with pytest.raises(scram.ScramError):
        client.check_final(SERVER_FINAL.encode())


def test_client_role_refuses_another_salt_or_iteration_count() -> None:
    key = scram.client_key_from_password("pencil", SALT, 4096)
    client = scram.ScramClient(key, "rOprNGfwEbeRWgbNEkqO")
    client.first()
    with pytest.raises(scram.ScramError, match="salt or iteration"):
        client.final(SERVER_FIRST.encode(), salt=SALT, iterations=8192)
    with pytest.raises(scram.ScramError, match="nonce"):
        client.final(b"r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", salt=SALT, iterations=4096)


def test_channel_binding_header_and_data() -> None:
    first = scram.parse_client_first(b"p=tls-server-end-point,,n=,r=abc")
    assert first.cbind_flag == "p"
    assert scram.expected_channel_binding(first.gs2_header, b"HASH") == (
        b"p=tls-server-end-point,,HASH"
    )
    client = scram.ScramClient(b"k" * 32, "abc", cbind_data=b"HASH")
    assert client.mechanism == scram.MECHANISM_PLUS
    assert client.first().startswith(b"p=tls-server-end-point,,")
    for bad in (b"p=tls-unique,,n=,r=x", b"n,a=someone,n=,r=x", b"n,,n=,", b"x"):
        with pytest.raises(scram.ScramError):
            scram.parse_client_first(bad)


@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA])
def test_tls_server_end_point_uses_the_certificate_signature_hash(
    key_type: trustme.KeyType,
) -> None:
    ca = trustme.CA(key_type=key_type)
    leaf = ca.issue_cert("localhost", key_type=key_type)
    der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(Encoding.DER)
    cert = x509.load_der_x509_certificate(der)
    assert cert.signature_hash_algorithm is not None
    name = cert.signature_hash_algorithm.name
    assert scram.certificate_signature_hash(der) == name
    assert scram.tls_server_end_point(der) == hashlib.new(name, der).digest()
    with pytest.raises(ValueError):
        scram.certificate_signature_hash(der[:40])


def test_sasl_message_codecs_round_trip() -> None:
    msg = scram.encode_sasl_mechanisms([scram.MECHANISM_PLUS, scram.MECHANISM])
    parsed = scram.split_message(msg + b"rest")
    assert parsed is not None and parsed[0] == ord("R")
    assert scram.decode_sasl_mechanisms(parsed[1][4:]) == [scram.MECHANISM_PLUS, scram.MECHANISM]
    initial = scram.encode_sasl_initial_response(scram.MECHANISM, CLIENT_FIRST)
    parsed = scram.split_message(initial)
    assert parsed is not None
    assert scram.decode_sasl_initial_response(parsed[1]) == (scram.MECHANISM, CLIENT_FIRST)
    assert scram.split_message(initial[:-1]) is None
    with pytest.raises(scram.ScramError):
        scram.split_message(b"p\x00\x00\x00\x01")


def test_parse_secret_refuses_md5_and_plaintext() -> None:
    for text in ("md5" + "0" * 32, "secret", "SCRAM-SHA-256$0:AAAA$AAAA:AAAA"):
        with pytest.raises(scram.ScramError):
            scram.parse_secret(text)
    assert "salt" in repr(_secret()) and "stored" not in repr(_secret()).lower()


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_parsers_raise_only_their_documented_errors(data: bytes) -> None:
    """Whatever a client sends, the SCRAM codecs fail with ScramError (DER: ValueError)."""
    for parse in (
        scram.parse_client_first,
        scram.parse_client_final,
        scram.decode_sasl_initial_response,
        scram.split_message,
    ):
        with contextlib.suppress(scram.ScramError):
            parse(data)
    with contextlib.suppress(ValueError):
        scram.certificate_signature_hash(data)
    with contextlib.suppress(scram.ScramError):
        scram.parse_secret(data.decode("latin-1"))
