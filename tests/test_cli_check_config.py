"""``smtppeer check-config FILE`` as an administrator runs it: a real process, exit status and output."""

from __future__ import annotations

import io

import pytest

from smtppeer import __version__
from smtppeer.engine.sasl import hash_password
from smtppeer.peer.tls import make_self_signed
from smtppeer.service.cli import EXIT_CONFIG, EXIT_OK, EXIT_USAGE, main

from .conftest import REPO, smtppeer

EXAMPLES = REPO / "examples"


def test_good_file(example_certs):
    result = smtppeer("check-config", str(EXAMPLES / "dialup.toml"), cwd=example_certs, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"{EXAMPLES / 'dialup.toml'}: ok"
    summary = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in lines[1:]}
    assert summary["hostname"] == "dialup.example.org"
    assert summary["tls"] == "(none: STARTTLS is not offered)"
    assert summary["listeners"] == "tcp:2527:interface=127.0.0.1 (smtp)"
    assert summary["domains"] == "dialup.example.org (2 users, 2 aliases)"
    assert summary["routes"] == "* -> peer:provider"
    assert summary["holds"] == "(none)"
    assert summary["peers"] == (
        "provider (for provider.example.org; at tcp:host=127.0.0.1:port=2526"
        " with tls verify for provider.example.org under provider-cert.pem; sends on-poll;"
        " ATRN at tcp:host=127.0.0.1:port=2366; as dialup with a password)"
    )
    assert summary["users"] == "(none)"
    assert summary["polls"] == "provider every 5m ±10% (turn)"


@pytest.mark.parametrize("name", ["single-host.toml", "provider.toml", "dialup.toml"])
def test_every_example_checks(name, example_certs):
    result = smtppeer("check-config", str(EXAMPLES / name), cwd=example_certs, text=True)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"{EXAMPLES / name}: ok\n")


def test_summary_never_shows_a_password(tmp_path):
    (tmp_path / "p.toml").write_text(
        '[peers.p]\naddresses = ["192.0.2.1"]\nusername = "u"\npassword = "s3cret"\n'
    )
    result = smtppeer("check-config", "p.toml", cwd=tmp_path, text=True)
    assert result.returncode == 0, result.stderr
    assert "p (from 192.0.2.1; as u with a password)" in result.stdout
    assert "s3cret" not in result.stdout


def _summary(stdout: str) -> dict[str, str]:
    lines = stdout.splitlines()[1:]
    return {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in lines}


