"""TLS contexts of the proxy (dbproxy.proxy.tls.TlsSettings) and their reload."""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from dbproxy.config import ProxyConfig
from dbproxy.errors import ConfigError
from dbproxy.observe.sink import QueueSink
from dbproxy.proxy.server import ProxyServer
from dbproxy.proxy.tls import TlsSettings


def _files(tmp_path: Path, name: str, ca: trustme.CA) -> tuple[str, str]:
    leaf = ca.issue_cert("localhost", common_name=name)
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def test_client_context_and_its_channel_binding(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = _files(tmp_path, "one", ca)
    config = replace(ProxyConfig(), client_tls="require", client_tls_cert=cert, client_tls_key=key)
    tls = TlsSettings(config)
    assert tls.client is not None and tls.upstream is None
    der = ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
    assert tls.client_cbind == hashlib.sha256(der).digest()  # ECDSA with SHA-256


def test_reload_keeps_the_old_context_on_a_bad_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = _files(tmp_path, "one", ca)
    config = replace(ProxyConfig(), client_tls="allow", client_tls_cert=cert, client_tls_key=key)
    tls = TlsSettings(config)
    before, cbind = tls.client, tls.client_cbind
    Path(key).write_text("garbage\n")
    assert tls.reload() is False
    assert tls.client is before and tls.client_cbind == cbind
    other_cert, other_key = _files(tmp_path, "two", ca)
    Path(cert).write_text(Path(other_cert).read_text())
    Path(key).write_text(Path(other_key).read_text())
    assert tls.reload() is True
    assert tls.client is not before and tls.client_cbind != cbind


@pytest.mark.parametrize(
    ("mode", "verify", "hostname"),
    [
        ("prefer", ssl.CERT_NONE, False),
        ("require", ssl.CERT_NONE, False),
        ("verify-ca", ssl.CERT_REQUIRED, False),
        ("verify-full", ssl.CERT_REQUIRED, True),
    ],
)
def test_upstream_modes(tmp_path: Path, mode: str, verify: int, hostname: bool) -> None:
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    tls = TlsSettings(replace(ProxyConfig(), upstream_tls=mode, upstream_tls_ca=str(ca_file)))
    assert tls.upstream is not None and tls.client is None
    assert (tls.upstream.verify_mode, tls.upstream.check_hostname) == (verify, hostname)


def test_unreadable_certificate_is_a_config_error(tmp_path: Path) -> None:
    config = replace(
        ProxyConfig(),
        client_tls="require",
        client_tls_cert=str(tmp_path / "missing.crt"),
        client_tls_key=str(tmp_path / "missing.key"),
    )
    with pytest.raises(ConfigError, match="cannot load TLS certificates"):
        ProxyServer(config, QueueSink())
