"""SASL for SMTP AUTH (RFC 4954): PLAIN, LOGIN, CRAM-MD5 and SCRAM-SHA-256, both sides.

Pure on purpose: every function here takes and returns raw bytes (already
base64-decoded), so the receiver and sender can drive an exchange from their
own state machines and the tests need no sockets.  The SMTP framing (334
lines, ``*`` to cancel, 235/535) belongs to the callers.

SCRAM itself is scramp's; this module only adapts it to the SMTP exchange shape
and to the two ways a login can be stored: a clear password (every mechanism)
or an RFC 5803 SCRAM secret (everything but CRAM-MD5, which needs the password
as the HMAC key).

Unknown users follow the same path as a wrong password: the same number of
steps, and for SCRAM a plausible salt that does not change between attempts, so
that nothing sent to the client tells whether a user exists.  Only the Failure
reason, which is for the log, says which it was.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import scramp
from scramp.utils import saslprep

SERVER_MECHANISMS: tuple[str, ...] = ("SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN")
# Mechanisms that send the password itself: only under TLS unless allowed.
CLEAR_ONLY = frozenset({"PLAIN", "LOGIN"})
# Server-first mechanisms: RFC 4954 §4 wants a 501 when AUTH carries an initial
# response for one of these (the server exchange answers such a start with Failure).
NO_INITIAL_RESPONSE = frozenset({"CRAM-MD5"})
CLIENT_PREFERENCE = ("SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN")

_SCRAM_NAME = "SCRAM-SHA-256"
_SCRAM = scramp.ScramMechanism(_SCRAM_NAME)
# scramp refuses anything outside these (the maximum is its guard against a
# costly PBKDF2), so a secret outside them could never be served.
_MIN_ITERATIONS = 4096
_MAX_ITERATIONS = 10_000_000
_MIN_SALT = 12
_KEY_LENGTH = hashlib.sha256().digest_size
_SECRET_FORM = "expected 'SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>'"

# Keys the stand-in SCRAM salts (unknown users, clear passwords) so that they
# stay the same for a given name for the life of the process.
_PROCESS_KEY = secrets.token_bytes(32)


class SaslError(Exception):
    """A malformed message or a failed check (client side: bad server signature)."""


def _check_scram_params(iterations: int, salt: bytes) -> None:
    if type(iterations) is not int or not _MIN_ITERATIONS <= iterations <= _MAX_ITERATIONS:
        raise ValueError(
            f"SCRAM iteration count must be an integer from {_MIN_ITERATIONS} to {_MAX_ITERATIONS}, "
            f"not {iterations!r}"
        )
    if not isinstance(salt, bytes) or len(salt) < _MIN_SALT:
        raise ValueError(f"SCRAM salt must be at least {_MIN_SALT} bytes")


@dataclass(frozen=True)
class ScramSecret:
    """The RFC 5803 stored form of a SCRAM-SHA-256 login (no password needed to check one)."""

    iterations: int
    salt: bytes
    # Both keys are password-equivalent for an eavesdropper or an impostor server: keep them off logs.
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_scram_params(self.iterations, self.salt)
        for name in ("stored_key", "server_key"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != _KEY_LENGTH:
                raise ValueError(f"SCRAM-SHA-256 {name} must be {_KEY_LENGTH} bytes")


def _derive(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) for a password, SASLprep'd as the SCRAM client does."""
    try:
        _, stored_key, server_key, _ = _SCRAM.make_auth_info(password, iteration_count=iterations, salt=salt)
    except scramp.ScramException as err:
        raise ValueError(f"password unusable for SCRAM: {err}") from None
    return stored_key, server_key


def hash_password(password: str, iterations: int = 4096, salt: bytes | None = None) -> str:
    """RFC 5803 text: 'SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>'.

    The salt is 16 random bytes unless given.

    Raises ValueError for an iteration count or salt scramp would refuse to
    serve (fewer than 4096 iterations, a salt under 12 bytes), and for a
    password SASLprep prohibits.
    """
    if salt is None:
        salt = secrets.token_bytes(16)
    _check_scram_params(iterations, salt)
    stored_key, server_key = _derive(password, salt, iterations)
    salt_b64, stored_b64, server_b64 = (base64.b64encode(b).decode() for b in (salt, stored_key, server_key))
    return f"{_SCRAM_NAME}${iterations}:{salt_b64}${stored_b64}:{server_b64}"


