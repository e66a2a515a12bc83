"""Screened commands: the adapter sees a listed command first and may refuse it
(the lab's failures at EHLO, AUTH and the like), with replies kept in order."""

from __future__ import annotations

import pytest

from smtppeer.engine import events as ev
from smtppeer.engine.receiver import Receiver
from smtppeer.engine.replies import reply

from .test_engine_receiver import parse_replies


def run(rx: Receiver, data: bytes) -> list:
    """Feed bytes; return the events up to the point the receiver waits."""
    rx.receive_data(data)
    events = []
    while (event := rx.next_event()) not in (ev.NEED_DATA, ev.PAUSED, ev.CLOSED):
        events.append(event)
    return events


def test_a_screened_command_waits_for_the_adapter_and_so_does_everything_behind_it():
    rx = Receiver("mx.example", screen=frozenset({"EHLO"}))
    rx.start()
    [screened] = run(rx, b"EHLO c.example\r\nNOOP\r\n")
    assert screened == ev.Screened("EHLO", "c.example")
    assert parse_replies(rx.data_to_send())[0].code == 220  # the greeting only: NOOP waits
    rx.proceed()
    assert [type(e) for e in run(rx, b"")] == [ev.Hello]
    assert [r.code for r in parse_replies(rx.data_to_send())] == [250, 250]
    assert rx.helo_name == "c.example"


def test_a_refused_screened_command_does_not_run():
    rx = Receiver("mx.example", screen=frozenset({"EHLO"}))
    rx.start()
    rx.data_to_send()
    run(rx, b"EHLO c.example\r\n")
    rx.answer(reply(421, "4.3.2", "Not now"))
    assert [(r.code, r.enhanced) for r in parse_replies(rx.data_to_send())] == [(421, "4.3.2")]
    assert rx.helo_name is None
    run(rx, b"MAIL FROM:<a@b.example>\r\n")
    assert parse_replies(rx.data_to_send())[0].code == 503  # no EHLO took place


def test_commands_not_listed_run_as_usual_and_only_a_screened_one_may_proceed():
    rx = Receiver("mx.example", screen=frozenset({"AUTH"}))
    rx.start()
    assert [type(e) for e in run(rx, b"EHLO c.example\r\n")] == [ev.Hello]
    with pytest.raises(RuntimeError):
        rx.proceed()
