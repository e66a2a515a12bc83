"""The sender-SMTP state machine against scripted server replies (plain bytes)."""

from __future__ import annotations

import io

import pytest

from smtppeer.engine import events as ev
from smtppeer.engine.framing import DataDecoder
from smtppeer.engine.receiver import Receiver
from smtppeer.engine.replies import Reply, reply
from smtppeer.engine.sender import (
    BODY_CHUNK,
    ConversionNeeded,
    Envelope,
    MessageResult,
    Ready,
    Sender,
    SessionEnded,
    Turned,
    TurnRefused,
)

from .enginedriver import pump

EHLO_PIPELINING = (
    b"250-mx.example greets client.example\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 1000\r\n"
    b"250-8BITMIME\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250 SMTPUTF8\r\n"
)
EHLO_PLAIN = b"250-mx.example greets client.example\r\n250 ENHANCEDSTATUSCODES\r\n"

OK = b"250 2.0.0 OK\r\n"
GO = b"354 Go ahead\r\n"


class Client:
    def __init__(self, **kw) -> None:
        self.tx = Sender("client.example", **kw)

    def feed(self, data: bytes) -> bytes:
        """Give the server's bytes; return what the client writes next."""
        self.tx.receive_data(data)
        return self.tx.data_to_send()

    def events(self) -> list:
        out = []
        while (e := self.tx.next_event()) is not None:
            out.append(e)
        return out


def connected(ehlo: bytes = EHLO_PLAIN, **kw) -> Client:
    c = Client(**kw)
    assert c.tx.data_to_send() == b""  # waits for the greeting
    assert c.feed(b"220 mx.example ESMTP\r\n") == b"EHLO client.example\r\n"
    assert c.feed(ehlo) == b""
    [ready] = c.events()
    assert isinstance(ready, Ready)
    return c


def codes(result: MessageResult) -> dict[str, int]:
    return {r: rep.code for r, rep in result.results.items()}


def env(*rcpts: str, body: bytes = b"Subject: t\r\n\r\nhi\r\n", **kw) -> Envelope:
    return Envelope("a@x.example", list(rcpts), body, **kw)


# -- session set-up -------------------------------------------------------------------


def test_ready_reports_extensions():
    c = Client()
    c.feed(b"220 mx.example ESMTP\r\n")
    c.feed(EHLO_PIPELINING)
    assert c.events() == [
        Ready({"PIPELINING": "", "SIZE": "1000", "8BITMIME": "", "ENHANCEDSTATUSCODES": "", "SMTPUTF8": ""})
    ]
    assert c.tx.ready


def test_greeting_in_pieces():
    c = Client()
    out = b""
    for b in b"220-mx.example ESMTP\r\n220 second line\r\n":
        out += c.feed(bytes([b]))
    assert out == b"EHLO client.example\r\n"


@pytest.mark.parametrize("code", [500, 501, 502, 504, 550])
def test_ehlo_rejected_falls_back_to_helo(code):
    c = Client()
    c.feed(b"220 mx.example\r\n")
    assert c.feed(b"%d 5.5.1 What?\r\n" % code) == b"HELO client.example\r\n"
    assert c.feed(b"250 mx.example\r\n") == b""
    assert c.events() == [Ready({})]
    # without EHLO there is no pipelining: lockstep
    c.tx.send(env("b@y.example"))
    assert c.tx.data_to_send() == b"MAIL FROM:<a@x.example>\r\n"


def test_helo_refused_too():
    c = Client()
    c.feed(b"220 mx.example\r\n")
    c.feed(b"502 5.5.1 no EHLO\r\n")
    c.tx.send(env("b@y.example"))
    assert c.feed(b"554 5.7.1 no HELO either\r\n") == b"QUIT\r\n"
    [result, closed] = c.events()
    assert codes(result) == {"b@y.example": 451}
    assert closed == SessionEnded(Reply(554, ("no HELO either",), "5.7.1"), clean=False)


def test_use_helo_only():
    c = Client(use_ehlo=False)
    assert c.feed(b"220 mx\r\n") == b"HELO client.example\r\n"


def test_greeting_554():
    c = Client()
    c.tx.send(env("b@y.example"))
    c.tx.send(env("c@y.example"))
    assert c.feed(b"554 5.7.1 go away\r\n") == b"QUIT\r\n"
    events = c.events()
    assert [codes(e) for e in events[:2]] == [{"b@y.example": 451}, {"c@y.example": 451}]
    assert all(rep.is_transient for e in events[:2] for rep in e.results.values())
    assert events[2] == SessionEnded(Reply(554, ("go away",), "5.7.1"), clean=False)
    assert c.tx.closed
    assert c.feed(b"221 bye\r\n") == b""