def _b64_field(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError(f"malformed SCRAM secret: the {what} is not valid base64") from None


def parse_secret(text: str) -> ScramSecret:
    """The RFC 5803 text back as a ScramSecret; ValueError (one line, secret not echoed) when malformed."""
    parts = text.strip().split("$")
    if len(parts) != 3:
        raise ValueError(f"malformed SCRAM secret: {_SECRET_FORM}")
    scheme, params, keys = parts
    if scheme.upper() != _SCRAM_NAME:
        raise ValueError(f"unsupported SCRAM secret scheme {scheme[:30]!r}: only {_SCRAM_NAME} is supported")
    iter_text, sep1, salt_text = params.partition(":")
    stored_text, sep2, server_text = keys.partition(":")
    if not sep1 or not sep2:
        raise ValueError(f"malformed SCRAM secret: {_SECRET_FORM}")
    if not (iter_text.isascii() and iter_text.isdigit()):
        raise ValueError("malformed SCRAM secret: the iteration count is not a decimal number")
    return ScramSecret(
        iterations=int(iter_text),
        salt=_b64_field(salt_text, "salt"),
        stored_key=_b64_field(stored_text, "StoredKey"),
        server_key=_b64_field(server_text, "ServerKey"),
    )


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _prepared(password: str) -> bytes:
    """SASLprep'd UTF-8 (RFC 4616 §2 compares prepared strings); the raw text when SASLprep refuses it."""
    try:
        password = saslprep(password)
    except scramp.ScramException:
        pass
    return _utf8(password)


def _keyed(purpose: bytes, username: str) -> bytes:
    return hmac.new(_PROCESS_KEY, purpose + b"\0" + _utf8(username), hashlib.sha256).digest()


def _stable_salt(username: str) -> bytes:
    return _keyed(b"salt", username)[:16]


def _fake_scram_info(username: str) -> tuple[bytes, bytes, bytes, int]:
    """Auth info for a login SCRAM cannot check: looks real, stays put, matches no proof."""
    return _stable_salt(username), _keyed(b"stored", username), _keyed(b"server", username), _MIN_ITERATIONS


@dataclass(frozen=True)
class Credentials:
    """What the server knows about one login. At least one of the two is set.

    ``password`` (clear) works with every mechanism; ``secret`` (hashed) with
    PLAIN, LOGIN and SCRAM-SHA-256 but not CRAM-MD5.  When both are set they
    must agree: SCRAM uses the secret, everything else the password.
    """

    username: str
    password: str | None = field(default=None, repr=False)
    secret: ScramSecret | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.password is None and self.secret is None:
            raise ValueError(f"credentials for {self.username!r} need a password or a SCRAM secret")

    def check_password(self, password: str) -> bool:
        """Constant-time check of a presented password (PLAIN, LOGIN) against either form."""
        if self.password is not None:
            return hmac.compare_digest(_prepared(password), _prepared(self.password))
        assert self.secret is not None
        try:
            stored_key, _ = _derive(password, self.secret.salt, self.secret.iterations)
        except ValueError:
            return False
        return hmac.compare_digest(stored_key, self.secret.stored_key)

    def mechanisms(self) -> frozenset[str]:
        """Which of SERVER_MECHANISMS can work for this login."""
        if self.password is not None:
            return frozenset(SERVER_MECHANISMS)
        return frozenset(SERVER_MECHANISMS) - {"CRAM-MD5"}

    @functools.cached_property
    def _scram_info(self) -> tuple[bytes, bytes, bytes, int]:
        """scramp's auth info, computed once per Credentials (PBKDF2 is the costly part).

        From a clear password the salt is derived from the username, so that it
        does not change from one attempt to the next (a changing salt would
        mark the login as one stored in clear).  ValueError when SASLprep
        refuses the password.
        """
        if self.secret is not None:
            s = self.secret
            return s.salt, s.stored_key, s.server_key, s.iterations
        assert self.password is not None
        salt = _stable_salt(self.username)
        stored_key, server_key = _derive(self.password, salt, _MIN_ITERATIONS)
        return salt, stored_key, server_key, _MIN_ITERATIONS


Lookup = Callable[[str], "Credentials | None"]  # username -> credentials, None for unknown


@dataclass(frozen=True)
class Challenge:
    """Send ``data`` as a 334 challenge and pass the answer to ``respond``."""

    data: bytes


@dataclass(frozen=True)
class Success:
    """Authenticated as ``identity`` (the Credentials' username)."""

    identity: str


@dataclass(frozen=True)
class Failure:
    """For the log only; the client learns nothing from it (not even whether the user exists)."""

    reason: str


Step = Challenge | Success | Failure


@functools.cache
def _dummy() -> Credentials:
    """A hashed login to check unknown users' passwords against, so they cost the same PBKDF2."""
    stored_key, server_key = secrets.token_bytes(_KEY_LENGTH), secrets.token_bytes(_KEY_LENGTH)
    secret = ScramSecret(_MIN_ITERATIONS, secrets.token_bytes(16), stored_key, server_key)
    return Credentials("", secret=secret)


class _LookupFailed(Exception):
    """Carries an exception raised by the caller's lookup out through scramp."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class ServerExchange:
    """One AUTH exchange, server side: ``start`` once, then ``respond`` to each Challenge.

    Every malformed input ends in Failure, never an exception.  The one
    exception that does escape is the lookup's own: a broken user database is
    a temporary failure (454), not bad credentials (535), and only the caller
    can tell them apart.
    """

    mechanism = ""

    def __init__(self, lookup: Lookup) -> None:
        self._lookup = lookup
        self._started = False
        self._done = False

    def start(self, initial: bytes | None) -> Step:
        if self._done:
            return Failure("exchange already finished")
        if self._started:
            return self._guard(lambda: Failure("exchange already started"))
        self._started = True
        return self._guard(lambda: self._start(initial))

    def respond(self, data: bytes) -> Step:
        if self._done:
            return Failure("exchange already finished")
        if not self._started:
            return self._guard(lambda: Failure("respond() before start()"))
        return self._guard(lambda: self._respond(data))

    def _guard(self, step: Callable[[], Step]) -> Step:
        try:
            result = step()
        except _LookupFailed as wrapper:
            self._done = True
            raise wrapper.error from None
        except Exception as err:  # fail closed: a bug here must not let a session crash or pass
            result = Failure(f"{self.mechanism}: internal error: {type(err).__name__}: {err}")
        if not isinstance(result, Challenge):
            self._done = True
        return result

    def _find(self, username: str) -> Credentials | None:
        try:
            return self._lookup(username)
        except Exception as err:
            raise _LookupFailed(err) from err

    def _verify(self, username: str, password: str) -> Step:
        """The PLAIN / LOGIN check: unknown users pay the same hash as known ones."""
        creds = self._find(username)
        if creds is None:
            _dummy().check_password(password)
            return Failure(f"{self.mechanism}: unknown user {username!r}")
        if creds.check_password(password):
            return Success(creds.username)
        return Failure(f"{self.mechanism}: wrong password for {username!r}")

    def _start(self, initial: bytes | None) -> Step:
        raise NotImplementedError

    def _respond(self, data: bytes) -> Step:
        raise NotImplementedError


class _PlainServer(ServerExchange):
    """RFC 4616: ``authzid NUL authcid NUL passwd`` in one message; no proxy authorisation."""

    mechanism = "PLAIN"

    def _start(self, initial: bytes | None) -> Step:
        return Challenge(b"") if initial is None else self._check(initial)

    def _respond(self, data: bytes) -> Step:
        return self._check(data)

    def _check(self, message: bytes) -> Step:
        parts = message.split(b"\0")
        if len(parts) != 3:
            return Failure(f"PLAIN: malformed message ({len(parts) - 1} NULs, expected 2)")
        texts = [_text(part) for part in parts]
        if None in texts:
            return Failure("PLAIN: message is not UTF-8")
        authzid, authcid, passwd = (t or "" for t in texts)
        if not authcid or not passwd:
            return Failure("PLAIN: empty authentication identity or password")
        if authzid and authzid != authcid:
            return Failure(f"PLAIN: {authcid!r} asked to act as {authzid!r} (no proxy authorisation)")
        return self._verify(authcid, passwd)


class _LoginServer(ServerExchange):
    """The de-facto LOGIN: "Username:", then "Password:"; an initial response is the username."""

    mechanism = "LOGIN"
    _username: str | None = None

    def _start(self, initial: bytes | None) -> Step:
        return Challenge(b"Username:") if initial is None else self._take_username(initial)

    def _respond(self, data: bytes) -> Step:
        if self._username is None:
            return self._take_username(data)
        password = _text(data)
        if password is None:
            return Failure("LOGIN: password is not UTF-8")
        if not password:
            return Failure("LOGIN: empty password")
        return self._verify(self._username, password)

    def _take_username(self, data: bytes) -> Step:
        username = _text(data)
        if username is None:
            return Failure("LOGIN: username is not UTF-8")
        if not username:
            return Failure("LOGIN: empty username")
        self._username = username
        return Challenge(b"Password:")


def _cram_nonce() -> str:
    """RFC 2195 shows ``<pid.timestamp@host>``; what matters is that a challenge
    is never reused, which 96 random bits ensure without reading a clock."""
    return f"{secrets.randbits(64)}.{secrets.randbits(32)}"


_HEX = frozenset("0123456789abcdefABCDEF")


class _CramMd5Server(ServerExchange):
    """RFC 2195: challenge ``<random.timestamp@hostname>``, answer ``user SP hex(HMAC-MD5)``.

    The HMAC is keyed with the clear password, so a login stored only hashed cannot use it.
    """

    mechanism = "CRAM-MD5"

    def __init__(self, lookup: Lookup, hostname: str, nonce: Callable[[], str] | None) -> None:
        super().__init__(lookup)
        self._hostname = hostname
        self._nonce = nonce or _cram_nonce
        self._challenge = b""

    def _start(self, initial: bytes | None) -> Step:
        if initial is not None:
            return Failure("CRAM-MD5: the client sent an initial response; the server speaks first")
        self._challenge = _utf8(f"<{self._nonce()}@{self._hostname}>")
        return Challenge(self._challenge)

    def _respond(self, data: bytes) -> Step:
        text = _text(data)
        if text is None:
            return Failure("CRAM-MD5: response is not UTF-8")
        username, space, digest = text.rpartition(" ")
        if not space or not username or len(digest) != 32 or not set(digest) <= _HEX:
            return Failure("CRAM-MD5: malformed response (expected 'user SP 32 hex digits')")
        creds = self._find(username)
        if creds is None:
            return Failure(f"CRAM-MD5: unknown user {username!r}")
        if creds.password is None:
            return Failure(f"CRAM-MD5: needs a clear password, and {username!r} has only a hashed secret")
        expected = hmac.new(_utf8(creds.password), self._challenge, hashlib.md5).hexdigest()
        if hmac.compare_digest(expected.encode("ascii"), digest.lower().encode("ascii")):
            return Success(creds.username)
        return Failure(f"CRAM-MD5: wrong password for {username!r}")


class _ScramServer(ServerExchange):
    """RFC 5802/7677 through scramp, shaped for SMTP.

    client-first (AUTH line, or after an empty challenge) -> Challenge(server-first);
    client-final -> Challenge(server-final); the client's empty answer -> Success.
    No channel binding: a client that asks for it ('p=') fails.
    """

    mechanism = _SCRAM_NAME

    def __init__(self, lookup: Lookup, nonce: Callable[[], str] | None) -> None:
        super().__init__(lookup)
        self._nonce = nonce
        self._server: scramp.core.ScramServer | None = None
        self._username = ""
        self._creds: Credentials | None = None  # None: unknown (or SCRAM-unusable) login
        self._verified = False

    def _start(self, initial: bytes | None) -> Step:
        return Challenge(b"") if initial is None else self._client_first(initial)

    def _respond(self, data: bytes) -> Step:
        if self._server is None:
            return self._client_first(data)
        if not self._verified:
            return self._client_final(data)
        if data:
            return Failure("SCRAM-SHA-256: non-empty answer to the server-final message")
        assert self._creds is not None
        return Success(self._creds.username)

    def _auth_info(self, username: str) -> tuple[bytes, bytes, bytes, int]:
        self._username = username
        creds = self._find(username)
        if creds is not None:
            try:
                self._creds = creds
                return creds._scram_info
            except ValueError:
                pass  # a password SASLprep refuses: no client can present it
        self._creds = None
        return _fake_scram_info(username)

    @staticmethod
    def _lookup_error(err: scramp.ScramException) -> None:
        if isinstance(err.__cause__, _LookupFailed):
            raise err.__cause__

    def _client_first(self, data: bytes) -> Step:
        text = _text(data)
        if text is None:
            return Failure("SCRAM-SHA-256: client-first is not UTF-8")
        try:
            server = _SCRAM.make_server(self._auth_info, s_nonce=self._nonce() if self._nonce else None)
            server.set_client_first(text)
            server_first = server.get_server_first()
        except scramp.ScramException as err:
            self._lookup_error(err)
            return Failure(f"SCRAM-SHA-256: bad client-first: {err}")
        self._server = server
        return Challenge(server_first.encode("utf-8"))

    def _client_final(self, data: bytes) -> Step:
        assert self._server is not None
        text = _text(data)
        if text is None:
            return Failure("SCRAM-SHA-256: client-final is not UTF-8")
        try:
            self._server.set_client_final(text)
            server_final = self._server.get_server_final()
        except scramp.ScramException as err:
            if self._creds is None:
                return Failure(f"SCRAM-SHA-256: unknown user {self._username!r}")
            return Failure(f"SCRAM-SHA-256: rejected client-final for {self._username!r}: {err}")
        if self._creds is None:  # cannot happen short of a forged proof against random keys
            return Failure(f"SCRAM-SHA-256: unknown user {self._username!r}")
        self._verified = True
        return Challenge(server_final.encode("utf-8"))


def server_exchange(
    mechanism: str, lookup: Lookup, hostname: str, *, nonce: Callable[[], str] | None = None
) -> ServerExchange:
    """The server side of ``mechanism`` (upper-case, one of SERVER_MECHANISMS; ValueError otherwise).

    ``nonce`` injects the randomness for tests; the default is secrets-based.
    For CRAM-MD5 it is the part of the challenge before '@' (by default
    ``random.timestamp``); for SCRAM it is the server's nonce suffix.
    ``hostname`` only appears in the CRAM-MD5 challenge.
    """
    if mechanism == "PLAIN":
        return _PlainServer(lookup)
    if mechanism == "LOGIN":
        return _LoginServer(lookup)
    if mechanism == "CRAM-MD5":
        return _CramMd5Server(lookup, hostname, nonce)
    if mechanism == _SCRAM_NAME:
        return _ScramServer(lookup, nonce)
    raise ValueError(f"unsupported SASL mechanism {mechanism!r}; expected one of {SERVER_MECHANISMS}")


def choose_mechanism(offered: Iterable[str], *, secure: bool, allow_clear: bool = False) -> str | None:
    """The best mechanism in CLIENT_PREFERENCE the server offers (None: no usable one).

    PLAIN and LOGIN only when ``secure`` (TLS) or ``allow_clear``: they send the password itself.
    """
    names = {name.upper() for name in offered}
    for mechanism in CLIENT_PREFERENCE:
        if mechanism in names and (mechanism not in CLEAR_ONLY or secure or allow_clear):
            return mechanism
    return None


class ClientExchange:
    """One AUTH exchange, client side.

    Put ``initial`` on the AUTH line (None: wait for a challenge), pass each
    334 challenge to ``respond``, and call ``verify_success`` on 235.
    """

    initial: bytes | None = None

    def respond(self, challenge: bytes) -> bytes:
        raise NotImplementedError

    def verify_success(self) -> None:
        """Raise SaslError if the mechanism needed a server proof it did not get."""


class _PlainClient(ClientExchange):
    def __init__(self, username: str, password: str) -> None:
        if "\0" in username or "\0" in password:
            raise SaslError("PLAIN: a NUL in the username or password cannot be sent")
        self.initial = b"\0" + _utf8(username) + b"\0" + _utf8(password)
        self._answered = False

    def respond(self, challenge: bytes) -> bytes:
        # Only for a server that wants the message after an empty challenge.
        if self._answered:
            raise SaslError("PLAIN: unexpected second challenge")
        self._answered = True
        assert self.initial is not None
        return self.initial


class _LoginClient(ClientExchange):
    def __init__(self, username: str, password: str) -> None:
        self._answers = {b"username": _utf8(username), b"password": _utf8(password)}
        self._count = 0

    def respond(self, challenge: bytes) -> bytes:
        if self._count >= 2:
            raise SaslError("LOGIN: unexpected third challenge")
        self._count += 1
        prompt = challenge.strip().lower()
        for key, answer in self._answers.items():
            if prompt.startswith(key):
                return answer
        # An unfamiliar prompt: the conventional order, username first.
        return self._answers[b"username" if self._count == 1 else b"password"]


class _CramMd5Client(ClientExchange):
    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._key = _utf8(password)
        self._answered = False

    def respond(self, challenge: bytes) -> bytes:
        if self._answered:
            raise SaslError("CRAM-MD5: unexpected second challenge")
        self._answered = True
        digest = hmac.new(self._key, challenge, hashlib.md5).hexdigest()
        return _utf8(f"{self._username} {digest}")


class _ScramClient(ClientExchange):
    def __init__(self, username: str, password: str, nonce: Callable[[], str] | None) -> None:
        try:
            self._client = scramp.ScramClient(
                [_SCRAM_NAME], username, password, c_nonce=nonce() if nonce else None
            )
            self.initial = self._client.get_client_first().encode("utf-8")
        except scramp.ScramException as err:
            raise SaslError(f"SCRAM-SHA-256: cannot start: {err}") from None
        self._stage = 0  # 0: want server-first, 1: want server-final, 2: server verified
        self._resent = False

    def respond(self, challenge: bytes) -> bytes:
        assert self.initial is not None
        if self._stage == 0 and challenge == b"" and not self._resent:
            self._resent = True  # the server did not get client-first on the AUTH line
            return self.initial
        if self._stage == 2:
            raise SaslError("SCRAM-SHA-256: challenge after the server-final message")
        try:
            text = challenge.decode("utf-8")
            if self._stage == 0:
                self._client.set_server_first(text)
                answer = self._client.get_client_final().encode("utf-8")
            else:
                self._client.set_server_final(text)
                answer = b""
        except (UnicodeDecodeError, scramp.ScramException) as err:
            raise SaslError(f"SCRAM-SHA-256: bad server message: {err}") from None
        self._stage += 1
        return answer

    def verify_success(self) -> None:
        if self._stage != 2:
            raise SaslError("SCRAM-SHA-256: server claimed success without proving it knows the password")


def client_exchange(
    mechanism: str, username: str, password: str, *, nonce: Callable[[], str] | None = None
) -> ClientExchange:
    """The client side of ``mechanism`` (upper-case, one of CLIENT_PREFERENCE; ValueError otherwise).

    nonce: injectable SCRAM client nonce for tests.  SaslError when the
    credentials cannot be sent with this mechanism (a NUL for PLAIN; for SCRAM
    an empty username or text SASLprep prohibits).
    """
    if mechanism == "PLAIN":
        return _PlainClient(username, password)
    if mechanism == "LOGIN":
        return _LoginClient(username, password)
    if mechanism == "CRAM-MD5":
        return _CramMd5Client(username, password)
    if mechanism == _SCRAM_NAME:
        return _ScramClient(username, password, nonce)
    raise ValueError(f"unsupported SASL mechanism {mechanism!r}; expected one of {CLIENT_PREFERENCE}")
