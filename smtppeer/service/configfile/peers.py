"""``[peers.NAME]``, ``[users.NAME]`` and ``[tls]``: who this host talks to,
who may log in, and the certificate it offers."""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any

from smtppeer.peer.tls import endpoint_host as _endpoint_host

from ..config import TLS_POLICIES, TLS_VERIFY, Config, Peer, SendMode, TLSFiles, TlsPolicy, User
from .errors import Key, _show, _ssl_why, _why
from .values import _PEER_NAME, Values

# A user's login: a name like a peer's (with "+"), or an address, as many mail setups use.
# Nothing SASL would have to escape (SCRAM's "," and "="), no spaces (CRAM-MD5).
SEND_MODES = tuple(SendMode)

_LOGIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*(@[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)?")


class Peers(Values):
    def tls(self, value: Any) -> TLSFiles:
        """The files as the service loads them: every certificate, then the key, and that they match."""
        from OpenSSL.crypto import FILETYPE_PEM  # noqa: PLC0415 -- only for files that have [tls]
        from twisted.internet.ssl import KeyPair, PrivateCertificate  # noqa: PLC0415

        key: Key = ("tls",)
        self.table(value, key, ("certificate", "key"))
        for name, what in (
            ("certificate", "the PEM certificate, with its chain"),
            ("key", "its PEM private key"),
        ):
            if name not in value:
                raise self.error(key, f'missing "{name}" ({what})')
        files = TLSFiles(
            certificate=os.path.expanduser(self.string(value["certificate"], (*key, "certificate")).strip()),
            key=os.path.expanduser(self.string(value["key"], (*key, "key")).strip()),
        )
        cert_pem = self.read_file(files.certificate, (*key, "certificate"))
        key_pem = self.read_file(files.key, (*key, "key"))
        [own, *_] = self.certificates(cert_pem, files.certificate, (*key, "certificate"), "a PEM certificate")
        if any(mark in key_pem for mark in (b"-----BEGIN ENCRYPTED", b"Proc-Type: 4,ENCRYPTED")):
            # (OpenSSL would ask for the passphrase on the terminal)
            raise self.error(
                (*key, "key"), f"{_show(files.key)} is encrypted: give the key without a passphrase"
            )
        try:
            pair = KeyPair.load(key_pem, FILETYPE_PEM)
        except Exception as e:  # noqa: BLE001 -- OpenSSL.crypto.Error
            raise self.error(
                (*key, "key"), f"{_show(files.key)} is not a PEM private key ({_ssl_why(e)})"
            ) from None
        try:  # what PrivateCertificate.loadPEM(certificate + key) does, with each file's own part
            PrivateCertificate.fromCertificateAndKeyPair(own, pair)
        except Exception as e:  # noqa: BLE001 -- VerifyError: they do not match
            raise self.error(
                (*key, "key"),
                f"{_show(files.key)} is not the key of {_show(files.certificate)} ({_ssl_why(e)})",
            ) from None
        return files

    def certificates(self, pem: bytes, path: str, key: Key, what: str) -> list:
        """Every certificate in a PEM file (twisted ``Certificate``s); at least one."""
        from twisted.internet.ssl import Certificate  # noqa: PLC0415

        end = b"-----END CERTIFICATE-----"
        blocks = [block + end + b"\n" for block in pem.split(end) if b"-----BEGIN CERTIFICATE-----" in block]
        if not blocks:
            raise self.error(key, f"{_show(path)} is not {what} (no -----BEGIN CERTIFICATE----- in it)")
        certificates = []
        for i, block in enumerate(blocks):
            try:
                certificates.append(Certificate.loadPEM(block))
            except Exception as e:  # noqa: BLE001 -- OpenSSL.crypto.Error
                which = (
                    f"certificate {i + 1} of {len(blocks)} in" if len(blocks) > 1 else "the certificate in"
                )
                raise self.error(key, f"{which} {_show(path)} is broken ({_ssl_why(e)})") from None
        return certificates

    def read_file(self, path: str, key: Key) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise self.error(key, f"cannot read {_show(path)}: {e.strerror or e}") from None

    def peers(self, value: Any) -> dict[str, Peer]:
        self.check(value, ("peers",), dict, "a table of peers ([peers.NAME])")
        peers: dict[str, Peer] = {}
        for name, spec in value.items():
            key: Key = ("peers", name)
            if not _PEER_NAME.fullmatch(name):
                raise self.error(key, f"{_show(name)} is not a peer name (letters, digits, '.', '_', '-')")
            self.table(spec, key, self.PEER)
            peer = Peer(name)
            peer.domains = self.array(
                spec.get("domains", []),
                (*key, "domains"),
                lambda v, k: self.domain(self.string(v, k), k, pattern=True),
            )
            peer.addresses = self.array(spec.get("addresses", []), (*key, "addresses"), self.address)
            for where in ("endpoint", "odmr_endpoint"):
                if where in spec:
                    setattr(peer, where, self.string(spec[where], (*key, where)).strip())
                    self.client_endpoint(getattr(peer, where), (*key, where))
            self.credentials(spec, key, peer)
            if "username" in spec:
                peer.username = self.string(spec["username"], (*key, "username"))
                for other in peers.values():
                    if other.username == peer.username:
                        raise self.error(
                            (*key, "username"),
                            f'{_show(peer.username)} is also peer "{other.name}"\'s: '
                            "a login name must be one peer's or one user's",
                        )
            if peer.username is None and (peer.password is not None or peer.password_hash is not None):
                given = "password" if peer.password is not None else "password_hash"
                raise self.error((*key, "username"), f"missing: {given} needs a username")
            if peer.username is not None and peer.password is None and peer.password_hash is None:
                raise self.error((*key, "password"), "missing: username needs password (or password_hash)")
            self.peer_tls(spec, key, peer)
            if "send" in spec:
                text = self.string(spec["send"], (*key, "send")).strip().lower()
                if text not in SEND_MODES:
                    modes = " or ".join(f'"{m}"' for m in SEND_MODES)
                    raise self.error((*key, "send"), f"{_show(spec['send'])} is not a send mode: {modes}")
                peer.send = SendMode(text)
            for i, address in enumerate(peer.addresses):
                for other in peers.values():
                    if address in other.addresses:
                        raise self.error(
                            (*key, "addresses", i),
                            f'{address} is also peer "{other.name}"\'s: a caller must be one peer',
                        )
            peers[name] = peer
        return peers

    PEER = (
        "domains",
        "addresses",
        "endpoint",
        "odmr_endpoint",
        "username",
        "password",
        "password_hash",
        "tls",
        "ca_file",
        "tls_name",
        "send",
    )

    def credentials(self, spec: dict[str, Any], key: Key, who: Peer | User) -> None:
        """``password`` or ``password_hash`` (not both) into ``who``."""
        if "password" in spec and "password_hash" in spec:
            raise self.error((*key, "password_hash"), "give password or password_hash, not both")
        if "password" in spec:
            who.password = self.string(spec["password"], (*key, "password"), empty=isinstance(who, Peer))
        if "password_hash" in spec:
            from smtppeer.engine.sasl import parse_secret  # noqa: PLC0415 -- scramp only when a hash is given

            hkey: Key = (*key, "password_hash")
            who.password_hash = self.string(spec["password_hash"], hkey).strip()
            try:
                parse_secret(who.password_hash)
            except ValueError as e:
                raise self.error(hkey, f"{_why(e)} (smtppeer hash-password writes one)") from None

    def peer_tls(self, spec: dict[str, Any], key: Key, peer: Peer) -> None:
        if "tls" in spec:
            text = self.string(spec["tls"], (*key, "tls")).strip().lower()
            if text not in TLS_POLICIES:
                policies = ", ".join(f'"{p}"' for p in TLS_POLICIES[:-1]) + f' or "{TLS_POLICIES[-1]}"'
                raise self.error((*key, "tls"), f"{_show(spec['tls'])} is not a TLS policy: {policies}")
            peer.tls = TlsPolicy(text)
        for name in ("ca_file", "tls_name"):
            if name in spec and peer.tls != TLS_VERIFY:
                raise self.error((*key, name), f'only for tls = "verify" (this peer\'s tls is "{peer.tls}")')
        if "ca_file" in spec:
            peer.ca_file = os.path.expanduser(self.string(spec["ca_file"], (*key, "ca_file")).strip())
            self.ca_file(peer.ca_file, (*key, "ca_file"))
        if "tls_name" in spec:
            name = self.string(spec["tls_name"], (*key, "tls_name")).strip()
            try:
                name = str(ipaddress.ip_address(name))
            except ValueError:
                name = self.domain(name, (*key, "tls_name"))
            peer.tls_name = name
        elif peer.tls == TLS_VERIFY:
            for endpoint in (peer.endpoint, peer.odmr_endpoint):
                if endpoint is not None and not _endpoint_host(endpoint):
                    raise self.error(
                        (*key, "tls_name"),
                        f"missing: the endpoint {_show(endpoint)} names no host to verify "
                        "the certificate for",
                    )

    def ca_file(self, path: str, key: Key) -> None:
        self.certificates(self.read_file(path, key), path, key, "a file of PEM certificates")

    def users(self, value: Any, config: Config) -> dict[str, User]:
        self.check(value, ("users",), dict, "a table of users ([users.NAME])")
        users: dict[str, User] = {}
        logins = {p.username: p.name for p in config.peers.values() if p.username is not None}
        for name, spec in value.items():
            key: Key = ("users", name)
            if not _LOGIN_NAME.fullmatch(name):
                rule = "letters, digits, '.', '_', '+', '-'; or an address"
                raise self.error(key, f"{_show(name)} is not a login name ({rule})")
            if name in logins:
                raise self.error(
                    key,
                    f'"{name}" is also peer "{logins[name]}"\'s username: '
                    "a login name must be one peer's or one user's",
                )
            self.table(spec, key, ("password", "password_hash"))
            user = User(name)
            self.credentials(spec, key, user)
            if user.password is None and user.password_hash is None:
                raise self.error(key, 'missing "password" (or "password_hash", from smtppeer hash-password)')
            users[name] = user
        return users