# -- lockstep (no PIPELINING) ---------------------------------------------------------------


def test_lockstep_full_session():
    c = connected()
    e = env("b@y.example", "c@y.example", body=b".dot first\r\nline\r\n.\r\n")
    c.tx.send(e)
    c.tx.finish()
    assert c.tx.data_to_send() == b"MAIL FROM:<a@x.example>\r\n"
    assert c.feed(b"250 2.1.0 OK\r\n") == b"RCPT TO:<b@y.example>\r\n"
    assert c.feed(b"250 2.1.5 OK\r\n") == b"RCPT TO:<c@y.example>\r\n"
    assert c.feed(b"250 2.1.5 OK\r\n") == b"DATA\r\n"
    assert c.feed(GO) == b"..dot first\r\nline\r\n..\r\n.\r\n"
    assert c.tx.awaiting_data_end
    assert c.feed(b"250 2.0.0 queued as 1\r\n") == b"QUIT\r\n"
    [result] = c.events()
    assert result.envelope is e
    assert codes(result) == {"b@y.example": 250, "c@y.example": 250}
    assert result.delivered == ["b@y.example", "c@y.example"]
    assert c.feed(b"221 2.0.0 bye\r\n") == b""
    assert c.events() == [SessionEnded(Reply(221, ("bye",), "2.0.0"), clean=True)]
    assert c.tx.closed


def test_lockstep_some_recipients_refused():
    c = connected()
    c.tx.send(env("b@y.example", "bad@y.example", "c@y.example"))
    c.tx.data_to_send()
    c.feed(b"250 2.1.0 OK\r\n")
    assert c.feed(b"250 2.1.5 OK\r\n") == b"RCPT TO:<bad@y.example>\r\n"
    assert c.feed(b"550 5.1.1 no such user\r\n") == b"RCPT TO:<c@y.example>\r\n"
    assert c.feed(b"251 2.1.5 will forward\r\n") == b"DATA\r\n"
    c.feed(GO)
    c.feed(b"250 2.0.0 queued\r\n")
    [result] = c.events()
    assert codes(result) == {"b@y.example": 250, "bad@y.example": 550, "c@y.example": 250}
    assert result.results["bad@y.example"].text == "no such user"
    assert result.delivered == ["b@y.example", "c@y.example"]


def test_lockstep_all_recipients_refused_sends_no_data():
    c = connected()
    c.tx.send(env("b@y.example", "c@y.example"))
    c.tx.send(env("d@y.example"))
    c.tx.data_to_send()
    c.feed(b"250 2.1.0 OK\r\n")
    assert c.feed(b"550 5.1.1 no\r\n") == b"RCPT TO:<c@y.example>\r\n"
    out = c.feed(b"450 4.2.1 mailbox busy\r\n")
    assert out == b"RSET\r\n"
    [result] = c.events()
    assert codes(result) == {"b@y.example": 550, "c@y.example": 450}
    # RSET's reply is consumed, then the next message goes on
    assert c.feed(OK) == b"MAIL FROM:<a@x.example>\r\n"
    assert c.feed(b"250 2.1.0 OK\r\n") == b"RCPT TO:<d@y.example>\r\n"


# Without PIPELINING, one command, one reply (RFC 2920 §3): a strict server such as
# OpenSMTPD answers a command with more input behind it "500 5.5.1 Pipelining not
# supported" and hangs up (issue 14, item 4).


def test_lockstep_rset_after_refused_recipients_waits_for_its_reply_before_quit():
    c = connected()
    c.tx.send(env("b@y.example"))
    c.tx.finish()
    assert c.tx.data_to_send() == b"MAIL FROM:<a@x.example>\r\n"
    assert c.feed(b"250 2.1.0 OK\r\n") == b"RCPT TO:<b@y.example>\r\n"
    assert c.feed(b"550 5.1.1 no\r\n") == b"RSET\r\n"
    [result] = c.events()  # the result is known at once; only the next command waits
    assert codes(result) == {"b@y.example": 550}
    assert c.feed(OK) == b"QUIT\r\n"
    assert c.feed(b"221 2.0.0 bye\r\n") == b""
    assert c.events()[-1].clean


def test_lockstep_rset_after_refused_data_waits_before_the_next_mail():
    c = connected()
    c.tx.send(env("b@y.example"))
    c.tx.send(env("c@y.example"))
    c.tx.finish()
    c.tx.data_to_send()
    c.feed(b"250 2.1.0 OK\r\n")
    assert c.feed(b"250 2.1.5 OK\r\n") == b"DATA\r\n"
    assert c.feed(b"554 5.7.1 no data today\r\n") == b"RSET\r\n"
    assert c.feed(OK) == b"MAIL FROM:<a@x.example>\r\n"