def test_summary_of_tls_users_and_trust(tmp_path):
    make_self_signed("mail.example.org", str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    hashed = hash_password("hunter2hunter2")
    (tmp_path / "t.toml").write_text(
        f"""
[tls]
certificate = "cert.pem"
key = "key.pem"

[[listen]]
endpoint = "tcp:2525:interface=127.0.0.1"
turn = true
require_tls = true

[[listen]]
endpoint = "tcp:2587:interface=127.0.0.1"
starttls = false
auth_in_clear = true

[[listen]]
mode = "odmr"

[users.alice]
password = "wonderland-pw"

[users.bob]
password_hash = "{hashed}"

[peers.customer]
domains = ["customer.example"]
username = "customer"
password_hash = "{hashed}"

[peers.provider]
endpoint = "tcp:host=127.0.0.1:port=366"
username = "dialup"
password = "provider-pw"
tls = "verify"
ca_file = "cert.pem"
tls_name = "mail.example.org"

[peers.backup]
endpoint = "tcp:host=127.0.0.1:port=2526"
tls = "required"

[[polls]]
peer = "provider"
method = "atrn"
domains = ["dialup.example", "other.example"]

[[polls]]
peer = "backup"
method = "etrn"
"""
    )
    result = smtppeer("check-config", "t.toml", cwd=tmp_path, text=True)
    assert (result.returncode, result.stderr) == (0, "")
    summary = _summary(result.stdout)
    assert summary["tls"].startswith("cert.pem (CN=mail.example.org, until 20")
    assert summary["tls"].endswith("; key key.pem)")
    assert summary["listeners"] == (
        "tcp:2525:interface=127.0.0.1 (smtp, turn, starttls, require_tls), "
        "tcp:2587:interface=127.0.0.1 (smtp, no starttls, auth_in_clear), "
        "tcp:366 (odmr, starttls)"
    )
    assert summary["users"] == "alice, bob"
    assert summary["peers"] == (
        "customer (for customer.example; as customer with a hash), "
        "provider (at tcp:host=127.0.0.1:port=366 with tls verify for mail.example.org under cert.pem; "
        "as dialup with a password), "
        "backup (at tcp:host=127.0.0.1:port=2526 with tls required)"
    )
    assert summary["polls"] == (
        "provider every 5m ±10% (atrn dialup.example other.example), backup every 5m ±10% (etrn)"
    )
    for secret in ("wonderland-pw", "provider-pw", hashed, hashed.split("$")[2]):
        assert secret not in result.stdout


def test_bad_file(tmp_path):
    (tmp_path / "smtppeer.toml").write_text(
        '[[listen]]\nendpoint = "tcp:2525"\n[[listen]]\nendpoint = "tcp:2525"\n'
    )
    result = smtppeer("check-config", "smtppeer.toml", cwd=tmp_path, text=True)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == 'smtppeer.toml: listen[1].endpoint: "tcp:2525" duplicates listen[0]\n'


def test_unknown_peer_in_route(tmp_path):
    (tmp_path / "smtppeer.toml").write_text('[routes]\n"*" = "peer:provider"\n')
    result = smtppeer("check-config", "smtppeer.toml", cwd=tmp_path, text=True)
    assert (result.returncode, result.stdout) == (2, "")
    assert (
        result.stderr
        == 'smtppeer.toml: routes."*": no peer named "provider" (there is no [peers.NAME] table)\n'
    )


def test_syntax_error_and_missing_file(tmp_path):
    (tmp_path / "broken.toml").write_text('hostname = "a.example"\n[limits\nrecipients = 100\n')
    result = smtppeer("check-config", "broken.toml", cwd=tmp_path, text=True)
    assert result.returncode == 2
    assert result.stderr == (
        "broken.toml: line 2, column 8: TOML syntax error: Expected ']' at the end of a table declaration\n"
    )
    result = smtppeer("check-config", "missing.toml", cwd=tmp_path, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", "missing.toml: no such file\n")


def test_usage_errors():
    result = smtppeer("check-config", text=True)
    assert result.returncode == 64
    assert result.stderr.splitlines()[-1] == "Try 'smtppeer check-config --help'."
    result = smtppeer("check-config", "a.toml", "b.toml", text=True)
    assert result.returncode == 64
    result = smtppeer(text=True)
    assert result.returncode == 64
    assert "give a command (check-config, send, queue, poll, make-cert, hash-password, lab)" in result.stderr
    result = smtppeer("frobnicate", text=True)
    assert (result.returncode, result.stdout) == (64, "")
    assert "Unknown command: frobnicate" in result.stderr


def test_help():
    result = smtppeer("--help", text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: smtppeer COMMAND")
    assert "check-config" in result.stdout
    result = smtppeer("check-config", "--help", text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: smtppeer check-config [--peer PEER-FILE ...] FILE\n")
    result = smtppeer("--version", text=True)
    assert (result.returncode, result.stdout) == (0, f"smtppeer {__version__}\n")


def test_main_in_process(tmp_path, example_certs):
    """``main()`` returns the status (for the console script) and writes where it is told."""
    out, err = io.StringIO(), io.StringIO()
    assert main(["check-config", str(EXAMPLES / "provider.toml")], out, err) == EXIT_OK
    assert "holds:" in out.getvalue() and err.getvalue() == ""
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nrecipients = 10\n")
    out, err = io.StringIO(), io.StringIO()
    assert main(["check-config", str(bad)], out, err) == EXIT_CONFIG
    assert (
        err.getvalue() == f"{bad}: limits.recipients: 10 is too small: at least 100 (RFC 5321 §4.5.3.1.8)\n"
    )
    assert main([], io.StringIO(), io.StringIO()) == EXIT_USAGE


def test_summary_shows_a_multi_process_listener(tmp_path):
    (tmp_path / "p.toml").write_text('[[listen]]\nendpoint = "tcp:2599"\nprocesses = 3\n')
    result = smtppeer("check-config", "p.toml", cwd=tmp_path, text=True)
    assert result.returncode == 0, result.stderr
    assert "  listeners:  tcp:2599 (smtp, 3 processes, receive only)\n" in result.stdout


# -- holds a peer cannot take (issue 12, item 1) ---------------------------------------------

SUBDOMAINS = '"dialup.example.org" = "dialup"\n'


def _with_subdomain_hold(tmp_path) -> str:
    """provider.toml as issue 12 found it: it also held every subdomain for the dial-up host."""
    text = (EXAMPLES / "provider.toml").read_text()
    assert SUBDOMAINS in text
    (tmp_path / "p2.toml").write_text(
        text.replace(SUBDOMAINS, SUBDOMAINS + '".dialup.example.org" = "dialup"\n')
    )
    return "p2.toml"


def test_the_example_pair_holds_only_what_the_other_accepts(example_certs):
    provider, dialup = str(EXAMPLES / "provider.toml"), str(EXAMPLES / "dialup.toml")
    for args in ((provider, "--peer", dialup), ("--peer", provider, dialup)):
        result = smtppeer("check-config", *args, cwd=example_certs, text=True)
        assert (result.returncode, result.stderr) == (0, ""), args
        assert f"{dialup}: ok\n" in result.stdout or f"{provider}: ok\n" in result.stdout


def test_a_hold_the_peer_routes_back_is_a_warning(example_certs):
    p2 = _with_subdomain_hold(example_certs)
    dialup = str(EXAMPLES / "dialup.toml")
    alone = smtppeer("check-config", p2, cwd=example_certs, text=True)
    assert alone.returncode == 0 and alone.stdout.startswith("p2.toml: ok\n")
    assert alone.stderr == (
        'p2.toml: warning: holds.".dialup.example.org": held for peer "dialup", but the subdomains of '
        "dialup.example.org are not among its domains (peers.dialup.domains): what it does not accept "
        "itself it refuses (a routing loop, or relaying) and the mail bounces here; hold only what it "
        'accepts, or add ".dialup.example.org" to its domains if it does accept it\n'
    )
    loop = (
        'p2.toml: warning: holds.".dialup.example.org": held for peer "dialup", which routes '
        f"any-subdomain.dialup.example.org back here ({dialup}: peer:provider): a routing loop; such mail "
        "bounces when it calls in: hold only the domains it accepts\n"
    )
    paired = smtppeer("check-config", p2, "--peer", dialup, cwd=example_certs, text=True)
    assert paired.returncode == 0
    assert paired.stderr == alone.stderr + loop
    # from the dial-up host's side, the warning is the provider file's
    other = smtppeer("check-config", dialup, "-p", p2, cwd=example_certs, text=True)
    assert other.returncode == 0
    assert other.stderr == loop


def test_a_peer_that_says_it_takes_every_subdomain_silences_the_one_file_warning(tmp_path):
    (tmp_path / "p.toml").write_text(
        '[holds]\n".cust.test" = "cust"\n'
        '[peers.cust]\ndomains = ["cust.test", ".cust.test"]\nusername = "cust"\npassword = "x"\n'
    )
    result = smtppeer("check-config", "p.toml", cwd=tmp_path, text=True)
    assert (result.returncode, result.stderr) == (0, "")
    assert "cust (for cust.test .cust.test; as cust with a password)" in result.stdout


def test_a_hold_the_peer_has_no_route_for_is_a_warning(tmp_path):
    (tmp_path / "provider.toml").write_text(
        'hostname = "provider.test"\n[holds]\n"cust.test" = "cust"\n"extra.test" = "cust"\n'
        '[peers.cust]\nusername = "cust"\npassword = "x"\n'
    )
    (tmp_path / "cust.toml").write_text(
        'hostname = "cust.test"\n[domains."cust.test"]\ncatch_all = true\n'
        '[peers.provider]\nendpoint = "tcp:host=127.0.0.1:port=2526"\nusername = "cust"\npassword = "x"\n'
    )
    result = smtppeer("check-config", "provider.toml", "--peer", "cust.toml", cwd=tmp_path, text=True)
    assert result.returncode == 0
    assert result.stderr == (
        'provider.toml: warning: holds."extra.test": held for peer "cust", which does not accept '
        "extra.test (cust.toml has no domain or route for it); such mail bounces when it calls in: "
        "hold only the domains it accepts\n"
    )


def test_a_broken_peer_file_is_a_broken_configuration(example_certs, tmp_path):
    (tmp_path / "bad.toml").write_text("[limits]\nrecipients = 10\n")
    result = smtppeer(
        "check-config", str(EXAMPLES / "provider.toml"), "--peer", "bad.toml", cwd=example_certs, text=True
    )
    assert result.returncode == EXIT_CONFIG
    assert (
        result.stderr == "bad.toml: limits.recipients: 10 is too small: at least 100 (RFC 5321 §4.5.3.1.8)\n"
    )
    assert smtppeer("check-config", "p.toml", "--peer", text=True).returncode == EXIT_USAGE
