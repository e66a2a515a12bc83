"""smtppeer make-cert: a self-signed certificate Twisted's TLS accepts, with the name in it."""

from __future__ import annotations

import stat

from cryptography import x509
from twisted.internet import ssl

from .conftest import smtppeer


def test_make_cert_writes_a_usable_certificate_and_a_private_key(tmp_path):
    cert, key = tmp_path / "peer.pem", tmp_path / "peer.key"
    done = smtppeer("make-cert", "--hostname", "peer.test", str(cert), str(key))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["peer.test"]
    options = ssl.PrivateCertificate.loadPEM(cert.read_text() + key.read_text()).options()
    assert options.getContext() is not None  # pyOpenSSL takes the pair


def test_make_cert_for_an_ip_address(tmp_path):
    from smtppeer.peer.tls import make_self_signed

    make_self_signed("127.0.0.1", str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    parsed = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
