"""Every limit the engine enforces, in one place so a config file can set them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Defaults follow RFC 5321 §4.5.3 minimums and common MTA practice."""

    command_line: int = 512  # octets, CRLF included (§4.5.3.1.4)
    text_line: int = 1000  # octets, CRLF included (§4.5.3.1.6)
    message_size: int = 50 * 1024 * 1024  # advertised with SIZE
    recipients: int = 1000  # per transaction; RFC 5321 requires at least 100
    bad_commands: int = 20  # 5xx for bad input before 421 and close
    command_timeout: float = 300.0  # §4.5.3.2.7: server waits 5 min for a command
    # Server side: a command line begun must end within this, however it trickles in
    # (each octet re-arms command_timeout); the README says why 1 minute.
    command_line_time: float = 60.0
    data_timeout: float = 600.0  # server side: 10 min between DATA chunks / idle
    reply_timeout: float = 300.0  # client side: 5 min for a reply (§4.5.3.2.1-6)
    data_block_timeout: float = 180.0  # client side: 3 min per data block (§4.5.3.2.5)
    data_end_timeout: float = 600.0  # client side: 10 min for the reply to "." (§4.5.3.2.6)