def test_lockstep_never_has_two_commands_outstanding():
    """Whatever the replies, a server without PIPELINING never has more than one
    command unanswered (the body and its dot are not commands)."""
    replies = {
        b"MAIL": [b"250 2.1.0 OK\r\n", b"550 5.7.1 no sender\r\n"],
        b"RCPT": [b"550 5.1.1 no\r\n", b"250 2.1.5 OK\r\n", b"450 4.2.1 busy\r\n"],
        b"DATA": [GO, b"554 5.7.1 no\r\n", b"451 4.3.0 later\r\n"],
        b"RSET": [OK],
        b"QUIT": [b"221 2.0.0 bye\r\n"],
    }
    for seed in range(40):
        c = connected()
        for n in range(3):
            c.tx.send(env(f"b{n}@y.example", f"c{n}@y.example"))
        c.tx.finish()
        pending = c.tx.data_to_send()
        for step in range(100):
            if c.tx.closed:
                break
            commands = [line for line in pending.split(b"\r\n") if line[:4] in replies]
            assert len(commands) <= 1, (seed, step, pending)
            if pending.endswith(b"\r\n.\r\n") or pending == b".\r\n":
                answer = OK  # the reply to the final dot
            else:
                options = replies[commands[0][:4]]
                answer = options[(seed + step) % len(options)]
            pending = c.feed(answer)
        assert c.tx.closed, seed
        assert len([e for e in c.events() if isinstance(e, MessageResult)]) == 3


def test_lockstep_mail_refused():
    c = connected()
    c.tx.send(env("b@y.example", "c@y.example"))
    c.tx.send(env("d@y.example"))
    c.tx.data_to_send()
    assert c.feed(b"550 5.7.1 sender rejected\r\n") == b"MAIL FROM:<a@x.example>\r\n"
    [result] = c.events()
    assert codes(result) == {"b@y.example": 550, "c@y.example": 550}
    assert result.delivered == []


@pytest.mark.parametrize("code", [451, 552, 554])
def test_data_end_refused(code):
    c = connected()
    c.tx.send(env("b@y.example", "c@y.example"))
    c.tx.data_to_send()
    c.feed(b"250 OK\r\n")
    c.feed(b"250 OK\r\n")
    c.feed(b"550 no\r\n")
    c.feed(GO)
    c.feed(b"%d x.x.x refused\r\n" % code)
    [result] = c.events()
    assert codes(result) == {"b@y.example": code, "c@y.example": 550}
    assert result.delivered == []


def test_data_command_refused():
    c = connected()
    c.tx.send(env("b@y.example"))
    c.tx.data_to_send()
    c.feed(b"250 OK\r\n")
    c.feed(b"250 OK\r\n")
    assert c.feed(b"451 4.3.0 try later\r\n") == b"RSET\r\n"
    [result] = c.events()
    assert codes(result) == {"b@y.example": 451}


def test_multiple_messages_per_session():
    c = connected()
    c.tx.send(env("b@y.example", body=b"one\r\n"))
    c.tx.send(env("c@y.example", body=b"two\r\n"))
    c.tx.finish()
    transcript = c.tx.data_to_send()
    one_message = [b"250 OK\r\n", b"250 OK\r\n", GO, OK]
    for server in one_message + one_message + [b"221 bye\r\n"]:
        transcript += c.feed(server)
    assert transcript == (
        b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\none\r\n.\r\n"
        b"MAIL FROM:<a@x.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\ntwo\r\n.\r\n"
        b"QUIT\r\n"
    )
    events = c.events()
    assert [codes(e) for e in events[:2]] == [{"b@y.example": 250}, {"c@y.example": 250}]
    assert [e.envelope.body for e in events[:2]] == [b"one\r\n", b"two\r\n"]
    assert events[2].clean


def test_send_after_ready_and_finish_before_ready():
    c = Client()
    c.tx.finish()
    c.feed(b"220 mx\r\n")
    assert c.feed(EHLO_PLAIN) == b"QUIT\r\n"


def test_null_reverse_path_and_source_route():
    c = connected()
    c.tx.send(Envelope("", ["@ONE,@TWO:joe@three.example"], b"x\r\n"))
    assert c.tx.data_to_send() == b"MAIL FROM:<>\r\n"
    assert c.feed(b"250 OK\r\n") == b"RCPT TO:<@ONE,@TWO:joe@three.example>\r\n"


