"""RFC 5321 §4.1.2 path syntax, parameters, and replies (building and parsing)."""

from __future__ import annotations

import pytest

from smtppeer.engine.address import (
    MAX_DOMAIN,
    MAX_LOCAL_PART,
    MAX_PATH,
    AddressError,
    Mailbox,
    Path,
    parse_mailbox,
    parse_params,
    parse_path,
    split_mail_argument,
)
from smtppeer.engine.replies import ProtocolError, Reply, ReplyParser, reply


def fwd(text: str, utf8: bool = False) -> Path:
    path, rest = parse_path(text, reverse=False, utf8=utf8)
    assert rest == ""
    return path


def rev(text: str, utf8: bool = False) -> Path:
    path, rest = parse_path(text, reverse=True, utf8=utf8)
    assert rest == ""
    return path


# -- mailboxes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, local, domain",
    [
        ("<joe@example.com>", "joe", "example.com"),
        ("<first.last@sub.example.org>", "first.last", "sub.example.org"),
        ("<a+tag-x_y=z@x-y.example>", "a+tag-x_y=z", "x-y.example"),
        ("<!#$%&'*+-/=?^_`{|}~@example.com>", "!#$%&'*+-/=?^_`{|}~", "example.com"),
        ("<UPPER@EXAMPLE.COM>", "UPPER", "EXAMPLE.COM"),
        ("<u@localhost>", "u", "localhost"),
        ("<u@1host.example>", "u", "1host.example"),
        ('<"john doe"@example.com>', '"john doe"', "example.com"),
        ('<"a\\"b"@example.com>', '"a\\"b"', "example.com"),
        ('<"a\\\\b"@example.com>', '"a\\\\b"', "example.com"),
        ('<"a>b"@example.com>', '"a>b"', "example.com"),
        ('<"a@b"@example.com>', '"a@b"', "example.com"),
        ('<""@example.com>', '""', "example.com"),
        ("<u@[192.0.2.1]>", "u", "[192.0.2.1]"),
        ("<u@[IPv6:2001:db8::1]>", "u", "[IPv6:2001:db8::1]"),
        ("<u@[ipv6:::1]>", "u", "[ipv6:::1]"),
        ("<u@[IPv6:2001:db8::192.0.2.1]>", "u", "[IPv6:2001:db8::192.0.2.1]"),
        ("<u@[x400:c=us;a=b]>", "u", "[x400:c=us;a=b]"),
    ],
)
def test_valid_mailboxes(text, local, domain):
    path = fwd(text)
    assert path == Path(Mailbox(local, domain))
    assert not path.is_null and path.route == ()
    assert rev(text) == path


@pytest.mark.parametrize(
    "text",
    [
        "<joe>",  # no domain (and not postmaster)
        "<@example.com>",
        "<joe@>",
        "<.joe@example.com>",
        "<joe.@example.com>",
        "<jo..e@example.com>",
        "<jo e@example.com>",
        "<joe@exa mple.com>",
        "<joe@-example.com>",
        "<joe@example-.com>",
        "<joe@example..com>",
        "<joe@.example.com>",
        "<joe@exam_ple.com>",
        "<joe@example.com@other>",
        '<"unterminated@example.com>',
        '<"bad\x01ctl"@example.com>',
        "<joe@[192.0.2.256]>",
        "<joe@[192.0.2]>",
        "<joe@[IPv6:2001:db8::g]>",
        "<joe@[IPv6:1:2:3:4:5:6:7:8:9]>",
        "<joe@[]>",
        "<joe@[a b]>",
        "<joe@[1.2.3.4>",
        "<joe@[a[b]>",
        "<jö@example.com>",  # UTF-8 without SMTPUTF8
        "<joe@exämple.com>",
        "joe@example.com",  # no angle brackets
        "<joe@example.com",
        "",
    ],
)
def test_invalid_mailboxes(text):
    with pytest.raises(AddressError):
        parse_path(text, reverse=False)
    with pytest.raises(AddressError):
        parse_path(text, reverse=True)


def test_utf8_only_with_flag():
    path = fwd("<jö@exämple.com>", utf8=True)
    assert path.mailbox == Mailbox("jö", "exämple.com")
    assert fwd('<"jö x"@example.com>', utf8=True).mailbox.local == '"jö x"'
    with pytest.raises(AddressError):
        fwd('<"jö x"@example.com>')


def test_remainder_is_returned():
    path, rest = parse_path("<a@b.c> SIZE=10", reverse=True)
    assert path.mailbox == Mailbox("a", "b.c") and rest == " SIZE=10"


# -- null path, postmaster, source routes -------------------------------------------


def test_null_reverse_path():
    path = rev("<>")
    assert path.is_null and path.mailbox is None and str(path) == "<>"


