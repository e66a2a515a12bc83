"""The receiver-SMTP state machine: bytes in, events and reply bytes out."""

from __future__ import annotations

import pytest

from smtppeer.engine import events as ev
from smtppeer.engine.address import Mailbox, Path
from smtppeer.engine.extensions import Extension
from smtppeer.engine.limits import Limits
from smtppeer.engine.receiver import Receiver
from smtppeer.engine.replies import Reply, reply

from .enginedriver import HOST, Driver, answering, default_answer, parse_replies

SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r"]


def ready(limits: Limits | None = None, **kw) -> Driver:
    p = Driver(limits, **kw)
    assert p.codes(b"EHLO client.example\r\n") == [250]
    p.take_events()
    p.raw = b""
    return p


def in_tx(limits: Limits | None = None, **kw) -> Driver:
    p = ready(limits, **kw)
    assert p.codes(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n") == [250, 250]
    p.take_events()
    return p


MESSAGE = b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"


# -- greeting -----------------------------------------------------------------------


def test_greeting():
    p = Driver()
    assert p.greeting == [Reply(220, (f"{HOST} ESMTP smtppeer",))]
    assert not p.rx.closed


def test_greeting_554_waits_for_quit_and_answers_503():
    # RFC 5321 §3.1: after a 554 greeting the server "MUST still wait for the
    # client to send a QUIT" and "SHOULD respond to any intervening commands with 503".
    p = Driver(greeting=reply(554, "5.7.1", "No service for you"))
    assert p.greeting == [Reply(554, ("No service for you",), "5.7.1")]
    assert not p.rx.closed
    replies = p.send(b"EHLO x\r\nMAIL FROM:<a@x.example>\r\nNOOP\r\nTURN\r\nQUIT\r\n")
    assert [(r.code, r.enhanced) for r in replies] == [(503, "5.5.1")] * 4 + [(221, "2.0.0")]
    assert p.events == [ev.Quit()]
    assert p.rx.closed and p.rx.next_event() is ev.CLOSED


def test_greeting_554_client_that_never_quits_is_dropped():
    p = Driver(Limits(bad_commands=3), greeting=reply(554, "5.7.1", "No"))
    assert p.codes(b"EHLO x\r\nEHLO x\r\nEHLO x\r\nEHLO x\r\n") == [503, 503, 503, 421]
    assert p.rx.closed


def test_greeting_421_closes():
    rx = Receiver(HOST)
    rx.start(reply(421, "4.3.2", "Busy"))
    assert rx.data_to_send() == b"421 4.3.2 Busy\r\n"
    assert rx.closed
    rx.receive_data(b"EHLO x\r\n")
    assert rx.next_event() is ev.CLOSED
    assert rx.data_to_send() == b""


# -- HELO / EHLO ----------------------------------------------------------------------


def test_helo():
    p = Driver()
    assert p.send(b"HELO client.example\r\n") == [Reply(250, (f"{HOST} greets client.example",))]
    assert p.events == [ev.Hello("HELO", "client.example")]
    assert p.rx.helo_name == "client.example" and not p.rx.esmtp


def test_ehlo_multi_line_format():
    p = Driver()
    p.send(b"EHLO client.example\r\n")
    assert p.raw == (
        b"250-mx.example greets client.example\r\n"
        b"250-PIPELINING\r\n"
        b"250-SIZE 52428800\r\n"
        b"250-8BITMIME\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n"
        b"250-SMTPUTF8\r\n"
        b"250 HELP\r\n"
    )
    assert p.events == [ev.Hello("EHLO", "client.example")]
    assert p.rx.esmtp


def test_ehlo_size_follows_limit():
    p = Driver(Limits(message_size=1234))
    assert "SIZE 1234" in p.send(b"EHLO c\r\n")[0].lines


def test_ehlo_address_literal_and_case():
    p = Driver()
    assert p.codes(b"ehlo [192.0.2.1]\r\n") == [250]
    assert p.events == [ev.Hello("EHLO", "[192.0.2.1]")]


@pytest.mark.parametrize("line", [b"HELO\r\n", b"EHLO\r\n", b"EHLO \r\n", b"HELO a b\r\n", b"EHLO a b\r\n"])
def test_hello_bad_arguments(line):
    p = Driver()
    [r] = p.send(line)
    assert (r.code, r.enhanced) == (501, "5.5.4")
    assert p.rx.helo_name is None and p.events == []


def test_ehlo_resets_transaction():
    p = in_tx()
    assert p.codes(b"EHLO again\r\n") == [250]
    assert p.events == [ev.Reset(), ev.Hello("EHLO", "again")]
    assert p.rx.transaction is None
    assert p.codes(b"RCPT TO:<b@y.example>\r\n") == [503]


# -- MAIL --------------------------------------------------------------------------------


def test_mail_before_helo():
    p = Driver()
    [r] = p.send(b"MAIL FROM:<a@x.example>\r\n")
    assert (r.code, r.enhanced) == (503, "5.5.1")
    assert p.events == []


@pytest.mark.parametrize("verb", [b"MAIL", b"SOML", b"SAML", b"mail", b"Saml"])
def test_mail_and_its_rfc821_aliases(verb):
    p = ready()
    [r] = p.send(verb + b" FROM:<a@x.example>\r\n")
    assert (r.code, r.enhanced) == (250, "2.1.0")
    assert p.events == [ev.MailFrom(Path(Mailbox("a", "x.example")), {})]
    assert p.rx.transaction is not None


def test_mail_null_path_and_params():
    p = ready()
    assert p.codes(b"MAIL FROM:<> SIZE=100 BODY=8BITMIME\r\n") == [250]
    assert p.events == [ev.MailFrom(Path(None), {"SIZE": "100", "BODY": "8BITMIME"})]


def test_mail_space_after_colon_tolerated():
    p = ready()
    assert p.codes(b"MAIL FROM: <a@x.example>\r\n") == [250]


def test_mail_source_route_kept():
    p = ready()
    assert p.codes(b"MAIL FROM:<@ONE,@TWO:JOE@THREE>\r\n") == [250]
    assert p.events[0].path == Path(Mailbox("JOE", "THREE"), ("ONE", "TWO"))


def test_nested_mail():
    p = in_tx()
    [r] = p.send(b"MAIL FROM:<c@x.example>\r\n")
    assert (r.code, r.enhanced) == (503, "5.5.1")
    assert p.events == []


@pytest.mark.parametrize(
    "line, enhanced",
    [
        (b"MAIL\r\n", "5.5.4"),
        (b"MAIL FROM\r\n", "5.5.4"),
        (b"MAIL TO:<a@x.example>\r\n", "5.5.4"),
        (b"MAIL FROM:a@x.example\r\n", "5.5.4"),
        (b"MAIL FROM:<a@x.example\r\n", "5.5.4"),
        (b"MAIL FROM:<a@x.example>junk\r\n", "5.5.4"),
        (b"MAIL FROM:<a@x.example> SIZE=1 SIZE=2\r\n", "5.5.4"),
        (b"MAIL FROM:<a@x.example> =x\r\n", "5.5.4"),
        (b"MAIL FROM:<a@x.example> SIZE=big\r\n", "5.5.4"),
        (b"MAIL FROM:<a@x.example> BODY=BINARYMIME\r\n", "5.5.4"),
        (b"MAIL FROM:<a@x.example> BODY\r\n", "5.5.4"),
        (b"MAIL FROM:<a@x.example> SMTPUTF8=yes\r\n", "5.5.4"),
        (b"MAIL FROM:<a..b@x.example>\r\n", "5.1.7"),
        (b"MAIL FROM:<a@x..example>\r\n", "5.1.7"),
        (b"MAIL FROM:<postmaster>\r\n", "5.1.7"),
        (b"MAIL FROM:<a@[300.0.0.1]>\r\n", "5.1.7"),
    ],
)
def test_mail_syntax_errors(line, enhanced):
    p = ready()
    [r] = p.send(line)
    assert (r.code, r.enhanced) == (501, enhanced)
    assert p.events == [] and p.rx.transaction is None


def test_mail_unknown_parameter():
    p = ready()
    [r] = p.send(b"MAIL FROM:<a@x.example> FOO=BAR\r\n")
    assert (r.code, r.enhanced) == (555, "5.5.4")
    assert p.events == []


@pytest.mark.parametrize("value", [b"7BIT", b"8BITMIME", b"8bitmime"])
def test_mail_body_parameter(value):
    p = ready()
    assert p.codes(b"MAIL FROM:<a@x.example> BODY=" + value + b"\r\n") == [250]


def test_mail_refused_by_adapter_opens_no_transaction():
    p = ready(answer=lambda e: reply(550, "5.7.1", "Go away"))
    assert p.codes(b"MAIL FROM:<a@x.example>\r\n") == [550]
    assert p.rx.transaction is None
    assert p.codes(b"RCPT TO:<b@y.example>\r\n") == [503]


# -- SIZE ---------------------------------------------------------------------------------


def test_declared_size_over_limit():
    p = ready(Limits(message_size=1000))
    assert p.codes(b"MAIL FROM:<a@x.example> SIZE=1000\r\n") == [250]
    p.send(b"RSET\r\n")
    [r] = p.send(b"MAIL FROM:<a@x.example> SIZE=1001\r\n")
    assert (r.code, r.enhanced) == (552, "5.3.4")
    assert p.rx.transaction is None


def test_real_size_over_limit_fails_at_end_and_session_goes_on():
    p = in_tx(Limits(message_size=20))
    body = b"0123456789\r\n" * 3  # 36 octets
    replies = p.send(b"DATA\r\n" + body + b".\r\nNOOP\r\n")
    assert [(r.code, r.enhanced) for r in replies] == [(354, None), (552, "5.3.4"), (250, "2.0.0")]
    assert p.of(ev.DataEnd) == []
    assert len(p.of(ev.DataFailed)) == 1
    assert sum(len(c.data) for c in p.of(ev.DataChunk)) <= 20
    assert p.rx.transaction is None
    # the session is usable: a new transaction under the limit goes through
    p.take_events()
    assert p.codes(MESSAGE + b"small\r\n.\r\n") == [250, 250, 354, 250]
    assert p.of(ev.DataEnd) == [ev.DataEnd(7)]


def test_real_size_exactly_at_limit():
    p = in_tx(Limits(message_size=12))
    assert p.codes(b"DATA\r\n0123456789\r\n.\r\n") == [354, 250]
    assert p.of(ev.DataEnd) == [ev.DataEnd(12)]


# -- SMTPUTF8 -------------------------------------------------------------------------------


def test_utf8_sender_needs_smtputf8():
    p = ready()
    [r] = p.send("MAIL FROM:<jö@exämple.com>\r\n".encode())
    assert r.code == 501
    assert p.codes("MAIL FROM:<jö@exämple.com> SMTPUTF8\r\n".encode()) == [250]
    assert p.events[0].path.mailbox == Mailbox("jö", "exämple.com")
    assert p.rx.transaction.utf8
    assert p.codes("RCPT TO:<rö@exämple.com>\r\n".encode()) == [250]


def test_utf8_recipient_refused_without_smtputf8():
    p = in_tx()
    [r] = p.send("RCPT TO:<rö@exämple.com>\r\n".encode())
    assert (r.code, r.enhanced) == (501, "5.1.3")


def test_command_not_utf8():
    p = ready()
    [r] = p.send(b"MAIL FROM:<\xff@x.example>\r\n")
    assert r.code == 500


# -- RCPT -------------------------------------------------------------------------------------


def test_rcpt_before_mail():
    p = ready()
    [r] = p.send(b"RCPT TO:<b@y.example>\r\n")
    assert (r.code, r.enhanced) == (503, "5.5.1")


def test_rcpt_before_helo():
    p = Driver()
    assert p.codes(b"RCPT TO:<b@y.example>\r\n") == [503]


def test_rcpt_events_and_accepted_list():
    p = ready()
    p.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@[192.0.2.7]>\r\n")
    assert p.of(ev.RcptTo) == [
        ev.RcptTo(Path(Mailbox("b", "y.example")), {}),
        ev.RcptTo(Path(Mailbox("c", "[192.0.2.7]")), {}),
    ]
    assert [str(r) for r in p.rx.transaction.recipients] == ["<b@y.example>", "<c@[192.0.2.7]>"]


def test_rcpt_postmaster_without_domain():
    p = ready()
    assert p.codes(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<postmaster>\r\n") == [250, 250]
    [rcpt] = p.of(ev.RcptTo)
    assert rcpt.path.mailbox == Mailbox("postmaster", "")
    assert rcpt.path.mailbox.is_postmaster


def test_rcpt_source_route_kept():
    p = ready()
    p.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<@ONE,@TWO:JOE@THREE>\r\n")
    [rcpt] = p.of(ev.RcptTo)
    assert rcpt.path.route == ("ONE", "TWO") and rcpt.path.mailbox == Mailbox("JOE", "THREE")


@pytest.mark.parametrize(
    "line, enhanced",
    [
        (b"RCPT\r\n", "5.5.4"),
        (b"RCPT TO\r\n", "5.5.4"),
        (b"RCPT FROM:<b@y.example>\r\n", "5.5.4"),
        (b"RCPT TO:b@y.example\r\n", "5.5.4"),
        (b"RCPT TO:<b@y.example>x\r\n", "5.5.4"),
        (b"RCPT TO:<>\r\n", "5.1.3"),
        (b"RCPT TO:<b>\r\n", "5.1.3"),
        (b"RCPT TO:<b@>\r\n", "5.1.3"),
    ],
)
def test_rcpt_syntax_errors(line, enhanced):
    p = in_tx()
    [r] = p.send(line)
    assert (r.code, r.enhanced) == (501, enhanced)
    assert p.events == []


def test_rcpt_unknown_parameter():
    p = in_tx()
    [r] = p.send(b"RCPT TO:<b@y.example> NOTIFY=NEVER\r\n")
    assert (r.code, r.enhanced) == (555, "5.5.4")


def test_rcpt_space_after_colon_tolerated():
    p = in_tx()
    assert p.codes(b"RCPT TO: <c@y.example>\r\n") == [250]


def test_recipients_limit():
    p = ready(Limits(recipients=3))
    p.send(b"MAIL FROM:<a@x.example>\r\n")
    p.take_events()
    data = b"".join(b"RCPT TO:<r%d@y.example>\r\n" % i for i in range(5))
    replies = p.send(data)
    assert [(r.code, r.enhanced) for r in replies] == [(250, "2.1.5")] * 3 + [(452, "4.5.3")] * 2
    assert len(p.of(ev.RcptTo)) == 3
    assert p.codes(b"DATA\r\nx\r\n.\r\n") == [354, 250]


def test_refused_recipients_do_not_count_against_the_limit():
    def answer(e):
        if isinstance(e, ev.RcptTo) and e.path.mailbox.local.startswith("no"):
            return reply(550, "5.1.1", "No such user")
        return default_answer(e)

    p = ready(Limits(recipients=1), answer=answer)
    codes = p.codes(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<no1@y>\r\nRCPT TO:<no2@y>\r\nRCPT TO:<ok@y>\r\n")
    assert codes == [250, 550, 550, 250]
    assert p.codes(b"RCPT TO:<ok2@y>\r\n") == [452]


# -- DATA ----------------------------------------------------------------------------------------


def test_data_before_mail():
    p = ready()
    [r] = p.send(b"DATA\r\n")
    assert (r.code, r.enhanced) == (503, "5.5.1")
    assert not p.rx.in_data


def test_data_without_recipients():
    p = ready()
    p.send(b"MAIL FROM:<a@x.example>\r\n")
    [r] = p.send(b"DATA\r\n")
    assert (r.code, r.enhanced) == (554, "5.5.1")
    assert not p.rx.in_data


def test_data_when_every_recipient_was_refused():
    p = ready(answer=answering(ev.RcptTo, reply(550, "5.1.1", "No")))
    assert p.codes(MESSAGE + b"body\r\n.\r\n") == [250, 550, 554, 500, 500]
    # the body lines were read as commands (there was no DATA), each refused
    assert not p.of(ev.DataStarted)


def test_data_with_argument():
    p = in_tx()
    [r] = p.send(b"DATA now\r\n")
    assert (r.code, r.enhanced) == (501, "5.5.4")
    assert not p.rx.in_data


def test_data_flow():
    p = in_tx()
    assert p.send(b"DATA\r\n") == [Reply(354, ("End data with <CR><LF>.<CR><LF>",))]
    assert p.rx.in_data
    assert p.events == [ev.DataStarted()]
    p.send(b"Subject: hi\r\n\r\n..dot\r\n")
    assert p.codes(b".\r\n") == [250]
    body = b"".join(c.data for c in p.of(ev.DataChunk))
    assert body == b"Subject: hi\r\n\r\n.dot\r\n"
    assert p.of(ev.DataEnd) == [ev.DataEnd(len(body))]
    assert p.rx.transaction is None and not p.rx.in_data


def test_empty_body():
    p = in_tx()
    assert p.codes(b"DATA\r\n.\r\n") == [354, 250]
    assert p.of(ev.DataChunk) == [] and p.of(ev.DataEnd) == [ev.DataEnd(0)]


def test_data_end_refused_by_adapter():
    p = in_tx(answer=answering(ev.DataEnd, reply(451, "4.3.0", "Disk full")))
    assert p.codes(b"DATA\r\nx\r\n.\r\n") == [354, 451]
    assert p.rx.transaction is None


def test_body_commands_never_run():
    p = in_tx()
    body = b"QUIT\r\nRSET\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nTURN\r\n"
    assert p.codes(b"DATA\r\n" + body + b".\r\n") == [354, 250]
    assert b"".join(c.data for c in p.of(ev.DataChunk)) == body
    assert not p.of(ev.Quit) and not p.of(ev.MailFrom) and not p.rx.closed


def test_body_split_at_every_byte_boundary():
    body = b"Subject: split\r\n\r\n..a\r\n.\r\nQUIT\r\nb.\r\n"
    stuffed = b"Subject: split\r\n\r\n...a\r\n..\r\nQUIT\r\nb.\r\n"
    stream = MESSAGE + stuffed + b".\r\nNOOP\r\n"
    for i in range(len(stream) + 1):
        p = ready()
        p.send(stream[:i])
        p.send(stream[i:])
        assert [r.code for r in parse_replies(p.raw)] == [250, 250, 354, 250, 250], i
        assert b"".join(c.data for c in p.of(ev.DataChunk)) == body, i
        assert p.of(ev.DataEnd) == [ev.DataEnd(len(body))]


def test_body_bytewise():
    p = ready()
    body = b"line one\r\n..two\r\n\r\n"
    for b in MESSAGE + b"line one\r\n...two\r\n\r\n.\r\nQUIT\r\n":
        p.send(bytes([b]))
    assert [r.code for r in parse_replies(p.raw)] == [250, 250, 354, 250, 221]
    assert b"".join(c.data for c in p.of(ev.DataChunk)) == body
    assert p.rx.closed


def test_text_line_limit_keeps_session_in_data():
    p = in_tx()
    replies = p.send(b"DATA\r\n" + b"x" * 999 + b"\r\nQUIT\r\nMAIL FROM:<e@x>\r\n")
    assert [r.code for r in replies] == [354]
    assert p.rx.in_data and not p.rx.closed
    [r] = p.send(b"more\r\n.\r\n")
    assert (r.code, r.enhanced) == (500, "5.5.2")
    assert len(p.of(ev.DataFailed)) == 1 and p.of(ev.DataEnd) == []
    assert not p.of(ev.Quit) and not p.of(ev.MailFrom)
    assert not p.rx.in_data and p.rx.transaction is None
    assert p.codes(b"NOOP\r\n") == [250]


def test_text_line_exactly_at_limit():
    p = in_tx()
    line = b"x" * 998 + b"\r\n"
    assert p.codes(b"DATA\r\n" + line + b".\r\n") == [354, 250]
    assert p.of(ev.DataEnd) == [ev.DataEnd(1000)]


def test_text_line_limit_configurable():
    p = in_tx(Limits(text_line=10))
    assert p.codes(b"DATA\r\n12345678\r\n.\r\n") == [354, 250]
    p.send(MESSAGE[:-6].split(b"\r\n", 1)[0] + b"\r\n")
    assert p.codes(b"RCPT TO:<b@y.example>\r\nDATA\r\n123456789\r\n.\r\n") == [250, 354, 500]


@pytest.mark.parametrize("variant", SMUGGLING)
def test_smuggling_variants(variant):
    p = ready()
    smuggled = b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@y.example>\r\nDATA\r\nforged\r\n"
    stream = MESSAGE + b"Subject: innocent\r\n\r\nhi" + variant + smuggled + b".\r\nNOOP\r\n"
    replies = p.send(stream)
    assert [r.code for r in replies] == [250, 250, 354, 550, 250]
    failed = replies[3]
    assert failed.is_permanent and failed.enhanced.startswith("5.")
    assert len(p.of(ev.MailFrom)) == 1 and len(p.of(ev.RcptTo)) == 1
    assert len(p.of(ev.DataStarted)) == 1 and p.of(ev.DataEnd) == []
    assert len(p.of(ev.DataFailed)) == 1
    assert p.rx.transaction is None and not p.rx.in_data


@pytest.mark.parametrize("variant", SMUGGLING)
def test_smuggling_variants_bytewise(variant):
    p = ready()
    stream = MESSAGE + b"hi" + variant + b"MAIL FROM:<evil@x.example>\r\n.\r\nRSET\r\n"
    for i in range(len(stream)):
        p.send(stream[i : i + 1])
    assert [r.code for r in parse_replies(p.raw)] == [250, 250, 354, 550, 250]
    assert len(p.of(ev.MailFrom)) == 1 and p.of(ev.DataEnd) == []


@pytest.mark.parametrize("bad", [b"a\rb", b"a\nb", b"trailing\r", b"\n"])
def test_bare_cr_or_lf_in_body_fails_message(bad):
    p = in_tx()
    replies = p.send(b"DATA\r\nok\r\n" + bad + b"\r\n.\r\n")
    assert [r.code for r in replies] == [354, 550]
    assert replies[1].enhanced == "5.6.0"


# -- RSET, NOOP, QUIT, HELP, VRFY, EXPN, SEND ---------------------------------------------------


def test_rset():
    p = in_tx()
    [r] = p.send(b"RSET\r\n")
    assert (r.code, r.enhanced) == (250, "2.0.0")
    assert p.events == [ev.Reset()]
    assert p.rx.transaction is None
    assert p.codes(b"RSET\r\n") == [250]
    assert p.events == [ev.Reset()]  # no second Reset without a transaction
    assert p.rx.helo_name == "client.example"  # RSET keeps the greeting


def test_rset_before_helo():
    p = Driver()
    assert p.codes(b"RSET\r\n") == [250]


def test_rset_with_argument():
    p = in_tx()
    [r] = p.send(b"RSET all\r\n")
    assert (r.code, r.enhanced) == (501, "5.5.4")
    assert p.rx.transaction is not None


@pytest.mark.parametrize("line", [b"NOOP\r\n", b"NOOP anything at all\r\n", b"noop\r\n"])
def test_noop(line):
    p = Driver()
    [r] = p.send(line)
    assert (r.code, r.enhanced) == (250, "2.0.0")


def test_noop_keeps_transaction():
    p = in_tx()
    assert p.codes(b"NOOP\r\nDATA\r\n") == [250, 354]


def test_quit():
    p = in_tx()
    [r] = p.send(b"QUIT\r\nNOOP\r\n")
    assert (r.code, r.enhanced) == (221, "2.0.0")
    assert p.events == [ev.Quit()]
    assert p.rx.closed
    assert p.rx.next_event() is ev.CLOSED
    assert p.send(b"NOOP\r\n") == []


# -- the client's input ends (a half-close) ------------------------------------------------


def test_end_of_input_after_dot_and_quit_still_answers_both():
    """Exim's end of session: ``.`` and QUIT, then its side is shut down before it
    reads anything.  The DATA decision is still pending when the input ends."""
    p = in_tx()
    p.answer = None  # the disk has not said yet
    p.rx.receive_data(b"DATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    p.rx.receive_eof()
    assert p.pump() is ev.PAUSED
    assert [r.code for r in p.out()] == [354]
    assert len(p.of(ev.DataEnd)) == 1
    p.rx.answer(reply(250, "2.0.0", "Queued"))
    assert p.pump() is ev.CLOSED
    assert [r.code for r in p.out()] == [250, 221]
    assert p.take_events()[-1] == ev.Quit(), "a QUIT, not a Close: the session ended properly"


def test_end_of_input_without_quit_answers_what_was_sent_then_closes():
    p = ready()
    p.rx.receive_data(b"NOOP\r\nMAIL FROM:<a@x.example>\r\n")
    p.rx.receive_eof()
    assert p.pump() is ev.CLOSED
    assert [r.code for r in p.out()] == [250, 250]
    assert p.take_events()[-1] == ev.Close("the client closed its side of the connection")
    assert p.rx.transaction is None


@pytest.mark.parametrize(
    "sent", [b"NOOP", b"DATA\r\nSubject: cut\r\n\r\nno final dot\r\n", b"AUTH PLAIN"], ids=repr
)
def test_end_of_input_leaves_an_unfinished_command_or_message_unanswered(sent):
    """A line without its CRLF is not a command; a message without its dot is no message."""
    p = in_tx()
    p.rx.receive_data(sent)
    p.rx.receive_eof()
    assert p.pump() is ev.CLOSED
    assert [r.code for r in p.out()] in ([], [354])
    assert not p.of(ev.DataEnd)
    assert p.events[-1] == ev.Close("the client closed its side of the connection")


def test_input_after_quit_is_ignored_when_the_input_ends_too():
    p = ready()
    p.rx.receive_data(b"QUIT\r\nNOOP\r\nMAIL FROM:<a@x.example>\r\n")
    p.rx.receive_eof()
    assert p.pump() is ev.CLOSED
    assert [r.code for r in p.out()] == [221]
    assert p.take_events() == [ev.Quit()]


def test_quit_with_argument():
    p = Driver()
    [r] = p.send(b"QUIT now\r\n")
    assert (r.code, r.enhanced) == (501, "5.5.4")
    assert not p.rx.closed


@pytest.mark.parametrize("line", [b"HELP\r\n", b"HELP MAIL\r\n"])
def test_help(line):
    p = Driver()
    p.send(line)
    [r] = parse_replies(p.raw)
    assert r.code == 214 and r.enhanced == "2.0.0" and len(r.lines) == 3
    assert all(raw.startswith((b"214-2.0.0 ", b"214 2.0.0 ")) for raw in p.raw.splitlines())


@pytest.mark.parametrize("verb", ["VRFY", "EXPN"])
def test_verify_commands_ask_policy(verb):
    p = Driver(answer=None)
    p.rx.receive_data(f"{verb} someone\r\nNOOP\r\n".encode())
    assert p.pump() is ev.PAUSED
    assert p.events == [ev.Verify(verb, "someone")]
    assert p.out() == []
    p.rx.answer(reply(252, "2.5.0", "Cannot VRFY user"))
    assert p.pump() is ev.NEED_DATA
    assert [(r.code, r.enhanced) for r in p.out()] == [(252, "2.5.0"), (250, "2.0.0")]


@pytest.mark.parametrize("verb", [b"VRFY", b"EXPN"])
def test_verify_needs_argument(verb):
    p = Driver()
    [r] = p.send(verb + b"\r\n")
    assert (r.code, r.enhanced) == (501, "5.5.4")


@pytest.mark.parametrize("line", [b"SEND FROM:<a@x.example>\r\n", b"send\r\n"])
def test_send_not_implemented(line):
    p = ready()
    [r] = p.send(line)
    assert (r.code, r.enhanced) == (502, "5.5.1")
    assert p.events == []


# -- TURN ------------------------------------------------------------------------------------------


def test_turn_before_helo():
    p = Driver()
    [r] = p.send(b"TURN\r\n")
    assert (r.code, r.enhanced) == (503, "5.5.1")


def test_turn_inside_transaction():
    p = in_tx()
    [r] = p.send(b"TURN\r\n")
    assert (r.code, r.enhanced) == (503, "5.5.1")
    assert p.events == [] and p.rx.transaction is not None


def test_turn_after_mail_only():
    p = ready()
    assert p.codes(b"MAIL FROM:<a@x.example>\r\nTURN\r\n") == [250, 503]


def test_turn_with_argument():
    p = ready()
    [r] = p.send(b"TURN please\r\n")
    assert (r.code, r.enhanced) == (501, "5.5.4")


def test_turn_refused_by_the_policy():
    p = ready(answer=answering(ev.TurnRequested, reply(502, "5.5.1", "TURN not allowed")))
    [r] = p.send(b"TURN\r\n")
    assert (r.code, r.enhanced) == (502, "5.5.1")
    assert p.events == [ev.TurnRequested()]
    assert p.codes(b"NOOP\r\n") == [250]


def test_turn_accepted_and_unread_bytes_handed_over():
    p = ready(answer=None)
    p.rx.receive_data(b"TURN\r\n220 other.example ESMTP\r\nleftover")
    assert p.pump() is ev.PAUSED
    assert p.events == [ev.TurnRequested()]
    p.rx.answer(reply(250, "2.0.0", "OK, turning around"))
    assert p.out() == [Reply(250, ("OK, turning around",), "2.0.0")]
    assert p.rx.take_unread() == b"220 other.example ESMTP\r\nleftover"
    assert p.rx.take_unread() == b""


def test_turn_after_completed_transaction():
    p = ready(answer=answering(ev.TurnRequested, reply(250, "2.0.0", "OK")))
    assert p.codes(MESSAGE + b"x\r\n.\r\nTURN\r\n") == [250, 250, 354, 250, 250]
    assert isinstance(p.events[-1], ev.TurnRequested)


def test_discard_unread():
    p = ready(answer=None)
    p.rx.receive_data(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y>\r\n")
    assert p.rx.discard_unread() == len(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y>\r\n")
    assert p.rx.discard_unread() == 0
    p.rx.receive_data(b"NOOP\r\n")
    assert p.pump() is ev.NEED_DATA
    assert [r.code for r in p.out()] == [250]
    assert p.events == []


# -- bad input: 500, line limits, bare CR/LF, the bad-command limit ----------------------------------


@pytest.mark.parametrize("line", [b"FOO\r\n", b"MAILFROM:<a@b>\r\n", b"XYZZY bar\r\n", b"NOOPX\r\n"])
def test_unknown_command(line):
    p = ready()
    [r] = p.send(line)
    assert (r.code, r.enhanced) == (500, "5.5.1")
    assert p.events == []


def test_leading_space_is_not_a_command():
    p = ready()
    [r] = p.send(b" NOOP\r\n")
    assert r.code == 500 and p.events == []


def test_empty_line():
    p = ready()
    [r] = p.send(b"\r\n")
    assert (r.code, r.enhanced) == (500, "5.5.2")


def test_command_line_limit():
    p = ready()
    ok = b"NOOP " + b"x" * 505  # 510 octets, 512 with CRLF
    assert p.codes(ok + b"\r\n") == [250]
    too_long = ok + b"x"
    [r] = p.send(too_long + b"\r\n")
    assert (r.code, r.enhanced) == (500, "5.5.2")
    assert p.codes(b"NOOP\r\n") == [250]


def test_long_line_tail_not_run_as_command():
    p = ready()
    line = b"NOOP " + b"x" * 600 + b" QUIT\r\n"
    assert p.codes(line[:300]) == []
    assert p.codes(line[300:]) == [500]
    assert not p.rx.closed and p.events == []


def test_command_line_limit_configurable():
    p = Driver(Limits(command_line=8))
    assert p.codes(b"HELO ab\r\n") == [500]
    assert p.codes(b"HELO a\r\n") == [250]
    assert p.codes(b"NOOP x\r\n") == [250]
    assert p.codes(b"NOOP xy\r\n") == [500]


@pytest.mark.parametrize("line", [b"NOOP\n", b"NO\rOP\r\n", b"NOOP\r\r\n", b"QUIT\rNOOP\r\n", b"\n"])
def test_bare_cr_or_lf_in_command(line):
    p = ready()
    [r] = p.send(line)
    assert (r.code, r.enhanced) == (500, "5.5.2")
    assert p.events == [] and not p.rx.closed
    assert p.codes(b"NOOP\r\n") == [250]


def test_bad_command_limit_closes():
    p = ready(Limits(bad_commands=3))
    replies = p.send(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    assert [r.code for r in replies] == [500, 500, 500, 421]
    assert replies[-1].enhanced == "4.7.0"
    assert p.events == [ev.Close("too many bad commands")]
    assert p.rx.closed and p.rx.next_event() is ev.CLOSED
    assert p.send(b"NOOP\r\n") == []


def test_bad_command_limit_counts_every_kind_of_error():
    p = ready(Limits(bad_commands=5))
    codes = p.codes(b"\r\nRCPT TO:<a@b>\r\nMAIL FROM:x\r\nNOOP\n" + b"x" * 600 + b"\r\n")
    assert codes == [500, 503, 501, 500, 500, 421]
    assert p.rx.closed


def test_good_replies_do_not_count_as_errors():
    p = ready(Limits(bad_commands=2))
    assert p.codes(b"NOOP\r\n" * 10 + b"SEND\r\nVRFY x\r\n") == [250] * 10 + [502, 252]
    assert not p.rx.closed


def test_close_from_outside():
    p = ready()
    p.rx.close(reply(421, "4.4.2", "Timeout"))
    assert p.out() == [Reply(421, ("Timeout",), "4.4.2")]
    assert p.rx.closed and p.rx.next_event() is ev.CLOSED
    p.rx.close(reply(421, "4.4.2", "again"))
    assert p.out() == []


def test_markers():
    assert [repr(m) for m in (ev.NEED_DATA, ev.PAUSED, ev.CLOSED)] == ["NEED_DATA", "PAUSED", "CLOSED"]


def test_answer_without_decision():
    p = ready()
    with pytest.raises(RuntimeError):
        p.rx.answer(reply(250, "2.0.0", "OK"))


# -- pipelining and late answers -------------------------------------------------------------------------


def test_pipelined_session_in_one_feed():
    p = Driver()
    stream = (
        b"EHLO c\r\n"
        + MESSAGE
        + b"one\r\n.\r\n"
        + b"MAIL FROM:<> \r\nRCPT TO:<postmaster>\r\nRCPT TO:<d@y.example>\r\nDATA\r\ntwo\r\n.\r\n"
        + b"QUIT\r\n"
    )
    replies = p.send(stream)
    assert [r.code for r in replies] == [250, 250, 250, 354, 250, 250, 250, 250, 354, 250, 221]
    kinds = [type(e).__name__ for e in p.events]
    assert kinds == [
        "Hello", "MailFrom", "RcptTo", "DataStarted", "DataChunk", "DataEnd",
        "MailFrom", "RcptTo", "RcptTo", "DataStarted", "DataChunk", "DataEnd", "Quit",
    ]  # fmt: skip
    assert [c.data for c in p.of(ev.DataChunk)] == [b"one\r\n", b"two\r\n"]


def test_decisions_answered_one_by_one_in_order():
    p = ready(answer=None)
    p.rx.receive_data(MESSAGE + b"body\r\n.\r\nNOOP\r\n")

    def texts():
        return [r.lines[0] for r in p.out()]

    assert p.pump() is ev.PAUSED and isinstance(p.events[-1], ev.MailFrom)
    assert p.rx.next_event() is ev.PAUSED  # stays paused until answered
    assert texts() == []
    p.rx.answer(reply(250, "2.1.0", "sender ok"))
    assert p.pump() is ev.PAUSED and isinstance(p.events[-1], ev.RcptTo)
    assert texts() == ["sender ok"]
    p.rx.answer(reply(250, "2.1.5", "rcpt ok"))
    assert p.pump() is ev.PAUSED and isinstance(p.events[-1], ev.DataEnd)
    assert texts() == ["rcpt ok", "End data with <CR><LF>.<CR><LF>"]
    p.rx.answer(reply(250, "2.0.0", "stored"))
    assert p.pump() is ev.NEED_DATA
    assert texts() == ["stored", "OK"]


def test_late_answer_holds_back_later_replies():
    p = ready(answer=None)
    p.rx.receive_data(b"MAIL FROM:<a@x.example>\r\nNOOP\r\nRCPT TO:<b@y.example>\r\n")
    assert p.pump() is ev.PAUSED
    # more input arrives while the decision is pending: still no reply to NOOP
    p.rx.receive_data(b"NOOP\r\n")
    assert p.rx.next_event() is ev.PAUSED
    assert p.out() == []
    p.rx.answer(reply(250, "2.1.0", "OK"))
    assert p.pump() is ev.PAUSED  # the RCPT
    assert [r.code for r in p.out()] == [250, 250]
    p.rx.answer(reply(550, "5.1.1", "no such user"))
    assert p.pump() is ev.NEED_DATA
    assert [r.code for r in p.out()] == [550, 250]


def test_body_arrives_while_data_end_pending():
    p = in_tx()
    p.answer = None
    p.rx.receive_data(b"DATA\r\nx\r\n.\r\nMAIL FROM:<a@x.example>\r\n")
    p.pump()
    assert [type(e) for e in p.events] == [ev.DataStarted, ev.DataChunk, ev.DataEnd]
    p.rx.receive_data(b"RCPT TO:<b@y.example>\r\n")
    assert p.rx.next_event() is ev.PAUSED
    p.rx.answer(reply(250, "2.0.0", "stored"))
    assert isinstance(p.rx.next_event(), ev.MailFrom)


# -- enhanced status codes ------------------------------------------------------------------------------


def test_every_reply_carries_an_enhanced_code():
    p = ready(Limits(bad_commands=100, message_size=100, recipients=2))
    p.send(
        b"HELO c\r\nEHLO c\r\nFOO\r\n\r\nNOOP\nMAIL\r\nRCPT TO:<a@b>\r\nDATA\r\nTURN x\r\nTURN\r\n"
        b"MAIL FROM:<a@x.example> SIZE=1000\r\nMAIL FROM:<a@x.example> X=1\r\n"
        b"MAIL FROM:<a@x.example>\r\nMAIL FROM:<a@x.example>\r\nTURN\r\nDATA\r\n"
        b"RCPT TO:<>\r\nRCPT TO:<a@b> X=1\r\nRCPT TO:<a@b>\r\nRCPT TO:<c@b>\r\nRCPT TO:<d@b>\r\n"
        b"DATA\r\n"
        + b"y" * 200
        + b"\r\n.\r\n"
        + MESSAGE
        + b"a\rb\r\n.\r\n"
        + MESSAGE
        + b"z" * 1200
        + b"\r\n.\r\n"
        + MESSAGE
        + b"ok\r\n.\r\n"
        + b"RSET\r\nNOOP\r\nHELP\r\nVRFY x\r\nEXPN y\r\nSEND\r\nQUIT x\r\n"
        + b"x" * 600
        + b"\r\nQUIT\r\n"
    )
    replies = parse_replies(p.raw)
    assert len(replies) > 40
    allowed_without = {250, 354}
    for r in replies:
        if r.enhanced is None:
            assert r.code in allowed_without, r
            if r.code == 250:
                assert "greets" in r.lines[0], r  # only HELO/EHLO
        else:
            assert r.enhanced[0] == str(r.code)[0], r
    codes = {r.code for r in replies}
    assert {500, 501, 502, 503, 552, 554, 555, 452, 550, 354, 214, 252, 221} <= codes


# -- the extension registry -----------------------------------------------------------------------------


class Xtest(Extension):
    keyword = "XTEST"
    enabled = True

    def ehlo_line(self, receiver):
        return self.keyword if self.enabled else None

    @staticmethod
    def _cmd(receiver, arg):
        if arg == "reply":
            return reply(250, "2.0.0", "direct")
        if arg == "bad":
            return reply(501, "5.5.4", "bad")
        return ev.ExtensionCommand("XTEST", arg)

    @staticmethod
    def _param(receiver, value):
        return None if value == "ok" else reply(501, "5.5.4", "XP must be ok")

    commands = {"XTEST": _cmd}
    mail_params = {"XP": _param}
    rcpt_params = {"XR": _param}


def test_extension_command_and_params():
    x = Xtest()
    p = ready(extensions=[x])
    assert p.codes(b"EHLO c\r\n") == [250]
    assert p.send(b"EHLO c\r\n")[0].lines[1:] == ("XTEST",)
    p.take_events()
    assert p.codes(b"XTEST reply\r\nXTEST bad\r\nXTEST go\r\n") == [250, 501, 502]
    assert p.events == [ev.ExtensionCommand("XTEST", "go")]
    codes = p.codes(b"MAIL FROM:<a@x> XP=ok\r\nRCPT TO:<b@y> XR=no\r\nRCPT TO:<b@y> XR=ok\r\n")
    assert codes == [250, 501, 250]
    assert p.codes(b"RSET\r\nMAIL FROM:<a@x> SIZE=10\r\n") == [250, 555]  # SIZE not registered here
    x.enabled = False
    [r] = p.send(b"XTEST go\r\n")
    assert (r.code, r.enhanced) == (503, "5.5.1")


def test_parameters_after_helo_are_refused_with_555():
    """Service extensions exist only in an EHLO session (RFC 5321 §4.1.1.1)."""
    p = Driver()
    p.send(b"HELO a.example\r\n")
    [r] = p.send(b"MAIL FROM:<a@x.example> SIZE=100\r\n")
    assert (r.code, r.enhanced) == (555, "5.5.4")
    assert p.codes(b"MAIL FROM:<a@x.example>\r\n") == [250]
    [r] = p.send(b"RCPT TO:<b@y.example> NOTIFY=NEVER\r\n")
    assert r.code == 555


def test_buffered_input_counts_unparsed_pipelined_commands():
    p = ready()
    p.answer = None  # never answers: the engine stays paused on MAIL
    p.rx.receive_data(b"MAIL FROM:<a@x.example>\r\n" + b"NOOP\r\n" * 100)
    p.pump()
    assert p.rx.buffered_input == len(b"NOOP\r\n") * 100