# -- pipelining -------------------------------------------------------------------------------


def test_pipelined_session():
    c = connected(EHLO_PIPELINING)
    c.tx.send(env("b@y.example", "c@y.example", body=b"body\r\n"))
    c.tx.finish()
    assert c.tx.data_to_send() == (
        b"MAIL FROM:<a@x.example> SIZE=6\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n"
    )
    # nothing more (no body) until 354
    assert c.feed(b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n") == b""
    assert c.feed(b"550 5.1.1 no\r\n") == b""
    # RFC 2920: the body opens a group and QUIT may close it
    assert c.feed(GO) == b"body\r\n.\r\nQUIT\r\n"
    assert c.feed(OK) == b""
    [result] = c.events()
    assert codes(result) == {"b@y.example": 250, "c@y.example": 550}
    c.feed(b"221 bye\r\n")
    assert c.events()[-1].clean


def test_pipelined_replies_in_one_read():
    c = connected(EHLO_PIPELINING)
    c.tx.send(env("b@y.example"))
    c.tx.send(env("c@y.example"))
    c.tx.data_to_send()
    out = c.feed(b"250 OK\r\n250 OK\r\n354 go\r\n")
    assert out == b"Subject: t\r\n\r\nhi\r\n.\r\n"
    out = c.feed(OK)
    assert out == b"MAIL FROM:<a@x.example> SIZE=18\r\nRCPT TO:<c@y.example>\r\nDATA\r\n"


def test_pipelined_all_recipients_refused_but_354_anyway():
    c = connected(EHLO_PIPELINING)
    c.tx.send(env("b@y.example", "c@y.example"))
    c.tx.send(env("d@y.example"))
    c.tx.data_to_send()
    out = c.feed(b"250 OK\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n354 go ahead\r\n")
    # RFC 2920 §3.1: an empty message, then the next transaction
    assert out == b".\r\nMAIL FROM:<a@x.example> SIZE=18\r\nRCPT TO:<d@y.example>\r\nDATA\r\n"
    [result] = c.events()
    assert codes(result) == {"b@y.example": 550, "c@y.example": 550}
    # the reply to the lone dot is ignored whatever it is
    assert c.feed(b"554 5.5.1 no valid recipients\r\n") == b""
    c.feed(b"250 OK\r\n250 OK\r\n354 go\r\n")
    c.feed(OK)
    [result2] = c.events()
    assert codes(result2) == {"d@y.example": 250}


def test_pipelined_all_recipients_refused_data_554():
    c = connected(EHLO_PIPELINING)
    c.tx.send(env("b@y.example"))
    c.tx.data_to_send()
    assert c.feed(b"250 OK\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n") == b"RSET\r\n"
    [result] = c.events()
    assert codes(result) == {"b@y.example": 550}


def test_pipelined_mail_refused():
    c = connected(EHLO_PIPELINING)
    c.tx.send(env("b@y.example", "c@y.example"))
    c.tx.finish()
    c.tx.data_to_send()
    out = c.feed(b"550 5.7.1 bad sender\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n")
    assert out == b""
    out = c.feed(b"503 5.5.1 need MAIL\r\n")
    assert out == b"QUIT\r\n"  # no RSET: there is no transaction to reset
    [result] = c.events()
    assert codes(result) == {"b@y.example": 550, "c@y.example": 550}
    assert result.results["b@y.example"].text == "bad sender"


# -- extensions: SIZE, 8BITMIME, SMTPUTF8 ---------------------------------------------------------


def test_size_parameter_when_advertised():
    c = connected(EHLO_PIPELINING)
    c.tx.send(env("b@y.example", size=500, params={"BODY": "8BITMIME"}))
    assert c.tx.data_to_send().startswith(b"MAIL FROM:<a@x.example> BODY=8BITMIME SIZE=500\r\n")


def test_no_size_parameter_when_not_advertised():
    c = connected(EHLO_PLAIN)
    c.tx.send(env("b@y.example", size=5000, params={"BODY": "8BITMIME"}))
    assert c.tx.data_to_send() == b"MAIL FROM:<a@x.example>\r\n"  # and BODY dropped without 8BITMIME


# 8-bit mail and a server without 8BITMIME (RFC 6152 §3; issue 14, item 3): never sent as it
# is; the adapter converts it (ConversionNeeded, converted) or it is refused.

EHLO_NO_8BITMIME = b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
EIGHT_BIT = "Subject: é\r\n\r\nGrüße\r\n".encode()
SEVEN_BIT = b"Subject: =?utf-8?q?=C3=A9?=\r\nMIME-Version: 1.0\r\n\r\nGr=C3=BC=C3=9Fe\r\n"


def test_8bit_to_a_server_without_8bitmime_waits_for_a_conversion():
    c = connected(EHLO_NO_8BITMIME)
    e = env("b@y.example", body=EIGHT_BIT, params={"BODY": "8BITMIME"}, tag="t")
    c.tx.send(e)
    c.tx.finish()
    assert c.tx.data_to_send() == b"", "nothing is sent before the conversion"
    assert c.events() == [ConversionNeeded(e)]
    c.tx.converted(e, env("b@y.example", body=SEVEN_BIT, tag="t"))
    assert c.tx.data_to_send() == (
        b"MAIL FROM:<a@x.example> SIZE=%d\r\nRCPT TO:<b@y.example>\r\nDATA\r\n" % len(SEVEN_BIT)
    )
    assert c.feed(b"250 OK\r\n250 OK\r\n354 go\r\n") == SEVEN_BIT + b".\r\nQUIT\r\n"
    c.feed(OK)
    [result] = c.events()
    assert result.envelope is e, "the result is the original message's"
    assert codes(result) == {"b@y.example": 250}


def test_8bit_by_the_adapters_word_for_a_body_that_is_not_bytes():
    c = connected(EHLO_NO_8BITMIME)
    e = Envelope("a@x.example", ["b@y.example"], io.BytesIO(EIGHT_BIT), eight_bit=True)
    c.tx.send(e)
    assert c.events() == [ConversionNeeded(e)]
    c = connected(EHLO_NO_8BITMIME)
    c.tx.send(Envelope("a@x.example", ["b@y.example"], io.BytesIO(b"x\r\n"), params={"BODY": "8BITMIME"}))
    assert c.events() == [], "BODY=8BITMIME alone: the adapter said the body is 7-bit"
    assert c.tx.data_to_send().startswith(b"MAIL FROM:<a@x.example>")


def test_a_refused_conversion_is_the_messages_result_and_the_next_goes_on():
    c = connected(EHLO_NO_8BITMIME)
    e = env("b@y.example", body=EIGHT_BIT)
    c.tx.send(e)
    c.tx.send(env("c@y.example"))
    [needed] = c.events()
    refusal = reply(554, "5.6.3", "Conversion required but not supported: signed")
    c.tx.converted(needed.envelope, refusal)
    [result] = c.events()
    assert result.envelope is e and result.results == {"b@y.example": refusal}
    assert c.tx.data_to_send().startswith(b"MAIL FROM:<a@x.example> SIZE=18\r\nRCPT TO:<c@y.example>\r\n")


def test_a_conversion_that_is_still_8bit_or_too_big_is_refused():
    for replacement, code in [(EIGHT_BIT, 554), (b"x" * 1001, 552)]:
        c = connected(EHLO_NO_8BITMIME)
        e = env("b@y.example", body=EIGHT_BIT)
        c.tx.send(e)
        c.events()
        c.tx.converted(e, env("b@y.example", body=replacement))
        [result] = c.events()
        assert codes(result) == {"b@y.example": code}
        assert c.tx.data_to_send() == b""


def test_8bit_to_a_server_with_8bitmime_goes_as_it_is():
    c = connected(EHLO_PIPELINING)
    c.tx.send(env("b@y.example", body=EIGHT_BIT, params={"BODY": "8BITMIME"}))
    assert c.events() == []
    assert c.tx.data_to_send().startswith(b"MAIL FROM:<a@x.example> BODY=8BITMIME SIZE=")


def test_the_connection_lost_during_a_conversion_defers_the_message():
    c = connected(EHLO_NO_8BITMIME)
    e = env("b@y.example", body=EIGHT_BIT)
    c.tx.send(e)
    c.events()
    c.tx.connection_lost("gone")
    result, ended = c.events()
    assert result.envelope is e and codes(result) == {"b@y.example": 451}
    assert not ended.clean
    c.tx.converted(e, env("b@y.example", body=SEVEN_BIT))  # too late: ignored
    assert c.events() == [] and c.tx.data_to_send() == b""


def test_too_large_for_server_refused_locally():
    c = connected(EHLO_PIPELINING)  # SIZE 1000
    big = env("b@y.example", size=1001)
    c.tx.send(big)
    c.tx.send(env("c@y.example", size=1000))
    [result] = c.events()
    assert result.envelope is big
    assert codes(result) == {"b@y.example": 552}
    assert result.results["b@y.example"].enhanced == "5.3.4"
    assert c.tx.data_to_send().startswith(b"MAIL FROM:<a@x.example> SIZE=1000\r\n")


def test_size_zero_means_no_limit():
    c = connected(b"250-mx\r\n250 SIZE 0\r\n")
    c.tx.send(env("b@y.example", size=10**9))
    assert c.tx.data_to_send() == b"MAIL FROM:<a@x.example> SIZE=1000000000\r\n"


def test_smtputf8():
    c = connected(EHLO_PLAIN)
    c.tx.send(Envelope("jö@x.example", ["b@y.example"], b"x\r\n", params={"SMTPUTF8": None}))
    [result] = c.events()
    assert codes(result) == {"b@y.example": 553}
    c = connected(EHLO_PIPELINING)
    c.tx.send(Envelope("jö@x.example", ["rö@y.example"], b"x\r\n", params={"SMTPUTF8": None}))
    out = c.tx.data_to_send()
    assert out.startswith("MAIL FROM:<jö@x.example> SMTPUTF8 SIZE=3\r\nRCPT TO:<rö@y.example>\r\n".encode())


def test_no_recipients_refused_locally():
    c = connected()
    c.tx.send(env())
    [result] = c.events()
    assert result.results == {}
    assert c.tx.data_to_send() == b""


# -- the end: QUIT, TURN, ATRN ------------------------------------------------------------------------


def test_finish_with_turn():
    c = connected()
    c.tx.send(env("b@y.example"))
    c.tx.finish("TURN")
    c.tx.data_to_send()
    c.feed(b"250 OK\r\n")
    c.feed(b"250 OK\r\n")
    c.feed(GO)
    assert c.feed(OK) == b"TURN\r\n"
    assert c.feed(b"250 2.0.0 OK, turning around\r\nEHLO mx.example\r\n") == b""
    events = c.events()
    assert codes(events[0]) == {"b@y.example": 250}
    assert events[1] == Turned(Reply(250, ("OK, turning around",), "2.0.0"))
    assert c.tx.turned and not c.tx.closed
    assert c.tx.take_unread() == b"EHLO mx.example\r\n"
    c.tx.receive_data(b"MAIL FROM:<x@y>\r\n")  # ignored: this side is a receiver now
    assert c.events() == [] and c.tx.data_to_send() == b""
    c.tx.connection_lost()
    assert c.events() == []


def test_turn_refused_then_quit():
    c = connected()
    c.tx.finish("TURN")
    assert c.tx.data_to_send() == b"TURN\r\n"
    assert c.feed(b"502 5.5.1 TURN not allowed\r\n") == b"QUIT\r\n"
    assert c.events() == [TurnRefused(Reply(502, ("TURN not allowed",), "5.5.1"))]
    c.feed(b"221 2.0.0 bye\r\n")
    assert c.events() == [SessionEnded(Reply(221, ("bye",), "2.0.0"), clean=True)]


def test_finish_with_atrn():
    c = connected()
    c.tx.finish("ATRN example.org")
    assert c.tx.data_to_send() == b"ATRN example.org\r\n"
    c.feed(b"250 2.0.0 OK now reversing the connection\r\n")
    assert isinstance(c.events()[0], Turned)


# -- failures: 421, connection lost, protocol errors ------------------------------------------------


def test_421_mid_session_defers_everything():
    c = connected(EHLO_PIPELINING)
    c.tx.send(env("b@y.example", "c@y.example"))
    c.tx.send(env("d@y.example"))
    c.tx.finish()
    c.tx.data_to_send()
    out = c.feed(b"250 OK\r\n550 5.1.1 no\r\n421 4.3.2 shutting down\r\n")
    assert out == b""
    events = c.events()
    assert codes(events[0]) == {"b@y.example": 550, "c@y.example": 421}
    assert codes(events[1]) == {"d@y.example": 421}
    assert events[2] == SessionEnded(Reply(421, ("shutting down",), "4.3.2"), clean=False)
    assert c.tx.closed
    assert c.feed(b"250 OK\r\n") == b""  # nothing more is read or sent
    c.tx.connection_lost()
    assert c.events() == []


def test_421_at_data_end():
    c = connected()
    c.tx.send(env("b@y.example"))
    c.tx.send(env("c@y.example"))
    c.tx.data_to_send()
    for server in [b"250 OK\r\n", b"250 OK\r\n", GO]:
        c.feed(server)
    assert c.feed(b"421 4.4.2 timeout\r\n") == b""
    events = c.events()
    assert [codes(e) for e in events[:2]] == [{"b@y.example": 421}, {"c@y.example": 421}]
    assert events[2].clean is False


def test_unsolicited_421_while_idle():
    c = connected()
    assert c.feed(b"421 4.4.2 idle timeout\r\n") == b""
    assert c.events() == [SessionEnded(Reply(421, ("idle timeout",), "4.4.2"), clean=False)]
    c.tx.send(env("b@y.example"))
    assert c.tx.data_to_send() == b""
    # a message handed over after the end is reported, not silently queued
    [late] = c.events()
    assert codes(late) == {"b@y.example": 451}


def test_send_after_turn_is_reported():
    c = connected()
    c.tx.finish("TURN")
    c.tx.data_to_send()
    c.feed(b"250 OK\r\n")
    c.events()
    c.tx.send(env("b@y.example"))
    [late] = c.events()
    assert codes(late) == {"b@y.example": 451}


def test_421_greeting():
    c = Client()
    c.tx.send(env("b@y.example"))
    c.feed(b"421 4.3.2 busy\r\n")
    events = c.events()
    assert codes(events[0]) == {"b@y.example": 421}
    assert events[1].clean is False and c.tx.closed


def test_connection_lost_mid_data():
    c = connected()
    c.tx.send(env("b@y.example", "bad@y.example"))
    c.tx.send(env("c@y.example"))
    c.tx.data_to_send()
    c.feed(b"250 OK\r\n")
    c.feed(b"250 OK\r\n")
    c.feed(b"550 5.1.1 no\r\n")
    c.feed(GO)
    c.tx.connection_lost()
    events = c.events()
    assert codes(events[0]) == {"b@y.example": 451, "bad@y.example": 550}
    assert events[0].results["b@y.example"].enhanced == "4.4.2"
    assert codes(events[1]) == {"c@y.example": 451}
    assert events[2] == SessionEnded(None, clean=False)
    c.tx.connection_lost()
    assert c.events() == []


def test_connection_lost_before_greeting():
    c = Client()
    c.tx.send(env("b@y.example"))
    c.tx.connection_lost("refused")
    events = c.events()
    assert codes(events[0]) == {"b@y.example": 451}
    assert "refused" in events[0].results["b@y.example"].text


@pytest.mark.parametrize("garbage", [b"hello there\r\n", b"25\r\n", b"x" * 5000])
def test_malformed_reply_ends_session(garbage):
    c = connected()
    c.tx.send(env("b@y.example"))
    c.tx.data_to_send()
    c.feed(garbage)
    events = c.events()
    assert codes(events[0]) == {"b@y.example": 451}
    assert events[1] == SessionEnded(None, clean=False)


def test_unexpected_reply_ends_session():
    c = connected()
    c.feed(b"250 what?\r\n")
    assert c.events() == [SessionEnded(None, clean=False)]


# -- the body: file objects, chunking, dot-stuffing ----------------------------------------------------


def feed_body(c: Client, source: io.BytesIO, piece: int = BODY_CHUNK) -> list[bytes]:
    """The adapter's part: read the body it is asked for and hand it over, piece by
    piece, collecting what the sender writes."""
    pieces = []
    for _ in range(10_000):
        data = c.tx.data_to_send(max_bytes=BODY_CHUNK)
        if data:
            assert len(data) <= 2 * BODY_CHUNK + 4
            pieces.append(data)
            continue
        wanted = c.tx.body_wanted
        if wanted is None:
            return pieces
        chunk = wanted.body.read(piece)
        if chunk:
            c.tx.send_body(chunk)
        else:
            c.tx.end_body()
    raise AssertionError("the body never ended")


def test_a_body_that_is_not_bytes_is_asked_for_and_streamed():
    """The engine reads no files: it asks for the body after 354, and dot-stuffs
    what it is given across the pieces' boundaries."""
    line = b"." + b"x" * 77 + b"\r\n"  # every line starts with a dot
    body = line * (3 * BODY_CHUNK // len(line) + 7) + b"tail without CRLF"
    c = connected()
    envelope = env("b@y.example", body=io.BytesIO(body))
    c.tx.send(envelope)
    c.tx.data_to_send()
    c.feed(b"250 OK\r\n")
    assert c.tx.body_wanted is None  # not before the server says 354
    c.feed(b"250 OK\r\n")
    c.tx.receive_data(GO)
    assert c.tx.body_wanted is envelope
    pieces = feed_body(c, envelope.body, piece=1000)  # boundaries inside lines and CRLFs
    assert len(pieces) >= 3 and not c.tx.has_output
    decoder = DataDecoder()
    decoded = b"".join(decoder.feed(p) for p in pieces)
    assert decoder.done and not decoder.failed and decoder.rest == b""
    assert decoded == body + b"\r\n"
    c.feed(b"250 2.0.0 queued\r\n")
    [result] = c.events()
    assert codes(result) == {"b@y.example": 250}


def test_only_the_wanted_body_may_be_given():
    c = connected()
    with pytest.raises(RuntimeError):
        c.tx.send_body(b"too early")


def test_a_body_cut_short_is_never_finished_or_followed():
    """The server gives up in the middle of a streamed body: the rest of it is not
    sent, nor anything queued behind it (it would be read as message text), and
    without the final dot nothing of it is delivered; the message is deferred."""
    c = connected(EHLO_PIPELINING)
    envelope = env("b@y.example", body=io.BytesIO(b"line\r\n" * 100_000))
    c.tx.send(envelope)
    c.tx.finish("QUIT")
    c.tx.data_to_send()
    c.tx.receive_data(b"250 OK\r\n250 OK\r\n" + GO)
    c.tx.send_body(envelope.body.read(BODY_CHUNK))
    assert c.tx.data_to_send().startswith(b"line\r\n")
    c.tx.connection_lost("reset by peer")
    assert c.tx.body_wanted is None and c.tx.data_to_send() == b""
    result, ended = c.events()
    assert codes(result) == {"b@y.example": 451}
    assert ended == SessionEnded(None, clean=False)


def test_body_bytes_dot_at_chunk_boundary():
    body = b"a" * (BODY_CHUNK - 2) + b"\r\n.b\r\n"
    c = connected()
    c.tx.send(env("b@y.example", body=body))
    c.tx.data_to_send()
    c.feed(b"250 OK\r\n")
    c.feed(b"250 OK\r\n")
    out = c.feed(GO)
    assert out == b"a" * (BODY_CHUNK - 2) + b"\r\n..b\r\n.\r\n"


def test_empty_body():
    c = connected()
    c.tx.send(env("b@y.example", body=b""))
    c.tx.data_to_send()
    c.feed(b"250 OK\r\n")
    c.feed(b"250 OK\r\n")
    assert c.feed(GO) == b".\r\n"


# -- the two engines against each other ------------------------------------------------------------------


def answer_all(event: ev.Event) -> Reply:
    if isinstance(event, ev.RcptTo) and event.path.mailbox.local == "nobody":
        return reply(550, "5.1.1", "No such user")
    if isinstance(event, ev.TurnRequested):
        return reply(250, "2.0.0", "OK, turning around")
    if isinstance(event, ev.Verify):
        return reply(252, "2.5.0", "Cannot verify")
    return reply(250, "2.0.0", "OK")


def run_pair(sender: Sender, receiver: Receiver) -> list[ev.Event]:
    """Shuttle bytes until neither side has anything to say."""
    received: list[ev.Event] = []
    for _ in range(1000):
        to_server = sender.data_to_send()
        receiver.receive_data(to_server)
        pump(receiver, answer_all, received)
        if received and isinstance(received[-1], ev.TurnRequested):  # TURN is the last command
            sender.receive_data(receiver.data_to_send())
            return received
        to_client = receiver.data_to_send()
        sender.receive_data(to_client)
        if not to_server and not to_client:
            return received
    raise AssertionError("no progress")


@pytest.mark.parametrize("pipelining", [True, False])
def test_sender_against_receiver(pipelining):
    from smtppeer.engine.extensions import default_extensions

    extensions = [x for x in default_extensions() if pipelining or x.keyword != "PIPELINING"]
    rx = Receiver("mx.example", extensions=extensions)
    rx.start()
    tx = Sender("client.example")
    bodies = [b".\r\n..\r\nFrom: x\r\n\r\n.leading dot\r\n", b"", b"no final newline", b"\r\n"]
    for i, body in enumerate(bodies):
        tx.send(Envelope("a@x.example", [f"r{i}@y.example", "nobody@y.example", "postmaster"], body))
    tx.finish("TURN")
    received = run_pair(tx, rx)
    chunks: list[bytes] = []
    got = []
    for e in received:
        if isinstance(e, ev.DataChunk):
            chunks.append(e.data)
        elif isinstance(e, ev.DataEnd):
            got.append(b"".join(chunks))
            chunks = []
    expected = [b if b.endswith(b"\r\n") or not b else b + b"\r\n" for b in bodies]
    assert got == expected
    results = []
    while (e := tx.next_event()) is not None:
        results.append(e)
    assert isinstance(results[0], Ready)
    for i, result in enumerate(results[1:5]):
        assert codes(result) == {f"r{i}@y.example": 250, "nobody@y.example": 550, "postmaster": 250}
    assert isinstance(results[5], Turned)
    assert isinstance(received[-1], ev.TurnRequested)