def test_null_forward_path_refused():
    with pytest.raises(AddressError):
        parse_path("<>", reverse=False)


@pytest.mark.parametrize("text", ["<postmaster>", "<Postmaster>", "<POSTMASTER>"])
def test_bare_postmaster_recipient(text):
    path = fwd(text)
    assert path.mailbox == Mailbox("postmaster", "")
    assert path.mailbox.is_postmaster
    assert str(path.mailbox) == "postmaster"


def test_bare_postmaster_is_not_a_sender():
    with pytest.raises(AddressError):
        parse_path("<postmaster>", reverse=True)


def test_postmaster_at_domain():
    mb = fwd("<PostMaster@example.com>").mailbox
    assert mb.is_postmaster and mb.domain == "example.com"
    assert fwd('<"postmaster"@example.com>').mailbox.is_postmaster


def test_source_route_kept():
    path = fwd("<@ONE,@TWO:JOE@THREE>")
    assert path.route == ("ONE", "TWO")
    assert path.mailbox == Mailbox("JOE", "THREE")
    assert str(path) == "<@ONE,@TWO:JOE@THREE>"
    assert rev("<@ONE:JOE@THREE>").route == ("ONE",)


def test_source_route_with_literal():
    assert fwd("<@[192.0.2.1]:u@example.com>").route == ("[192.0.2.1]",)


@pytest.mark.parametrize(
    "text",
    ["<@ONE,@TWO JOE@THREE>", "<@ONE,TWO:JOE@THREE>", "<@:JOE@THREE>", "<@ONE:postmaster>", "<@ONE:>"],
)
def test_bad_source_routes(text):
    with pytest.raises(AddressError):
        parse_path(text, reverse=False)


# -- length limits ------------------------------------------------------------------


def test_local_part_limit():
    assert fwd(f"<{'a' * MAX_LOCAL_PART}@example.com>").mailbox.local == "a" * 64
    with pytest.raises(AddressError, match="local part"):
        fwd(f"<{'a' * (MAX_LOCAL_PART + 1)}@example.com>")


def test_domain_limit():
    label = "a" * 63
    domain = ".".join([label] * 4)[:MAX_DOMAIN]  # 255 octets
    assert len(domain) == 255
    with pytest.raises(AddressError, match="domain too long"):
        parse_mailbox("u@" + domain + "b")
    assert parse_mailbox("u@" + domain).domain == domain


def test_path_limit():
    # 64 + 1 + 187 = 252 inside, 254 with <> ... reach exactly 256 with the brackets
    local = "a" * 64
    domain = ".".join(["b" * 60, "c" * 60, "d" * 60, "e" * 5])  # 188
    inner = f"{local}@{domain}"
    assert len(inner) + 2 == 255
    assert fwd(f"<{inner}>").mailbox.domain == domain
    inner2 = f"{local}@{domain}f"
    assert len(inner2) + 2 == MAX_PATH
    assert fwd(f"<{inner2}>").mailbox.domain == domain + "f"
    with pytest.raises(AddressError, match="path too long"):
        fwd(f"<{inner2}g>")


# -- str / helpers ---------------------------------------------------------------------


def test_mailbox_helpers():
    mb = Mailbox('"a\\"b"', "Example.COM.")
    assert mb.local_unquoted == 'a"b'
    assert mb.domain_key == "example.com"
    assert str(mb) == '"a\\"b"@Example.COM.'
    assert str(Path(Mailbox("u", "d"))) == "<u@d>"


# -- parameters ----------------------------------------------------------------------


def test_params():
    assert parse_params("") == {}
    assert parse_params(" SIZE=100  body=8BITMIME SMTPUTF8") == {
        "SIZE": "100",
        "BODY": "8BITMIME",
        "SMTPUTF8": None,
    }


@pytest.mark.parametrize(
    "text",
    ["SIZE=1 size=2", "-BAD=1", "B_D=1", "SIZE=", "SIZE=a=b", "X=\x01", "=1"],
)
def test_bad_params(text):
    with pytest.raises(AddressError):
        parse_params(text)


@pytest.mark.parametrize(
    "arg, path, params",
    [
        ("FROM:<a@b.c>", "<a@b.c>", {}),
        ("from:<a@b.c>", "<a@b.c>", {}),
        ("FROM: <a@b.c>", "<a@b.c>", {}),  # the space every client sends
        ("FROM:  <a@b.c> SIZE=5", "<a@b.c>", {"SIZE": "5"}),
        ("FROM:<> BODY=7BIT", "<>", {"BODY": "7BIT"}),
        ('FROM:<"x> y"@b.c> SIZE=5', '<"x> y"@b.c>', {"SIZE": "5"}),
    ],
)
def test_split_mail_argument(arg, path, params):
    assert split_mail_argument(arg, "FROM:") == (path, params)


