"""The logins both sides of the AUTH unit tests use: clear, hashed, and non-ASCII."""

from __future__ import annotations

from smtppeer.engine import sasl
from smtppeer.engine.sasl import Credentials

USERS = {
    "alice": Credentials("alice", password="alice-pw"),
    "hashed": Credentials("hashed", secret=sasl.parse_secret(sasl.hash_password("hashed-pw", 4096))),
    "grüße": Credentials("grüße", password="pässwörd"),
}
PASSWORDS = {"alice": "alice-pw", "hashed": "hashed-pw", "grüße": "pässwörd"}
MECHANISMS = ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"]
# Every (mechanism, user) pair that can work: CRAM-MD5 needs the clear password.
LOGINS = [(m, u) for m in MECHANISMS for u in PASSWORDS if not (m == "CRAM-MD5" and u == "hashed")]


def lookup(username: str) -> Credentials | None:
    return USERS.get(username)
