"""TLS material: the STARTTLS contexts, and a self-signed certificate for a lab
(``smtppeer make-cert``).

A production peer uses a certificate from its CA; an integration lab with
many peers on one machine needs one quickly, with the host name in the
subject alternative names so that verifying clients accept it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from smtppeer.twisted_private import parse_endpoint


def make_self_signed(hostname: str, cert_path: str, key_path: str, days: int = 825) -> None:
    """Write a self-signed certificate (PEM) for ``hostname`` and its key (PEM, mode 0600)."""
    # imported here: a running service never needs them, and they are not small
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        alt = x509.DNSName(hostname)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def server_options(certificate_path: str, key_path: str):
    """The STARTTLS server side: the certificate file's first certificate, the rest as its chain."""
    from twisted.internet import ssl  # noqa: PLC0415 - pyOpenSSL only when TLS is configured

    with open(certificate_path, "rb") as f:
        certificates = _pem_blocks(f.read())
    with open(key_path, "rb") as f:
        key = f.read()
    own = ssl.PrivateCertificate.loadPEM(certificates[0] + key)
    chain = [ssl.Certificate.loadPEM(c).original for c in certificates[1:]]
    return ssl.CertificateOptions(
        privateKey=own.privateKey.original, certificate=own.original, extraCertChain=chain or None
    )


def client_options(name: str, ca_file: str | None = None):
    """STARTTLS as a client that verifies: the certificate must be valid for ``name``
    under ``ca_file`` (or the system's trust roots)."""
    from twisted.internet import ssl  # noqa: PLC0415

    if ca_file is not None:
        with open(ca_file, "rb") as f:
            roots = [ssl.Certificate.loadPEM(c) for c in _pem_blocks(f.read())]
        trust = ssl.trustRootFromCertificates(roots)
    else:
        trust = ssl.platformTrust()
    return ssl.optionsForClientTLS(name, trustRoot=trust)


def _pem_blocks(data: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    blocks = [block + end + b"\n" for block in data.split(end) if b"-----BEGIN CERTIFICATE-----" in block]
    if not blocks:
        raise ValueError("no PEM certificate found")
    return blocks


def endpoint_host(description: str) -> str:
    """The host a client endpoint description connects to (``tcp:host=H:port=P``,
    ``tcp:H:P``): the name to check a certificate against; "" for UNIX sockets."""
    args, kwargs = parse_endpoint(description)
    if args and str(args[0]).lower() in ("unix", "unix-abstract"):
        return ""
    return str(kwargs.get("host") or (args[1] if len(args) > 1 else ""))
