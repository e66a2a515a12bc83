"""Session transcripts: what each client said to a lab host and what it answered.

A wrapping factory in front of each listener of a lab host keeps the bytes
both ways of its last sessions, cut to a size, for the HTTP API.  After
STARTTLS the bytes are ciphertext, and are kept as a note rather than as
noise.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

SESSIONS_KEPT = 50
OCTETS_KEPT = 64 * 1024  # of each session


@dataclass
class Transcript:
    id: int
    host: str
    client: str
    started: float
    ended: float | None = None
    lines: list[tuple[str, bytes]] = field(default_factory=list)  # ("C" or "S", bytes)
    octets: int = 0
    cut: bool = False
    encrypted: bool = False

    def add(self, who: str, data: bytes) -> None:
        if self.encrypted:
            return
        if data.startswith(b"\x16\x03"):  # a TLS handshake record: from here on it is ciphertext
            self.encrypted = True
            self.lines.append((who, b"[TLS from here on]"))
            return
        room = OCTETS_KEPT - self.octets
        if room <= 0:
            self.cut = True
            return
        self.lines.append((who, data[:room]))
        self.octets += min(len(data), room)
        self.cut = self.cut or len(data) > room

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "client": self.client,
            "started": self.started,
            "ended": self.ended,
            "cut": self.cut,
            "text": "".join(
                f"{who}: {line}\n"
                for who, data in self.lines
                for line in data.decode("utf-8", "replace").splitlines()
            ),
        }


class Transcripts:
    """The last sessions of one host."""

    def __init__(self, host: str, clock: Any) -> None:
        self.host, self.clock = host, clock
        self.sessions: deque[Transcript] = deque(maxlen=SESSIONS_KEPT)
        self._ids = itertools.count(1)

    def begin(self, client: str) -> Transcript:
        transcript = Transcript(next(self._ids), self.host, client, self.clock.seconds())
        self.sessions.append(transcript)
        return transcript

    def wrap(self, factory) -> WrappingFactory:
        return _Recording(factory, self)


class _Recording(WrappingFactory):
    noisy = False

    def __init__(self, wrapped, transcripts: Transcripts) -> None:
        super().__init__(wrapped)
        self.transcripts = transcripts
        self.protocol = _Recorder


class _Recorder(ProtocolWrapper):
    def makeConnection(self, transport) -> None:
        peer = transport.getPeer()
        self.transcript = self.factory.transcripts.begin(f"{getattr(peer, 'host', peer)}")
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.transcript.add("C", data)
        super().dataReceived(data)

    def write(self, data: bytes) -> None:
        self.transcript.add("S", data)
        super().write(data)

    def writeSequence(self, data) -> None:
        for chunk in data:
            self.transcript.add("S", chunk)
        super().writeSequence(data)

    def connectionLost(self, reason) -> None:
        self.transcript.ended = self.factory.transcripts.clock.seconds()
        super().connectionLost(reason)