@pytest.mark.parametrize(
    "arg",
    ["FROM<a@b.c>", "TO:<a@b.c>", "FROM:a@b.c", "FROM:<a@b.c>SIZE=5", "FROM:<a@b.c", "FROM:", "FROM :<a@b>"],
)
def test_split_mail_argument_errors(arg):
    with pytest.raises(AddressError):
        split_mail_argument(arg, "FROM:")


# -- replies ---------------------------------------------------------------------------


class TestReplyToBytes:
    def test_single_line(self):
        assert reply(250, "2.1.0", "OK").to_bytes() == b"250 2.1.0 OK\r\n"

    def test_without_enhanced(self):
        assert reply(354, None, "Go ahead").to_bytes() == b"354 Go ahead\r\n"

    def test_multi_line_repeats_enhanced_code(self):
        r = reply(214, "2.0.0", "one", "two", "three")
        assert r.to_bytes() == b"214-2.0.0 one\r\n214-2.0.0 two\r\n214 2.0.0 three\r\n"

    def test_empty_text(self):
        assert Reply(250, ()).to_bytes() == b"250\r\n"
        assert reply(250, None).to_bytes() == b"250\r\n"

    def test_properties(self):
        assert reply(250, None, "x").is_positive
        assert reply(354, None, "x").is_positive
        assert reply(451, None, "x").is_transient
        assert reply(550, None, "x").is_permanent
        assert str(reply(550, "5.1.1", "no", "such")) == "550 5.1.1 no\nsuch"


class TestReplyParser:
    def test_single(self):
        p = ReplyParser()
        p.feed(b"250 2.1.0 Sender OK\r\n")
        assert p.next_reply() == Reply(250, ("Sender OK",), "2.1.0")
        assert p.next_reply() is None

    def test_multi_line_with_enhanced(self):
        p = ReplyParser()
        p.feed(b"250-2.0.0 first\r\n250-2.0.0 second\r\n250 2.0.0 third\r\n")
        assert p.next_reply() == Reply(250, ("first", "second", "third"), "2.0.0")

    def test_multi_line_ehlo(self):
        p = ReplyParser()
        p.feed(b"250-mx.example greets me\r\n250-PIPELINING\r\n250 SIZE 1000\r\n")
        r = p.next_reply()
        assert r.code == 250 and r.enhanced is None
        assert r.lines == ("mx.example greets me", "PIPELINING", "SIZE 1000")

    def test_round_trip(self):
        r = reply(550, "5.7.1", "one", "two")
        p = ReplyParser()
        p.feed(r.to_bytes())
        assert p.next_reply() == r

    def test_enhanced_class_must_match(self):
        p = ReplyParser()
        p.feed(b"250 5.1.1 odd\r\n")
        assert p.next_reply() == Reply(250, ("5.1.1 odd",), None)

    def test_lf_only_tolerated(self):
        p = ReplyParser()
        p.feed(b"220-hello\n220 there\n")
        assert p.next_reply() == Reply(220, ("hello", "there"))

    def test_bare_code(self):
        p = ReplyParser()
        p.feed(b"250\r\n")
        assert p.next_reply() == Reply(250, ("",))

    def test_code_of_last_line_wins(self):
        p = ReplyParser()
        p.feed(b"250-a\r\n550 b\r\n")
        assert p.next_reply().code == 550

    def test_partial_input(self):
        p = ReplyParser()
        data = b"250-a\r\n250 b\r\n"
        for i in range(len(data) - 1):
            p.feed(data[i : i + 1])
            assert p.next_reply() is None
        p.feed(data[-1:])
        assert p.next_reply() == Reply(250, ("a", "b"))

    def test_one_at_a_time_and_take_rest(self):
        p = ReplyParser()
        p.feed(b"250 2.0.0 OK\r\n354 go\r\nEHLO other\r\n")
        assert p.next_reply().code == 250
        assert p.next_reply().code == 354
        assert p.take_rest() == b"EHLO other\r\n"
        assert p.next_reply() is None

    @pytest.mark.parametrize(
        "data", [b"hello\r\n", b"25\r\n", b"2500 x\r\n", b"250x\r\n", b"abc def\r\n", b"\r\n"]
    )
    def test_malformed(self, data):
        p = ReplyParser()
        p.feed(data)
        with pytest.raises(ProtocolError):
            p.next_reply()

    def test_line_too_long(self):
        p = ReplyParser(max_line=100)
        p.feed(b"250 " + b"x" * 200)
        with pytest.raises(ProtocolError):
            p.next_reply()

    def test_too_many_lines(self):
        p = ReplyParser(max_lines=3)
        p.feed(b"250-a\r\n" * 5)
        with pytest.raises(ProtocolError):
            p.next_reply()
