"""The TOML configuration file: the schema into the model, defaults, examples, and clear errors."""

# The table of broken files keeps each whole one-line error on one line, as the user sees it.
# ruff: noqa: E501

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from smtppeer.engine import Limits
from smtppeer.engine.sasl import hash_password
from smtppeer.peer.tls import make_self_signed
from smtppeer.relay.holds import PollMethod
from smtppeer.service.config import Config, Listener, Mailbox, Peer, Poll, TLSFiles, User
from smtppeer.service.configfile import ConfigError, load_config, loads_config
from smtppeer.service.options import DEFAULT_LISTEN, Options

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# A valid RFC 5803 hash, fixed (a given salt) so that the table of broken files can use it.
HASH = hash_password("secret", salt=b"0123456789abcdef")


@pytest.fixture(scope="module")
def pem_dir(tmp_path_factory):
    """PEM files for [tls] and ca_file: a good pair, a key of another certificate, garbage, an encrypted key."""
    where = tmp_path_factory.mktemp("pem")
    make_self_signed("mail.example.org", str(where / "cert.pem"), str(where / "key.pem"))
    make_self_signed("other.example.org", str(where / "other-cert.pem"), str(where / "other-key.pem"))
    shutil.copy(where / "cert.pem", where / "ca.pem")
    (where / "garbage.pem").write_text("not PEM at all\n")
    (where / "broken.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    )
    (where / "broken-chain.pem").write_text(
        (where / "cert.pem").read_text() + (where / "broken.pem").read_text()
    )
    secret = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    (where / "encrypted-key.pem").write_bytes(secret)
    return where


@pytest.fixture
def pem_files(pem_dir, tmp_path, monkeypatch):
    """The PEM files in the working directory (relative paths in a file are as data_dir's)."""
    for path in pem_dir.iterdir():
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


FULL = """
hostname = "mail.example.org"
data_dir = "/var/lib/smtppeer"
relay_from = ["127.0.0.0/8", "2001:db8::/32"]
dns = "127.0.0.1:5353"
honour_source_routes = false
json_log = true

[[listen]]
endpoint = "tcp:2525:interface=127.0.0.1"
mode = "smtp"
turn = true

[[listen]]
endpoint = "tcp:2366:interface=127.0.0.1"
mode = "ODMR"

[domains."Example.ORG."]
catch_all = false
users = ["alice", "bob"]
aliases = { postmaster = ["alice"], info = ["alice", "bob@example.net"], abuse = "postmaster" }

[domains."lists.example.org"]

[routes]
"partner.example" = "tcp:host=10.0.0.5:port=25"
".example.net" = "MX"
"*" = "peer:provider"

[holds]
"dialup.example" = "dialup"
".dialup.example" = "dialup"

[peers.dialup]
domains = ["dialup.example"]
addresses = ["192.0.2.10", "2001:db8:0::1"]
endpoint = "tcp:host=dialup.example:port=25"
username = "dialup"
password = "secret"

[peers.provider]
endpoint = "tcp:host=127.0.0.1:port=2526"

[[polls]]
peer = "provider"
interval = "5m"
jitter = 0.25
method = "turn"
max_backoff = "2h"

[limits]
message_size = "10M"
recipients = 200
command_line = "1K"
text_line = 2000
bad_commands = 5
command_timeout = "1m30s"
data_timeout = 900
reply_timeout = 60.5
data_block_timeout = "2m"
data_end_timeout = "1h"
max_connections = 20
max_connections_per_client = 4
client_ipv6_prefix_length = 64
auth_failures_per_client = 6
auth_backoff = "30s"
auth_backoff_max = "2h"
queue_minfree = "100M"
command_line_time = "2m"
max_received = 50
queue_lifetime = "2d"
retry_interval = "30s"
retry_interval_max = "2h"
outgoing_connections = 50
outgoing_connections_per_destination = 10
messages_per_connection = 500
connect_timeout = "1m"
"""


def test_full_schema_round_trip(tmp_path):
    path = tmp_path / "smtppeer.toml"
    path.write_text(FULL)
    assert load_config(str(path)) == Config(
        hostname="mail.example.org",
        data_dir="/var/lib/smtppeer",
        listeners=[
            Listener("tcp:2525:interface=127.0.0.1", mode="smtp", turn=True),
            Listener("tcp:2366:interface=127.0.0.1", mode="odmr", turn=False),
        ],
        domains={
            "example.org": Mailbox(
                catch_all=False,
                users=["alice", "bob"],
                aliases={
                    "postmaster": ["alice"],
                    "info": ["alice", "bob@example.net"],
                    "abuse": ["postmaster"],
                },
            ),
            "lists.example.org": Mailbox(catch_all=True),
        },
        routes={"partner.example": "tcp:host=10.0.0.5:port=25", ".example.net": "mx", "*": "peer:provider"},
        holds={"dialup.example": "dialup", ".dialup.example": "dialup"},
        relay_from=["127.0.0.0/8", "2001:db8::/32"],
        peers={
            "dialup": Peer(
                "dialup",
                domains=["dialup.example"],
                endpoint="tcp:host=dialup.example:port=25",
                addresses=["192.0.2.10", "2001:db8::1"],
                username="dialup",
                password="secret",
            ),
            "provider": Peer("provider", endpoint="tcp:host=127.0.0.1:port=2526"),
        },
        polls=[Poll("provider", interval=300.0, jitter=0.25, method="turn", max_backoff=7200.0)],
        limits=Limits(
            command_line=1024,
            text_line=2000,
            message_size=10 * 1024 * 1024,
            recipients=200,
            bad_commands=5,
            command_timeout=90.0,
            data_timeout=900.0,
            reply_timeout=60.5,
            data_block_timeout=120.0,
            data_end_timeout=3600.0,
            command_line_time=120.0,
        ),
        max_connections=20,
        max_connections_per_client=4,
        client_ipv6_prefix_length=64,
        auth_failures_per_client=6,
        auth_backoff=30.0,
        auth_backoff_max=7200.0,
        queue_minfree=100 * 1024**2,
        max_received=50,
        queue_lifetime=2 * 86400.0,
        retry_interval=30.0,
        retry_interval_max=7200.0,
        outgoing_connections=50,
        outgoing_connections_per_destination=10,
        messages_per_connection=500,
        connect_timeout=60.0,
        dns=("127.0.0.1", 5353),
        honour_source_routes=False,
        json_log=True,
    )


def test_empty_file_has_the_command_line_defaults(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("# nothing\n")
    config = load_config(path)
    options = Options()
    options.parseOptions([])
    assert options.config == config
    assert config.hostname == socket.gethostname()
    assert [x.endpoint for x in config.listeners] == [DEFAULT_LISTEN]
    assert config.listeners == [Listener(DEFAULT_LISTEN, mode="smtp", turn=False)]
    assert all(box == Mailbox(catch_all=True) for box in config.domains.values())
    assert config.limits == Limits()
    assert config.peers == {} and config.polls == [] and config.json_log is False


def test_default_domains_follow_the_hostname():
    config = loads_config('hostname = "Mail.Example.org"')
    assert config.hostname == "Mail.Example.org"
    assert config.domains == {"mail.example.org": Mailbox(), "localhost": Mailbox()}
    assert loads_config('hostname = "localhost"').domains == {"localhost": Mailbox()}


def test_explicit_empty_tables_mean_none():
    config = loads_config("listen = []\ndomains = {}")
    assert config.listeners == [] and config.domains == {}


def test_listen_shorthand_and_mailbox_defaults():
    config = loads_config(
        """
        listen = ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1", "unix:/tmp/smtppeer.sock"]
        [domains."a.example"]
        users = ["u"]
        [domains."b.example"]
        aliases = { x = "someone@c.example" }
        [domains."c.example"]
        """.replace("\n        ", "\n")
    )
    assert [x.endpoint for x in config.listeners] == [
        "tcp:0:interface=127.0.0.1",
        "tcp:0:interface=127.0.0.1",  # port 0: two ports of their own, not a duplicate
        "unix:/tmp/smtppeer.sock",
    ]
    assert all(x.mode == "smtp" and not x.turn for x in config.listeners)
    assert config.domains["a.example"] == Mailbox(catch_all=False, users=["u"])  # users listed: no catch-all
    assert config.domains["b.example"] == Mailbox(catch_all=True, aliases={"x": ["someone@c.example"]})
    assert config.domains["c.example"] == Mailbox(catch_all=True)


@pytest.mark.parametrize(
    "text, seconds",
    [(90, 90.0), (1.5, 1.5), ('"45"', 45.0), ('"30s"', 30.0), ('"5m"', 300.0), ('"1.5h"', 5400.0),
     ('"1h30m"', 5400.0), ('"1d"', 86400.0), ('"2w"', 14 * 86400.0), ('"1h 30m 15s"', 5415.0)],
)  # fmt: skip
def test_durations(text, seconds):
    assert loads_config(f"[limits]\nretry_interval = {text}").retry_interval == seconds


@pytest.mark.parametrize(
    "text, octets",
    [(2048, 2048), ('"4096"', 4096), ('"512K"', 512 * 1024), ('"50M"', 50 * 1024**2), ('"1G"', 1024**3),
     ('"10MB"', 10 * 1024**2), ('"10 MiB"', 10 * 1024**2), ('"2k"', 2048)],
)  # fmt: skip
def test_sizes(text, octets):
    assert loads_config(f"[limits]\nmessage_size = {text}").limits.message_size == octets


def test_poll_backoff_is_at_least_the_interval():
    text = '[peers.p]\nendpoint = "tcp:host=127.0.0.1:port=1"\n[[polls]]\npeer = "p"\ninterval = "2h"\n'
    assert loads_config(text).polls == [Poll("p", interval=7200.0, max_backoff=7200.0)]
    assert loads_config(text.replace('"2h"', "60")).polls == [Poll("p", interval=60.0, max_backoff=3600.0)]


def test_dns_forms():
    assert loads_config('dns = "192.0.2.53"').dns == ("192.0.2.53", 53)
    assert loads_config('dns = "::1"').dns == ("::1", 53)
    assert loads_config('dns = "[::1]:5353"').dns == ("::1", 5353)


TRUST = f"""
[tls]
certificate = "cert.pem"
key = "key.pem"

[[listen]]
endpoint = "tcp:2525:interface=127.0.0.1"
require_tls = true
max_auth_failures = 1

[[listen]]
endpoint = "tcp:2587:interface=127.0.0.1"
starttls = false
auth_in_clear = true

[[listen]]
mode = "odmr"

[users.alice]
password = "wonderland"

[users."bob.smith"]
password_hash = "{HASH}"

[users."carol+mail@example.org"]
password = "looking-glass"

[peers.customer]
domains = ["customer.example"]
username = "customer"
password_hash = "{HASH}"

[peers.provider]
endpoint = "tcp:host=127.0.0.1:port=366"
username = "dialup"
password = "secret"
tls = "Verify"
ca_file = "ca.pem"
tls_name = "Mail.Provider.Example."

[peers.backup]
endpoint = "tcp:host=127.0.0.1:port=2526"
tls = "required"

[peers.relay]
endpoint = "tcp:host=127.0.0.1:port=2527"
tls = "none"

[[polls]]
peer = "provider"
method = "atrn"
domains = ["dialup.example", "Other.Example."]

[[polls]]
peer = "backup"
method = "ETRN"

[[polls]]
peer = "relay"
method = "etrn"
domains = ["dialup.example", "@Lab.Dialup.Example", " #relay"]
"""


def test_trust_schema_round_trip(pem_files):
    config = loads_config(TRUST)
    assert config.tls == TLSFiles(certificate="cert.pem", key="key.pem")
    assert config.listeners == [
        Listener("tcp:2525:interface=127.0.0.1", require_tls=True, max_auth_failures=1),
        Listener("tcp:2587:interface=127.0.0.1", starttls=False, auth_in_clear=True),
        Listener("tcp:366", mode="odmr"),  # RFC 2645's port when none is given
    ]
    assert config.users == {
        "alice": User("alice", password="wonderland"),
        "bob.smith": User("bob.smith", password_hash=HASH),
        "carol+mail@example.org": User("carol+mail@example.org", password="looking-glass"),
    }
    assert config.peers == {
        "customer": Peer("customer", domains=["customer.example"], username="customer", password_hash=HASH),
        "provider": Peer(
            "provider",
            endpoint="tcp:host=127.0.0.1:port=366",
            username="dialup",
            password="secret",
            tls="verify",
            ca_file="ca.pem",
            tls_name="mail.provider.example",
        ),
        "backup": Peer("backup", endpoint="tcp:host=127.0.0.1:port=2526", tls="required"),
        "relay": Peer("relay", endpoint="tcp:host=127.0.0.1:port=2527", tls="none"),
    }
    assert config.polls == [
        Poll("provider", method="atrn", domains=["dialup.example", "other.example"]),
        Poll("backup", method="etrn"),
        Poll("relay", method="etrn", domains=["dialup.example", "@lab.dialup.example", "#relay"]),
    ]


def test_verify_takes_the_name_from_the_endpoint_or_tls_name():
    for endpoint in ("tcp:host=mx.example:port=25", "tcp:mx.example:25", "tls:mx.example:465"):
        config = loads_config(f'[peers.p]\nendpoint = "{endpoint}"\ntls = "verify"\n')
        assert config.peers["p"].tls_name is None
    text = '[peers.p]\nendpoint = "unix:/run/p.sock"\ntls = "verify"\ntls_name = "2001:DB8::1"\n'
    assert loads_config(text).peers["p"].tls_name == "2001:db8::1"


def test_trust_defaults():
    config = loads_config('[peers.p]\nendpoint = "tcp:host=127.0.0.1:port=1"\n[[polls]]\npeer = "p"\n')
    assert config.tls is None and config.users == {}
    assert config.listeners == [Listener(DEFAULT_LISTEN)]
    listener = config.listeners[0]
    assert (listener.starttls, listener.require_tls, listener.auth_in_clear) == (True, False, False)
    assert listener.max_auth_failures == 3
    peer = config.peers["p"]
    assert (peer.tls, peer.ca_file, peer.tls_name, peer.password_hash) == ("opportunistic", None, None, None)
    assert config.polls[0].domains == []


def test_tls_settings_without_a_certificate():
    """The default starttls = true offers nothing without [tls]; false is always fine."""
    config = loads_config('[[listen]]\nendpoint = "tcp:0"\nstarttls = false\nauth_in_clear = true\n')
    assert config.listeners == [Listener("tcp:0", starttls=False, auth_in_clear=True)]


def test_odmr_listener_without_credentials_is_fine():
    """Nobody can ATRN yet, but that is a state, not a mistake (peers are added later)."""
    config = loads_config(
        '[[listen]]\nendpoint = "tcp:0"\nmode = "odmr"\n[peers.p]\ndomains = ["p.example"]\n'
    )
    assert config.listeners == [Listener("tcp:0", mode="odmr")]
    assert config.peers["p"].username is None


def test_tls_paths_expand_the_home_directory(pem_files, monkeypatch):
    monkeypatch.setenv("HOME", str(pem_files))
    config = loads_config('[tls]\ncertificate = "~/cert.pem"\nkey = "~/key.pem"\n')
    assert config.tls == TLSFiles(str(pem_files / "cert.pem"), str(pem_files / "key.pem"))


def test_tls_certificate_file_may_hold_the_key_and_a_chain(pem_files):
    (pem_files / "both.pem").write_text(
        (pem_files / "cert.pem").read_text() + (pem_files / "other-cert.pem").read_text()
        + (pem_files / "key.pem").read_text()
    )  # fmt: skip
    config = loads_config('[tls]\ncertificate = "both.pem"\nkey = "both.pem"\n')
    assert config.tls == TLSFiles("both.pem", "both.pem")


# -- command-line options over the file --------------------------------------


def _options(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def _option_error(capsys, *argv: str) -> str:
    """The one line a broken configuration prints (exit status 2)."""
    with pytest.raises(SystemExit) as info:
        _options(*argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    return err.strip()


def test_certificate_options_make_the_tls_table(pem_files):
    config = _options("--certificate", "cert.pem", "--key=key.pem").config
    assert config.tls == TLSFiles("cert.pem", "key.pem")
    assert _options().config.tls is None


def test_certificate_options_override_the_file(pem_files):
    shutil.copy("cert.pem", "cert2.pem")
    shutil.copy("key.pem", "key2.pem")
    Path("smtppeer.toml").write_text('[tls]\ncertificate = "cert.pem"\nkey = "key.pem"\n')
    assert _options("-c", "smtppeer.toml").config.tls == TLSFiles("cert.pem", "key.pem")
    config = _options("-c", "smtppeer.toml", "--certificate", "cert2.pem", "--key", "key2.pem").config
    assert config.tls == TLSFiles("cert2.pem", "key2.pem")


def test_certificate_options_go_together(pem_files, capsys):
    assert (
        _option_error(capsys, "--certificate", "cert.pem")
        == '--certificate "cert.pem": missing "key" (its PEM private key)'
    )
    assert (
        _option_error(capsys, "--key", "key.pem")
        == '--key "key.pem": missing "certificate" (the PEM certificate, with its chain)'
    )
    # one of them may replace the file's
    Path("smtppeer.toml").write_text('[tls]\ncertificate = "cert.pem"\nkey = "other-key.pem"\n')
    assert _options("-c", "smtppeer.toml", "--key", "key.pem").config.tls == TLSFiles("cert.pem", "key.pem")


def test_certificate_options_are_checked_like_the_file(pem_files, capsys):
    assert _option_error(capsys, "--certificate", "cert.pem", "--key", "other-key.pem") == (
        '--key "other-key.pem" is not the key of "cert.pem" '
        "(Certificate public and private keys do not match.)"
    )
    # and a listener that requires TLS, from the file, is satisfied by the options
    Path("smtppeer.toml").write_text('[[listen]]\nendpoint = "tcp:0"\nrequire_tls = true\n')
    assert _option_error(capsys, "-c", "smtppeer.toml") == (
        "smtppeer.toml: listen[0].require_tls: there is no certificate to offer STARTTLS with ([tls])"
    )
    config = _options("-c", "smtppeer.toml", "--certificate", "cert.pem", "--key", "key.pem").config
    assert config.listeners[0].require_tls and config.tls == TLSFiles("cert.pem", "key.pem")


# -- examples -----------------------------------------------------------------


def test_examples_are_all_here():
    assert sorted(p.name for p in EXAMPLES.glob("*.toml")) == [
        "dialup.toml",
        "provider.toml",
        "single-host.toml",
    ]


def test_a_retry_interval_over_an_hour_lifts_the_default_maximum():
    """retry_interval = "2h" means "every two hours" (before retry_interval_max could be
    set, the hour-long maximum cut it to one, unsaid); a maximum given is checked against it."""
    config = loads_config('hostname = "h.test"\n[limits]\nretry_interval = "2h"\n')
    assert (config.retry_interval, config.retry_interval_max) == (7200.0, 7200.0)
    config = loads_config('hostname = "h.test"\n[limits]\nretry_interval = "2h"\nretry_interval_max = "1d"\n')
    assert config.retry_interval_max == 86400.0
    assert loads_config('hostname = "h.test"\n').retry_interval_max == 3600.0


def test_example_single_host():
    config = load_config(EXAMPLES / "single-host.toml")
    assert config.hostname == "mail.example.org"
    assert config.domains["example.org"].users == ["alice", "bob"]
    assert config.domains["example.org"].catch_all is False
    assert config.routes == {"*": "mx"}
    assert config.peers == {} and config.polls == [] and config.holds == {}
    assert config.limits == Limits()  # the example spells out the defaults
    assert (config.max_connections, config.max_received) == (200, 100)
    assert (config.queue_lifetime, config.retry_interval) == (5 * 86400.0, 60.0)
    defaults = Config(hostname=config.hostname)
    for name in (
        "max_connections_per_client",
        "client_ipv6_prefix_length",
        "auth_failures_per_client",
        "auth_backoff",
        "auth_backoff_max",
        "retry_interval_max",
        "outgoing_connections",
        "outgoing_connections_per_destination",
        "messages_per_connection",
        "connect_timeout",
    ):
        assert getattr(config, name) == getattr(defaults, name), name
    assert config.queue_minfree == defaults.queue_minfree


def test_example_provider(example_certs):
    config = load_config(EXAMPLES / "provider.toml")
    assert config.holds == {"dialup.example.org": "dialup"}
    dialup = config.peers["dialup"]
    assert (dialup.endpoint, dialup.addresses, dialup.username) == (None, [], "dialup")
    assert [(x.endpoint, x.mode, x.require_tls, x.turn) for x in config.listeners] == [
        ("tcp:2526:interface=127.0.0.1", "smtp", True, False),
        ("tcp:2366:interface=127.0.0.1", "odmr", False, False),
        ("tcp:2625:interface=127.0.0.1", "smtp", False, False),
    ]
    assert config.tls == TLSFiles("provider-cert.pem", "provider-key.pem")
    assert config.polls == []


def test_example_dialup_polls_the_provider(example_certs):
    dialup = load_config(EXAMPLES / "dialup.toml")
    provider = load_config(EXAMPLES / "provider.toml")
    assert dialup.routes == {"*": "peer:provider"}
    assert dialup.polls == [Poll("provider", interval=300.0, jitter=0.1, method="turn", max_backoff=3600.0)]
    # the dial-up host calls the provider's customer listener, logs in as the
    # provider knows it, and checks the certificate the provider serves
    customer_port = provider.listeners[0].endpoint.split(":")[1]
    peer = dialup.peers["provider"]
    assert peer.endpoint == f"tcp:host=127.0.0.1:port={customer_port}"
    assert (peer.username, peer.password) == (
        provider.peers["dialup"].username,
        provider.peers["dialup"].password,
    )
    assert (peer.tls, peer.ca_file, peer.tls_name) == ("verify", provider.tls.certificate, provider.hostname)
    # ATRN polls go to the provider's ODMR listener, mail to its customer port, on the polls
    odmr_port = next(x.endpoint for x in provider.listeners if x.mode == "odmr").split(":")[1]
    assert peer.odmr_endpoint == f"tcp:host=127.0.0.1:port={odmr_port}"
    assert peer.send == "on-poll"
    assert provider.holds[dialup.hostname] == "dialup"
    assert set(dialup.domains) <= set(provider.peers["dialup"].domains)
    # and all three examples can run side by side
    every = [load_config(p) for p in sorted(EXAMPLES.glob("*.toml"))]
    endpoints = [x.endpoint for c in every for x in c.listeners]
    assert len(set(endpoints)) == len(endpoints)
    assert len({c.data_dir for c in every}) == 3


# -- errors -------------------------------------------------------------------

PEER = '[peers.upstream]\nendpoint = "tcp:host=127.0.0.1:port=2526"\n'
NO_ENDPOINT_PEER = '[peers.dialup]\naddresses = ["192.0.2.10"]\n'
TLS = '[tls]\ncertificate = "cert.pem"\nkey = "key.pem"\n'
LISTEN = '[[listen]]\nendpoint = "tcp:0"\n'
VERIFY = '[peers.p]\ntls = "verify"\n'

# (id, file contents, the error after "smtppeer.toml: "; a trailing "..." matches a prefix)
BROKEN = [
    # unknown keys
    ("unknown-key-suggested", 'hostnme = "a.example"', 'hostnme: unknown key (did you mean "hostname"?)'),
    ("unknown-key", 'colour = "blue"', "colour: unknown key"),
    ("option-name", "max-recipients = 100", 'max-recipients: unknown key (in this file it is "limits.recipients")'),
    ("limit-at-top", "recipients = 100", 'recipients: unknown key (in this file it is "limits.recipients")'),
    ("unknown-limit", "[limits]\nrecipent = 100", 'limits.recipent: unknown key (did you mean "recipients"?)'),
    (
        "unknown-listen-key",
        '[[listen]]\nendpoint = "tcp:0"\nturns = true',
        'listen[0].turns: unknown key (did you mean "turn"?)',
    ),
    (
        "unknown-domain-key",
        '[domains."example.org"]\ncatchall = true',
        'domains."example.org".catchall: unknown key (did you mean "catch_all"?)',
    ),
    ("unknown-peer-key", "[peers.p]\nendpont = 1", 'peers.p.endpont: unknown key (did you mean "endpoint"?)'),
    ("unknown-poll-key", f'{PEER}[[polls]]\npeer = "upstream"\nevery = "5m"', "polls[0].every: unknown key"),
    # wrong types
    ("hostname-int", "hostname = 25", "hostname: expected a string, got an integer (25)"),
    ("hostname-date", "hostname = 1979-05-27", "hostname: expected a string, got a date/time (1979-05-27)"),
    ("json-log-string", 'json_log = "yes"', 'json_log: expected true or false, got a string ("yes")'),
    (
        "relay-from-string",
        'relay_from = "127.0.0.0/8"',
        'relay_from: expected an array, got a string ("127.0.0.0/8")',
    ),
    ("relay-from-item", "relay_from = [8]", "relay_from[0]: expected a string, got an integer (8)"),
    ("recipients-string", '[limits]\nrecipients = "many"', 'limits.recipients: expected an integer, got a string ("many")'),
    ("recipients-bool", "[limits]\nrecipients = true", "limits.recipients: expected an integer, got a boolean (true)"),
    ("routes-array", 'routes = ["a"]', "routes: expected a table (DOMAIN = ENDPOINT, mx or peer:NAME), got an array"),
    ("listen-string", 'listen = "tcp:25"', 'listen: expected an array of listeners, got a string ("tcp:25")'),
    ("listen-item", "listen = [25]", "listen[0]: expected a table, got an integer (25)"),
    ("domain-not-table", 'domains = { "example.org" = true }', 'domains."example.org": expected a table, got a boolean (true)'),
    ("limits-not-table", "limits = 5", "limits: expected a table, got an integer (5)"),
    ("turn-string", '[[listen]]\nendpoint = "tcp:0"\nturn = "yes"', 'listen[0].turn: expected true or false, got a string ("yes")'),
    ("jitter-string", f'{PEER}[[polls]]\npeer = "upstream"\njitter = "10%"', 'polls[0].jitter: expected a number, got a string ("10%")'),
    # peers that do not exist, or cannot do what is asked
    (
        "route-unknown-peer",
        '[routes]\n"example.net" = "peer:upstream"',
        'routes."example.net": no peer named "upstream" (there is no [peers.NAME] table)',
    ),
    (
        "route-peer-typo",
        f'{PEER}[routes]\n"example.net" = "peer:upstraem"',
        'routes."example.net": no peer named "upstraem" (did you mean "upstream"?)',
    ),
    (
        "hold-unknown-peer",
        f'{PEER}[holds]\n"dialup.example" = "dialup"',
        'holds."dialup.example": no peer named "dialup" (the peers are: "upstream")',
    ),
    (
        "poll-unknown-peer",
        f'{PEER}[[polls]]\npeer = "provider"',
        'polls[0].peer: no peer named "provider" (the peers are: "upstream")',
    ),
    ("poll-no-peer", "[[polls]]\ninterval = 60", 'polls[0]: missing "peer" (the name of a [peers.NAME] to poll)'),
    (
        "poll-without-endpoint",
        f'{NO_ENDPOINT_PEER}[[polls]]\npeer = "dialup"',
        'polls[0].peer: peer "dialup" has no endpoint to poll (peers.dialup)',
    ),
    (
        "route-without-endpoint",
        f'{NO_ENDPOINT_PEER}[routes]\n"*" = "peer:dialup"',
        'routes."*": peer "dialup" has no endpoint to relay through (to keep mail until it calls in, use [holds])',
    ),
    (
        "poll-twice",
        f'{PEER}[[polls]]\npeer = "upstream"\n[[polls]]\npeer = "upstream"',
        'polls[1].peer: peer "upstream" is already polled by polls[0]',
    ),
    # endpoints
    (
        "listen-bad-port",
        'listen = ["tcp:smtp"]',
        "listen[0]: \"tcp:smtp\" is not a server endpoint description (invalid literal for int() with base 10: 'smtp')",
    ),
    (
        "listen-unknown-type",
        '[[listen]]\nendpoint = "tcpp:25"',
        "listen[0].endpoint: \"tcpp:25\" is not a server endpoint description (Unknown endpoint type: 'tcpp')",
    ),
    (
        "listen-missing-endpoint",
        '[[listen]]\nmode = "smtp"',
        'listen[0]: missing "endpoint" (a server endpoint description such as "tcp:25")',
    ),
    (
        "route-bad-endpoint",
        '[routes]\n"example.org" = "tcp:nohost"',
        'routes."example.org": "tcp:nohost" is not a client endpoint description (...',
    ),
    (
        "route-unknown-endpoint-type",
        '[routes]\n"example.org" = "smtp://mx.example.org"',
        "routes.\"example.org\": \"smtp://mx.example.org\" is not a client endpoint description (Unknown endpoint type: 'smtp')",
    ),
    (
        "peer-bad-endpoint",
        '[peers.p]\nendpoint = "tcp:host=a.example:port=twenty-five"',
        "peers.p.endpoint: \"tcp:host=a.example:port=twenty-five\" is not a client endpoint description (invalid literal for int() with base 10: 'twenty-five')",
    ),
    (
        "duplicate-listener",
        'listen = ["tcp:2525:interface=127.0.0.1", "tcp:2526", "tcp:2525:interface=127.0.0.1"]',
        'listen[2]: "tcp:2525:interface=127.0.0.1" duplicates listen[0]',
    ),
    (
        "duplicate-listener-wildcard",
        '[[listen]]\nendpoint = "tcp:25"\n[[listen]]\nendpoint = "tcp:port=25:interface=127.0.0.1"',
        'listen[1].endpoint: "tcp:port=25:interface=127.0.0.1" duplicates listen[0] ("tcp:25")',
    ),
    ("listen-mode", '[[listen]]\nendpoint = "tcp:0"\nmode = "lmtp"', 'listen[0].mode: "lmtp" is not a mode: "smtp" or "odmr"'),
    # addresses and networks
    ("bad-cidr", 'relay_from = ["10.0.0.0/33"]', 'relay_from[0]: "10.0.0.0/33" is not a network (CIDR such as 192.0.2.0/24)'),
    ("peer-bad-address", '[peers.p]\naddresses = ["192.0.2.300"]', 'peers.p.addresses[0]: "192.0.2.300" is not an IP address'),
    (
        "peer-shared-address",
        '[peers.a]\naddresses = ["192.0.2.1"]\n[peers.b]\naddresses = ["192.0.2.1"]',
        "peers.b.addresses[0]: 192.0.2.1 is also peer \"a\"'s: a caller must be one peer",
    ),
    ("dns-name", 'dns = "ns.example.org"', 'dns: "ns.example.org": give an IP address and optional port (HOST[:PORT])'),
    ("dns-port", 'dns = "127.0.0.1:99999"', 'dns: "127.0.0.1:99999": give an IP address and optional port (HOST[:PORT])'),
    ("hostname-bad", 'hostname = "mail example"', 'hostname: "mail example" is not a host name'),
    # durations and sizes
    (
        "duration-words",
        f'{PEER}[[polls]]\npeer = "upstream"\ninterval = "5 minutes"',
        'polls[0].interval: "5 minutes" is not a duration (seconds, or a string such as "30s", "5m", "1h", "1d")',
    ),
    ("duration-zero", "[limits]\nretry_interval = 0", "limits.retry_interval: 0: must be more than 0 seconds"),
    ("duration-negative", '[limits]\nqueue_lifetime = "-1d"', 'limits.queue_lifetime: "-1d" is not a duration (...'),
    ("size-unit", '[limits]\nmessage_size = "50X"', 'limits.message_size: "50X" is not a size (octets, or a string such as "512K", "50M", "1G")'),
    ("size-small", "[limits]\nmessage_size = 100", "limits.message_size: 100 is too small: at least 1024 octets"),
    ("size-float", "[limits]\nmessage_size = 1e6", 'limits.message_size: expected a size (octets, or a string such as "512K", "50M", "1G"), got a float (1000000.0)'),
    ("jitter-range", f'{PEER}[[polls]]\npeer = "upstream"\njitter = 1.5', "polls[0].jitter: 1.5: must be from 0 up to (not) 1"),
    (
        "backoff-short",
        f'{PEER}[[polls]]\npeer = "upstream"\ninterval = "1h"\nmax_backoff = "10m"',
        "polls[0].max_backoff: 600 s is shorter than the interval (3600 s)",
    ),
    ("poll-method", f'{PEER}[[polls]]\npeer = "upstream"\nmethod = "uucp"', 'polls[0].method: "uucp" is not a method: "turn", "atrn" or "etrn"'),
    # RFC minimums
    ("recipients-99", "[limits]\nrecipients = 99", "limits.recipients: 99 is too small: at least 100 (RFC 5321 §4.5.3.1.8)"),
    ("command-line-511", "[limits]\ncommand_line = 511", "limits.command_line: 511 is too small: at least 512 octets (RFC 5321 §4.5.3.1.4)"),
    ("text-line-999", "[limits]\ntext_line = 999", "limits.text_line: 999 is too small: at least 1000 octets (RFC 5321 §4.5.3.1.6)"),
    ("connections-0", "[limits]\nmax_connections = 0", "limits.max_connections: 0 is too small: at least 1"),
    # per-client limits and the disk (issue 13, items 2-4)
    ("per-client-negative", "[limits]\nmax_connections_per_client = -1", "limits.max_connections_per_client: -1 is too small: at least 0 (0: no limit)"),
    ("per-client-text", '[limits]\nmax_connections_per_client = "ten"', 'limits.max_connections_per_client: expected an integer, got a string ("ten")'),
    ("line-time-zero", '[limits]\ncommand_line_time = "0s"', 'limits.command_line_time: "0s": must be more than 0 seconds'),
    ("auth-failures-negative", "[limits]\nauth_failures_per_client = -3", "limits.auth_failures_per_client: -3 is too small: at least 0 (0: no limit)"),
    ("auth-backoff-zero", "[limits]\nauth_backoff = 0", "limits.auth_backoff: 0: must be more than 0 seconds"),
    ("auth-backoff-max-short", '[limits]\nauth_backoff = "10m"\nauth_backoff_max = "5m"', "limits.auth_backoff_max: auth_backoff_max (5m) is shorter than auth_backoff (10m)"),
    ("auth-backoff-over-max", '[limits]\nauth_backoff = "2h"', "limits.auth_backoff: auth_backoff_max (1h) is shorter than auth_backoff (2h)"),
    ("retry-max-short", '[limits]\nretry_interval = "10m"\nretry_interval_max = "5m"', "limits.retry_interval_max: retry_interval_max (5m) is shorter than retry_interval (10m)"),
    ("outgoing-0", "[limits]\noutgoing_connections = 0", "limits.outgoing_connections: 0 is too small: at least 1"),
    ("per-destination-0", "[limits]\noutgoing_connections_per_destination = 0", "limits.outgoing_connections_per_destination: 0 is too small: at least 1"),
    ("per-connection-float", "[limits]\nmessages_per_connection = 2.5", "limits.messages_per_connection: expected an integer, got a float (2.5)"),
    ("connect-timeout-zero", '[limits]\nconnect_timeout = "0s"', 'limits.connect_timeout: "0s": must be more than 0 seconds'),
    ("ipv6-prefix-0", "[limits]\nclient_ipv6_prefix_length = 0", "limits.client_ipv6_prefix_length: 0 is too small: at least 1"),
    ("ipv6-prefix-129", "[limits]\nclient_ipv6_prefix_length = 129", "limits.client_ipv6_prefix_length: 129 is too large: at most 128 bits"),
    ("minfree-unit", '[limits]\nqueue_minfree = "1X"', 'limits.queue_minfree: "1X" is not a size (...'),
    ("minfree-negative", "[limits]\nqueue_minfree = -1", "limits.queue_minfree: -1 is too small: at least 0 octets"),
    # domains and mailboxes
    ("bad-domain", '[domains."exa mple.org"]', 'domains."exa mple.org": "exa mple.org" is not a domain name'),
    (
        "domain-twice",
        '[domains."Example.org"]\n[domains."example.org."]',
        'domains."example.org.": example.org is given twice',
    ),
    (
        "no-mailboxes",
        '[domains."example.org"]\ncatch_all = false',
        'domains."example.org": no mailboxes: list users (or aliases), or set catch_all = true',
    ),
    (
        "alias-to-nobody",
        '[domains."example.org"]\nusers = ["alice"]\naliases = { postmaster = "root" }',
        'domains."example.org".aliases.postmaster[0]: "root" is neither a user nor an alias of this domain',
    ),
    (
        "user-with-at",
        '[domains."example.org"]\nusers = ["alice@example.org"]',
        'domains."example.org".users[0]: "alice@example.org" is not a local part (no @, spaces or control characters)',
    ),
    ("user-twice", '[domains."example.org"]\nusers = ["a", "a"]', 'domains."example.org".users[1]: "a" is listed twice'),
    (
        "held-local-domain",
        f'{NO_ENDPOINT_PEER}[domains."example.org"]\n[holds]\n"example.org" = "dialup"',
        'holds."example.org": example.org is a local domain ([domains]): its mail is delivered here, not held',
    ),
    (
        "routed-and-held",
        f'{NO_ENDPOINT_PEER}[holds]\n"dialup.example" = "dialup"\n[routes]\n"dialup.example" = "mx"',
        'routes."dialup.example": dialup.example is also held for peer "dialup" ([holds])',
    ),
    ("hold-star", f'{NO_ENDPOINT_PEER}[holds]\n"*" = "dialup"', 'holds."*": "*" is not a domain name, ".DOMAIN" (its subdomains)'),
    ("bad-peer-name", '[peers."my peer"]', 'peers."my peer": "my peer" is not a peer name (letters, digits, \'.\', \'_\', \'-\')'),
    ("username-alone", '[peers.p]\nusername = "p"', "peers.p.password: missing: username needs password (or password_hash)"),
    ("password-alone", '[peers.p]\npassword = "p"', "peers.p.username: missing: password needs a username"),
    ("hash-alone", f'[peers.p]\npassword_hash = "{HASH}"', "peers.p.username: missing: password_hash needs a username"),
    (
        "peer-password-and-hash",
        f'[peers.p]\nusername = "p"\npassword = "x"\npassword_hash = "{HASH}"',
        "peers.p.password_hash: give password or password_hash, not both",
    ),
    (
        "peer-bad-hash",
        '[peers.p]\nusername = "p"\npassword_hash = "secret"',
        "peers.p.password_hash: malformed SCRAM secret: expected 'SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>' (smtppeer hash-password writes one)",
    ),
    (
        "login-two-peers",
        '[peers.a]\nusername = "u"\npassword = "x"\n[peers.b]\nusername = "u"\npassword = "y"',
        "peers.b.username: \"u\" is also peer \"a\"'s: a login name must be one peer's or one user's",
    ),
    # client TLS towards a peer
    ("peer-unknown-key-tls", '[peers.p]\ntls_nme = "a.example"', 'peers.p.tls_nme: unknown key (did you mean "tls_name"?)'),
    ("peer-tls-policy", '[peers.p]\ntls = "strict"', 'peers.p.tls: "strict" is not a TLS policy: "none", "opportunistic", "required" or "verify"'),
    ("peer-tls-bool", "[peers.p]\ntls = true", "peers.p.tls: expected a string, got a boolean (true)"),
    ("ca-file-without-verify", '[peers.p]\nca_file = "ca.pem"', 'peers.p.ca_file: only for tls = "verify" (this peer\'s tls is "opportunistic")'),
    (
        "tls-name-without-verify",
        '[peers.p]\ntls = "required"\ntls_name = "mx.example"',
        'peers.p.tls_name: only for tls = "verify" (this peer\'s tls is "required")',
    ),
    ("ca-file-missing", f'{VERIFY}ca_file = "nowhere.pem"', 'peers.p.ca_file: cannot read "nowhere.pem": No such file or directory'),
    (
        "ca-file-garbage",
        f'{VERIFY}ca_file = "garbage.pem"',
        'peers.p.ca_file: "garbage.pem" is not a file of PEM certificates (no -----BEGIN CERTIFICATE----- in it)',
    ),
    ("ca-file-broken", f'{VERIFY}ca_file = "broken-chain.pem"', 'peers.p.ca_file: certificate 2 of 2 in "broken-chain.pem" is broken (...'),
    (
        "verify-without-a-host",
        f'{VERIFY}endpoint = "unix:/run/provider.sock"',
        'peers.p.tls_name: missing: the endpoint "unix:/run/provider.sock" names no host to verify the certificate for',
    ),
    ("tls-name-bad", f'{VERIFY}tls_name = "mail provider"', 'peers.p.tls_name: "mail provider" is not a domain name'),
    # users
    ("users-not-table", 'users = ["alice"]', "users: expected a table of users ([users.NAME]), got an array"),
    ("user-not-table", 'users = { alice = "secret" }', 'users.alice: expected a table, got a string ("secret")'),
    ("bad-user-name", '[users."al ice"]\npassword = "x"', 'users."al ice": "al ice" is not a login name (letters, digits, \'.\', \'_\', \'+\', \'-\'; or an address)'),
    ("user-name-two-ats", '[users."a@b@c.test"]\npassword = "x"', 'users."a@b@c.test": "a@b@c.test" is not a login name (letters, digits, \'.\', \'_\', \'+\', \'-\'; or an address)'),
    ("user-name-scram-comma", '[users."a,b"]\npassword = "x"', 'users."a,b": "a,b" is not a login name (letters, digits, \'.\', \'_\', \'+\', \'-\'; or an address)'),
    ("user-unknown-key", '[users.alice]\npasword = "x"', 'users.alice.pasword: unknown key (did you mean "password"?)'),
    ("user-no-password", "[users.alice]", 'users.alice: missing "password" (or "password_hash", from smtppeer hash-password)'),
    ("user-empty-password", '[users.alice]\npassword = ""', "users.alice.password: must not be empty"),
    (
        "user-password-and-hash",
        f'[users.alice]\npassword = "x"\npassword_hash = "{HASH}"',
        "users.alice.password_hash: give password or password_hash, not both",
    ),
    (
        "user-bad-hash",
        '[users.alice]\npassword_hash = "SCRAM-SHA-256$4096:bm90IGJhc2U2NA"',
        "users.alice.password_hash: malformed SCRAM secret: ...",
    ),
    ("user-hash-int", "[users.alice]\npassword_hash = 4096", "users.alice.password_hash: expected a string, got an integer (4096)"),
    (
        "login-peer-and-user",
        '[peers.p]\nusername = "alice"\npassword = "x"\n[users.alice]\npassword = "y"',
        'users.alice: "alice" is also peer "p"\'s username: a login name must be one peer\'s or one user\'s',
    ),
    ("user-at-top", 'user = "alice"', 'user: unknown key (in this file it is "users")'),
    # the server certificate
    ("tls-not-table", 'tls = "cert.pem"', 'tls: expected a table, got a string ("cert.pem")'),
    ("certificate-at-top", 'certificate = "cert.pem"', 'certificate: unknown key (in this file it is "tls.certificate")'),
    ("tls-unknown-key", f"{TLS}keys = 1", 'tls.keys: unknown key (did you mean "key"?)'),
    ("tls-no-key", '[tls]\ncertificate = "cert.pem"', 'tls: missing "key" (its PEM private key)'),
    ("tls-no-certificate", '[tls]\nkey = "key.pem"', 'tls: missing "certificate" (the PEM certificate, with its chain)'),
    ("tls-empty-path", '[tls]\ncertificate = ""\nkey = "key.pem"', "tls.certificate: must not be empty"),
    (
        "tls-missing-certificate",
        '[tls]\ncertificate = "nowhere.pem"\nkey = "key.pem"',
        'tls.certificate: cannot read "nowhere.pem": No such file or directory',
    ),
    ("tls-missing-key", '[tls]\ncertificate = "cert.pem"\nkey = "."', 'tls.key: cannot read ".": Is a directory'),
    (
        "tls-bad-certificate",
        '[tls]\ncertificate = "garbage.pem"\nkey = "key.pem"',
        'tls.certificate: "garbage.pem" is not a PEM certificate (no -----BEGIN CERTIFICATE----- in it)',
    ),
    (
        "tls-key-for-certificate",
        '[tls]\ncertificate = "key.pem"\nkey = "key.pem"',
        'tls.certificate: "key.pem" is not a PEM certificate (no -----BEGIN CERTIFICATE----- in it)',
    ),
    ("tls-broken-certificate", '[tls]\ncertificate = "broken.pem"\nkey = "key.pem"', 'tls.certificate: the certificate in "broken.pem" is broken (...'),
    ("tls-bad-key", '[tls]\ncertificate = "cert.pem"\nkey = "garbage.pem"', 'tls.key: "garbage.pem" is not a PEM private key (...'),
    (
        "tls-key-mismatch",
        '[tls]\ncertificate = "cert.pem"\nkey = "other-key.pem"',
        'tls.key: "other-key.pem" is not the key of "cert.pem" (Certificate public and private keys do not match.)',
    ),
    (
        "tls-encrypted-key",
        '[tls]\ncertificate = "cert.pem"\nkey = "encrypted-key.pem"',
        'tls.key: "encrypted-key.pem" is encrypted: give the key without a passphrase',
    ),
    # listeners: STARTTLS, AUTH, ODMR
    ("starttls-string", f'{LISTEN}starttls = "yes"', 'listen[0].starttls: expected true or false, got a string ("yes")'),
    ("starttls-without-tls", f"{LISTEN}starttls = true", "listen[0].starttls: there is no certificate to offer STARTTLS with ([tls])"),
    ("require-tls-without-tls", f"{LISTEN}require_tls = true", "listen[0].require_tls: there is no certificate to offer STARTTLS with ([tls])"),
    (
        "require-tls-without-starttls",
        f"{TLS}{LISTEN}starttls = false\nrequire_tls = true",
        "listen[0].require_tls: TLS cannot be required where starttls = false",
    ),
    ("auth-in-clear-int", f"{LISTEN}auth_in_clear = 1", "listen[0].auth_in_clear: expected true or false, got an integer (1)"),
    ("max-auth-failures-0", f"{LISTEN}max_auth_failures = 0", "listen[0].max_auth_failures: 0 is too small: at least 1"),
    ("max-auth-failures-string", f'{LISTEN}max_auth_failures = "3"', 'listen[0].max_auth_failures: expected an integer, got a string ("3")'),
    ("processes-0", f"{LISTEN}processes = 0", "listen[0].processes: 0 is too small: at least 1"),
    ("processes-too-many", f"{LISTEN}processes = 65", "listen[0].processes: 65 is too many: at most 64"),
    ("processes-turn", f"{LISTEN}turn = true\nprocesses = 2", "listen[0].processes: a listener served by several processes only receives: not with turn or odmr"),
    ("processes-odmr", '[[listen]]\nmode = "odmr"\nprocesses = 2', "listen[0].processes: a listener served by several processes only receives: not with turn or odmr"),
    ("processes-unix", '[[listen]]\nendpoint = "unix:/tmp/x.sock"\nprocesses = 2', "listen[0].processes: several processes need a tcp or tcp6 endpoint"),
    (
        "odmr-turn",
        '[[listen]]\nmode = "odmr"\nturn = true',
        "listen[0].turn: an odmr listener turns with ATRN, not TURN (RFC 2645): set mode or turn",
    ),
    ("odmr-twice", '[[listen]]\nmode = "odmr"\n[[listen]]\nmode = "ODMR"', 'listen[1]: "tcp:366" duplicates listen[0]'),
    # polls: ATRN and ETRN
    (
        "atrn-without-credentials",
        f'{PEER}[[polls]]\npeer = "upstream"\nmethod = "atrn"',
        'polls[0].method: atrn logs in (RFC 2645): peer "upstream" needs a username and password',
    ),
    (
        "atrn-with-only-a-hash",
        f'{PEER}username = "u"\npassword_hash = "{HASH}"\n[[polls]]\npeer = "upstream"\nmethod = "atrn"',
        'polls[0].method: atrn logs in (RFC 2645): peer "upstream" needs the password itself, not password_hash',
    ),
    (
        "turn-with-domains",
        f'{PEER}[[polls]]\npeer = "upstream"\ndomains = ["a.example"]',
        'polls[0].domains: only for method = "atrn" or "etrn" (turn names no domains)',
    ),
    (
        "poll-domains-string",
        f'{PEER}[[polls]]\npeer = "upstream"\nmethod = "etrn"\ndomains = "a.example"',
        'polls[0].domains: expected an array, got a string ("a.example")',
    ),
    (
        "poll-bad-domain",
        f'{PEER}[[polls]]\npeer = "upstream"\nmethod = "etrn"\ndomains = ["a example"]',
        'polls[0].domains[0]: "a example" is not a domain name',
    ),
    (
        "etrn-bad-queue",
        f'{PEER}[[polls]]\npeer = "upstream"\nmethod = "etrn"\ndomains = ["#a b"]',
        'polls[0].domains[0]: "#a b" is not a queue (#NAME, NAME like a peer\'s)',
    ),
    (
        "atrn-takes-plain-domains-only",
        f'{PEER}username = "u"\npassword = "p"\n[[polls]]\npeer = "upstream"\nmethod = "atrn"\ndomains = ["@a.example"]',
        'polls[0].domains[0]: "@a.example" is not a domain name',
    ),
    (
        "poll-domain-twice",
        f'{PEER}[[polls]]\npeer = "upstream"\nmethod = "etrn"\ndomains = ["a.example", "A.example."]',
        "polls[0].domains[1]: a.example is listed twice",
    ),
    # odmr_endpoint, send = "on-poll" (issue 12, items 2 and 3)
    (
        "odmr-endpoint-bad",
        f'{PEER}odmr_endpoint = "tcp:nohost"',
        'peers.upstream.odmr_endpoint: "tcp:nohost" is not a client endpoint description (...',
    ),
    (
        "odmr-only-peer-polled-by-turn",
        '[peers.p]\nodmr_endpoint = "tcp:host=127.0.0.1:port=2366"\n[[polls]]\npeer = "p"',
        'polls[0].peer: peer "p" has no endpoint to poll (peers.p)',
    ),
    (
        "atrn-poll-without-any-endpoint",
        f'{NO_ENDPOINT_PEER}username = "u"\npassword = "p"\n[[polls]]\npeer = "dialup"\nmethod = "atrn"',
        'polls[0].peer: peer "dialup" has no endpoint or odmr_endpoint to poll (peers.dialup)',
    ),
    (
        "route-to-port-366",
        '[peers.p]\nendpoint = "tcp:host=192.0.2.1:port=366"\n[routes]\n"*" = "peer:p"',
        'routes."*": peer "p" has port 366 as its endpoint, the ODMR port, which takes no mail (RFC 2645): '
        "give its SMTP port as endpoint and the ODMR port as odmr_endpoint",
    ),
    (
        "route-to-the-odmr-endpoint",
        '[peers.p]\nendpoint = "tcp:host=192.0.2.1:port=2366"\nodmr_endpoint = "tcp:host=192.0.2.1:port=2366"\n'
        '[routes]\n"x.example" = "peer:p"',
        'routes."x.example": peer "p" has its odmr_endpoint as its endpoint, an ODMR port, which takes no '
        "mail (RFC 2645): give its SMTP port as endpoint and the ODMR port as odmr_endpoint",
    ),
    (
        "route-to-a-peer-polled-by-atrn-at-its-endpoint",
        f'{PEER}username = "u"\npassword = "p"\n[routes]\n"*" = "peer:upstream"\n'
        '[[polls]]\npeer = "upstream"\nmethod = "atrn"',
        'routes."*": peer "upstream" is polled by ATRN at its endpoint, an ODMR port, which takes no mail '
        "(RFC 2645): give its SMTP port as endpoint and the ODMR port as odmr_endpoint",
    ),
    ("send-bad", f'{PEER}send = "later"', 'peers.upstream.send: "later" is not a send mode: "now" or "on-poll"'),
    ("send-type", f"{PEER}send = true", "peers.upstream.send: expected a string, got a boolean (true)"),
    (
        "send-on-poll-unpolled",
        f'{PEER}send = "on-poll"',
        'peers.upstream.send: "on-poll" waits for polls of "upstream": no [[polls]] polls it',
    ),
    (
        "send-on-poll-without-endpoint",
        f'{NO_ENDPOINT_PEER}send = "on-poll"',
        'peers.dialup.send: "on-poll": peer "dialup" has no endpoint to send its mail to',
    ),
    (
        "send-on-poll-atrn-at-its-endpoint",
        f'{PEER}username = "u"\npassword = "p"\nsend = "on-poll"\n[[polls]]\npeer = "upstream"\nmethod = "atrn"',
        'peers.upstream.send: "on-poll": peer "upstream" is polled by ATRN at its endpoint, an ODMR port, '
        "which takes no mail (RFC 2645): give the ODMR port as odmr_endpoint",
    ),
    (
        "odmr-endpoint-unix-verify",
        '[peers.p]\nodmr_endpoint = "unix:/run/odmr.sock"\ntls = "verify"',
        'peers.p.tls_name: missing: the endpoint "unix:/run/odmr.sock" names no host to verify the certificate for',
    ),
    # the file itself
    ("syntax", 'hostname = "a.example"\n[limits\nrecipients = 100', "line 2, column 8: TOML syntax error: Expected ']' at the end of a table declaration"),
    ("syntax-end", 'hostname = """a.example', "end of file: TOML syntax error: Unterminated string"),
    ("syntax-eol", 'hostname = "a.example', "line 1, column 22: TOML syntax error: Illegal character '\\n'"),
    ("duplicate-key", "json_log = true\njson_log = false", "line 2, column 17: TOML syntax error: Cannot overwrite a value"),
]  # fmt: skip


@pytest.mark.parametrize("text, expected", [row[1:] for row in BROKEN], ids=[row[0] for row in BROKEN])
def test_broken_file(pem_files, text, expected):
    Path("smtppeer.toml").write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config("smtppeer.toml")
    message = str(info.value)
    assert "\n" not in message
    if expected.endswith("..."):
        assert message.startswith("smtppeer.toml: " + expected[:-3]), message
    else:
        assert message == "smtppeer.toml: " + expected


def test_error_parts(tmp_path):
    path = tmp_path / "conf.toml"
    path.write_text('[routes]\n"example.org" = "tcp:nohost"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.key == 'routes."example.org"'
    assert info.value.message.startswith('"tcp:nohost" is not a client endpoint description (')
    assert str(info.value).startswith(f'{path}: routes."example.org": "tcp:nohost" is not a client endpoint')


def test_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^nowhere\.toml: no such file$"):
        load_config("nowhere.toml")


def test_directory(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a configuration file"


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('hostname = "caf\xe9.example"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: not UTF-8 text (bad byte at offset 15)"


def test_loads_names_its_source():
    with pytest.raises(ConfigError, match=r"^inline: colour: unknown key$"):
        loads_config('colour = "blue"', "inline")


def test_a_peer_with_two_ports_polled_by_atrn_and_sending_on_polls():
    config = loads_config(
        '[peers.provider]\nendpoint = "tcp:host=192.0.2.1:port=587"\n'
        'odmr_endpoint = "tcp:host=192.0.2.1:port=366"\nusername = "u"\npassword = "p"\nsend = "on-poll"\n'
        '[routes]\n"*" = "peer:provider"\n[[polls]]\npeer = "provider"\nmethod = "atrn"\n'
    )
    peer = config.peers["provider"]
    assert (peer.endpoint, peer.odmr_endpoint, peer.send) == (
        "tcp:host=192.0.2.1:port=587",
        "tcp:host=192.0.2.1:port=366",
        "on-poll",
    )
    assert peer.poll_endpoint(config.polls[0].method) == "tcp:host=192.0.2.1:port=366"
    assert peer.poll_endpoint(PollMethod.TURN) == "tcp:host=192.0.2.1:port=587"
    # an ATRN-only peer (no endpoint) may be polled, and takes no routes and no on-poll mail
    only = loads_config(
        '[peers.p]\nodmr_endpoint = "tcp:host=192.0.2.1:port=366"\nusername = "u"\npassword = "p"\n'
        '[[polls]]\npeer = "p"\nmethod = "atrn"\n'
    )
    assert only.peers["p"].poll_endpoint(PollMethod.ATRN) == "tcp:host=192.0.2.1:port=366"
    assert only.peers["p"].send == "now"  # the default
