"""``Receiver.line_pending``: what an adapter times to cap how long one command line may take.

A slow-loris client sends a command a byte at a time; each byte re-arms an
idle timeout.  The engine says when it is waiting for the rest of a line, so
the adapter can time that wait as a whole (issue 13, item 2).
"""

from __future__ import annotations

from smtppeer.engine import events as ev
from smtppeer.engine.receiver import Receiver
from smtppeer.engine.replies import reply

from .enginedriver import accept_all, pump


def test_a_line_is_pending_from_its_first_octet_to_its_line_end():
    rx = Receiver("mx.example")
    rx.start()
    assert not rx.line_pending
    for byte in b"EHLO slow.example":
        rx.receive_data(bytes([byte]))
        pump(rx, accept_all)
        assert rx.line_pending
    rx.receive_data(b"\r")
    pump(rx, accept_all)
    assert rx.line_pending
    rx.receive_data(b"\n")
    pump(rx, accept_all)
    assert not rx.line_pending


def test_an_overlong_line_being_skipped_is_pending_until_its_end():
    rx = Receiver("mx.example")
    rx.start()
    rx.receive_data(b"x" * 5000)
    pump(rx, accept_all)
    assert rx.buffered_input == 0 and rx.line_pending  # nothing buffered, still mid-line
    rx.receive_data(b"y\r\n")
    pump(rx, accept_all)
    assert not rx.line_pending


def test_not_inside_data_nor_while_a_decision_is_ours():
    rx = Receiver("mx.example")
    rx.start()
    rx.receive_data(b"EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\npartial body")
    pump(rx, accept_all)
    assert rx.in_data and not rx.line_pending
    rx.receive_data(b"\r\n.\r\nNOOP")
    assert pump(rx, answer=None) is ev.PAUSED  # the DataEnd decision
    assert not rx.line_pending
    rx.answer(reply(250, "2.0.0", "Queued"))
    pump(rx, accept_all)
    assert rx.line_pending  # "NOOP" without its CRLF
    rx.receive_data(b"\r\nQUIT\r\n")
    pump(rx, accept_all)
    assert rx.closed and not rx.line_pending


def test_lines_read_tells_a_new_line_from_the_one_being_timed():
    """An adapter timing a pending line restarts its clock when ``lines_read`` moves."""
    rx = Receiver("mx.example")
    rx.start()
    rx.receive_data(b"NO")
    pump(rx, accept_all)
    first = rx.lines_read
    rx.receive_data(b"OP\r\nNO")  # one line ends and the next begins in the same read
    pump(rx, accept_all)
    assert rx.line_pending and rx.lines_read == first + 1
    rx.receive_data(b"O")
    pump(rx, accept_all)
    assert rx.line_pending and rx.lines_read == first + 1  # still the same line
