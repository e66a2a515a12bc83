"""Reply codes and enhanced status codes agree in class (RFC 3463 §2, RFC 2034).

A ``4xx`` reply carries a ``4.x.x`` code and a ``5xx`` reply a ``5.x.x`` one:
a client that reads the enhanced code (Postfix does) must never be told
"permanent" by one half of a reply and "try again" by the other.  Three
checks, from the cheapest to the most complete:

* ``reply()`` and ``Reply`` refuse a mismatch (``ValueError``), so a wrong
  literal fails the first test that reaches it;
* every ``reply(CODE, "X.Y.Z", ...)`` written anywhere in ``smtppeer/`` is
  read from the source (AST) and checked, reached by a test or not;
* every command the receiver knows is run, in every state that answers it
  differently, with every extension plugged in.
"""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import pytest

from smtppeer.engine import events as ev
from smtppeer.engine.atrn import Atrn
from smtppeer.engine.auth import Auth
from smtppeer.engine.etrn import Etrn
from smtppeer.engine.extensions import default_extensions
from smtppeer.engine.limits import Limits
from smtppeer.engine.receiver import Receiver
from smtppeer.engine.replies import Reply, ReplyParser, enhanced_agrees, reply
from smtppeer.engine.starttls import StartTls

from .enginedriver import parse_replies, pump
from .logins import lookup

PACKAGE = Path(__file__).resolve().parent.parent / "smtppeer"


@pytest.mark.parametrize(
    ("code", "enhanced"),
    [(459, "5.7.1"), (550, "4.7.1"), (250, "5.0.0"), (421, "2.0.0"), (354, "3.0.0"), (250, "2.0"), (2, "x")],
)
def test_reply_refuses_a_class_mismatch(code, enhanced):
    with pytest.raises(ValueError, match="enhanced status code"):
        reply(code, enhanced, "text")
    with pytest.raises(ValueError, match="enhanced status code"):
        Reply(code, ("text",), enhanced)


@pytest.mark.parametrize(
    ("code", "enhanced"), [(459, "4.7.1"), (250, "2.1.0"), (554, "5.4.6"), (220, None), (354, None)]
)
def test_reply_accepts_an_agreeing_code(code, enhanced):
    assert reply(code, enhanced, "text").enhanced == enhanced


def test_a_server_reply_with_a_mismatched_code_is_parsed_without_its_enhanced_code():
    """What a remote server sends is never refused: the mismatched code is just not taken as one."""
    parser = ReplyParser()
    parser.feed(b"459 5.7.1 Node not allowed\r\n")
    assert parser.next_reply() == Reply(459, ("5.7.1 Node not allowed",), None)


