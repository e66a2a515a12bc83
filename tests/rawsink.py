"""A next hop for end-to-end tests: a loopback SMTP server that keeps the raw bytes it received.

It speaks just enough SMTP for smtppeer's sender (EHLO/HELO, MAIL, RCPT,
DATA, RSET, NOOP, QUIT; no extensions, so nothing is pipelined) and answers
250 to everything, and it records each session's bytes exactly as they came
off the socket: what a real next hop would have had to parse.  It runs in
a thread, every socket has a timeout, and ``close`` stops it.
"""

from __future__ import annotations

import socket
import threading

from .conftest import wait_until

TIMEOUT = 30.0


class RawSink:
    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.sessions: list[bytes] = []  # the raw bytes of each finished session
        self.messages: list[
            bytes
        ] = []  # the raw bytes between DATA's 354 and the end mark, end mark included
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="rawsink", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(TIMEOUT)
                try:
                    self._session(conn)
                except OSError:
                    pass

    def _session(self, conn: socket.socket) -> None:
        raw = bytearray()
        buf = bytearray()

        def line() -> bytes | None:
            for _ in range(100_000):
                nl = buf.find(b"\n")
                if nl >= 0:
                    out = bytes(buf[: nl + 1])
                    del buf[: nl + 1]
                    return out
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                raw.extend(chunk)
                buf.extend(chunk)
            return None

        conn.sendall(b"220 sink.test ESMTP raw sink\r\n")
        try:
            while (command := line()) is not None:
                verb = command[:4].upper()
                if verb == b"QUIT":
                    conn.sendall(b"221 2.0.0 bye\r\n")
                    return
                if verb != b"DATA":
                    conn.sendall(b"250 sink.test\r\n" if verb in (b"EHLO", b"HELO") else b"250 2.0.0 OK\r\n")
                    continue
                conn.sendall(b"354 go ahead\r\n")
                data = bytearray()
                while not (data.endswith(b"\r\n.\r\n") or data == b".\r\n"):
                    piece = line()
                    if piece is None:
                        return
                    data.extend(piece)
                with self._lock:
                    self.messages.append(bytes(data))
                conn.sendall(b"250 2.0.0 Ok: queued\r\n")
        finally:
            with self._lock:
                self.sessions.append(bytes(raw))

    def wait_for_messages(self, n: int, timeout: float = 60.0) -> list[bytes]:
        def enough() -> list[bytes] | None:
            with self._lock:
                return list(self.messages) if len(self.messages) >= n else None

        return wait_until(
            enough, timeout, f"{n} messages at the sink", detail=lambda: f"it got {len(self.messages)}"
        )

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=TIMEOUT + 5)