def literal_replies() -> list[tuple[str, int, int, str]]:
    """Every ``reply(CODE, "X.Y.Z", ...)`` and ``Reply(CODE, ..., "X.Y.Z")`` with literal codes."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name == "reply" and len(node.args) >= 2:
                code, enhanced = node.args[0], node.args[1]
            elif name == "Reply" and len(node.args) >= 3:
                code, enhanced = node.args[0], node.args[2]
            else:
                continue
            if isinstance(code, ast.Constant) and isinstance(enhanced, ast.Constant):
                where = str(path.relative_to(PACKAGE.parent))
                found.append((where, node.lineno, code.value, enhanced.value))
    return found


def test_every_reply_written_in_the_code_agrees_in_class():
    found = literal_replies()
    assert len(found) > 100  # the scan does see the code base
    wrong = [
        f"{where}:{line}: {code} {enhanced}"
        for where, line, code, enhanced in found
        if enhanced is not None and not enhanced_agrees(code, enhanced)
    ]
    assert wrong == []


# -- every command the receiver answers ----------------------------------------------------------


def answer(event: ev.Event) -> Reply:
    """A plausible answer per decision, as the service gives (refusals included)."""
    return {
        ev.MailFrom: reply(250, "2.1.0", "Sender OK"),
        ev.RcptTo: reply(250, "2.1.5", "Recipient OK"),
        ev.DataEnd: reply(250, "2.0.0", "Queued"),
        ev.Verify: reply(252, "2.5.2", "Cannot verify"),
        ev.StartTLSRequested: reply(454, "4.7.0", "TLS not available"),
        ev.TurnRequested: reply(502, "5.5.1", "TURN not allowed"),
        ev.QueueStartRequested: reply(459, "4.7.1", "Node not allowed"),
    }.get(type(event), reply(502, "5.5.1", "Not implemented"))


COMMANDS = [
    b"HELO",
    b"HELO c.example",
    b"EHLO",
    b"EHLO c.example",
    b"MAIL",
    b"MAIL FROM:<a@x.example> SIZE=99999999",
    b"MAIL FROM:<a@x.example> BODY=9BIT",
    b"MAIL FROM:<a@x.example> X=1",
    b"MAIL FROM:<a@x.example> AUTH=+",
    b"MAIL FROM:<a@>",
    b"RCPT TO:<b@y.example>",
    b"DATA",
    b"TURN",
    b"ETRN",
    b"ETRN x.example",
    b"ATRN",
    b"STARTTLS",
    b"AUTH",
    b"AUTH X-UNKNOWN",
    b"AUTH PLAIN !!!",
    b"AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong"),
    b"AUTH LOGIN",
    b"*",
    b"MAIL FROM:<a@x.example>",
    b"MAIL FROM:<a@x.example>",
    b"RCPT",
    b"RCPT TO:<>",
    b"RCPT TO:<b@y.example> X=1",
    b"RCPT TO:<b@y.example>",
    b"RCPT TO:<c@y.example>",
    b"TURN",
    b"ETRN x.example",
    b"ATRN",
    b"STARTTLS",
    b"AUTH PLAIN",
    b"DATA x",
    b"DATA",
    b"body\r\n.",
    b"MAIL FROM:<a@x.example>",
    b"RCPT TO:<b@y.example>",
    b"DATA",
    b"bare\rCR\r\n.",
    b"MAIL FROM:<a@x.example>",
    b"RCPT TO:<b@y.example>",
    b"DATA",
    b"y" * 1200 + b"\r\n.",
    b"MAIL FROM:<a@x.example>",
    b"RCPT TO:<b@y.example>",
    b"DATA",
    b"z" * 900 + b"\r\n" + b"z" * 900 + b"\r\n.",
    b"RSET x",
    b"RSET",
    b"NOOP",
    b"HELP",
    b"VRFY",
    b"VRFY x",
    b"EXPN y",
    b"SEND",
    b"SOML FROM:<a@x.example>",
    b"RSET",
    b"SAML FROM:<a@x.example>",
    b"DATA",
    b"FOO",
    b"",
    b"x" * 600,
    b"bare\nLF",
    b"\xff\xfe",
    b"QUIT x",
    b"QUIT",
]


def run(script: list[bytes], **kw) -> list[Reply]:
    extensions = [*default_extensions(), StartTls(), Auth(lookup, allow_clear=True), Etrn(), Atrn()]
    rx = Receiver("mx.example", Limits(bad_commands=1000, message_size=1000, recipients=1), extensions, **kw)
    rx.start()
    rx.receive_data(b"".join(line + b"\r\n" for line in script))
    pump(rx, answer, limit=10 * len(script))
    return parse_replies(rx.data_to_send())


@pytest.mark.parametrize(
    "kw", [{}, {"secure": True}, {"require_tls": True}, {"only_commands": frozenset({"EHLO", "QUIT"})}]
)
def test_every_reply_of_every_command_agrees_in_class(kw):
    replies = run(COMMANDS, **kw)
    assert len(replies) > 40
    for r in replies[1:]:  # after the greeting
        if r.enhanced is None:
            assert r.code in (250, 334, 354), r  # EHLO/HELO, an AUTH challenge, DATA's go-ahead
        else:
            assert enhanced_agrees(r.code, r.enhanced), r
    if not kw:
        codes = {r.code for r in replies}
        assert {214, 221, 250, 252, 334, 354, 452, 454, 459, 500, 501, 502, 503, 504, 535, 550, 552} <= codes
        assert {554, 555} <= codes
