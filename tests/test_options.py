"""``twistd smtppeer`` options go through the configuration file's checks: one rule, one place.

Each case is given twice, as an option and as the file key it stands for,
and must come out the same: the same value in the model, or the same
complaint (the option's line names the option instead of the file and key).
"""

from __future__ import annotations

import pytest
from twisted.python import usage

from smtppeer.service.configfile import ConfigError, loads_config
from smtppeer.service.options import Options


def from_options(*argv: str):
    options = Options()
    options.parseOptions(list(argv))
    return options.config


def option_error(capsys, *argv: str) -> str:
    """A broken option ends with one line on standard error and status 2."""
    with pytest.raises(SystemExit) as info:
        from_options(*argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    return err.rstrip("\n")


def file_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loads_config(text, "smtppeer.toml")
    return info.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("::1", ("::1", 53)),  # was ('::1:53', 53) from the option: another address
        ("[::1]:5353", ("::1", 5353)),  # was refused by the option
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        ("[2001:db8::53]", ("2001:db8::53", 53)),
    ],
)
def test_dns_is_the_same_from_the_option_and_the_file(text, expected):
    assert loads_config(f'dns = "{text}"').dns == expected
    assert from_options("--dns", text).dns == expected
    assert from_options(f"--dns={text}").dns == expected


@pytest.mark.parametrize(
    "text", ["x", "example.org", "127.0.0.1:0", "127.0.0.1:99999", "[::1]:x", "::1:99999", ""]
)
def test_a_bad_dns_server_gets_the_same_complaint(capsys, text):
    error = file_error(f'dns = "{text}"')
    assert str(error) == f"smtppeer.toml: dns: {error.message}"
    assert option_error(capsys, "--dns", text) in (
        f"--dns {error.message}",
        f'--dns "{text}": {error.message}',
    )
    assert error.message.startswith(f'"{text}"') or text == ""


@pytest.mark.parametrize(
    ("option", "key", "text"),
    [
        ("--max-message-size", "message_size", "1000"),
        ("--max-message-size", "message_size", "fifty"),
        ("--max-recipients", "recipients", "99"),
        ("--max-connections", "max_connections", "0"),
        ("--max-connections-per-client", "max_connections_per_client", "-1"),
        ("--queue-minfree", "queue_minfree", "-5"),
        ("--queue-minfree", "queue_minfree", "lots"),
        ("--max-received", "max_received", "0"),
        ("--queue-lifetime", "queue_lifetime", "0"),
        ("--queue-lifetime", "queue_lifetime", "five days"),
        ("--retry-interval", "retry_interval", "-1"),
    ],
)
def test_bad_limits_get_the_file_s_complaint(capsys, option, key, text):
    value = text if not text.lstrip("-").isdigit() else int(text)
    toml = f'"{value}"' if isinstance(value, str) else str(value)
    error = file_error(f"[limits]\n{key} = {toml}\n")
    assert option_error(capsys, option, text) == f"{option} {error.message}"


def test_a_number_where_the_file_wants_one(capsys):
    assert option_error(capsys, "--max-recipients", "many") == '--max-recipients "many": expected an integer'
    assert (
        option_error(capsys, "--listen", "tcp:0", "--processes", "2x")
        == '--processes "2x": expected an integer'
    )


@pytest.mark.parametrize(
    ("option", "key", "text", "expected"),
    [
        ("--queue-lifetime", "queue_lifetime", "5d", 432000.0),
        ("--queue-lifetime", "queue_lifetime", "1h30m", 5400.0),
        ("--queue-lifetime", "queue_lifetime", "3600", 3600.0),
        ("--retry-interval", "retry_interval", "90s", 90.0),
        ("--retry-interval", "retry_interval", "2.5", 2.5),
    ],
)
def test_durations_as_in_the_file(option, key, text, expected):
    toml = text if text.replace(".", "").isdigit() else f'"{text}"'
    assert getattr(loads_config(f"[limits]\n{key} = {toml}\n"), key) == expected
    assert getattr(from_options(option, text), key) == expected


def test_per_client_limit_and_queue_minfree_as_in_the_file():
    for text, count in (("5", 5), ("0", 0)):
        config = loads_config(f"[limits]\nmax_connections_per_client = {text}\n")
        assert config.max_connections_per_client == count
        assert from_options("--max-connections-per-client", text).max_connections_per_client == count
    assert loads_config('[limits]\nqueue_minfree = "100M"\n').queue_minfree == 100 * 1024**2
    assert from_options("--queue-minfree", "100M").queue_minfree == 100 * 1024**2
    assert from_options().max_connections_per_client == 20 and from_options().queue_minfree == 0


@pytest.mark.parametrize(("text", "octets"), [("50M", 50 * 1024**2), ("512K", 512 * 1024), ("2048", 2048)])
def test_sizes_as_in_the_file(text, octets):
    toml = text if text.isdigit() else f'"{text}"'
    assert loads_config(f"[limits]\nmessage_size = {toml}\n").limits.message_size == octets
    assert from_options("--max-message-size", text).limits.message_size == octets


def test_listen_route_hold_relay_from_are_checked_by_the_file(capsys):
    listen_error = file_error('listen = ["nonsense:1"]')
    assert option_error(capsys, "--listen", "nonsense:1") == f"--listen {listen_error.message}"
    assert option_error(capsys, "--listen", "tcp:2525", "--listen", "tcp:2525").startswith(
        '--listen "tcp:2525" duplicates listen[0]'
    )
    error = file_error('[routes]\n"x.test" = "tcp:nohost"\n')
    assert (
        option_error(capsys, "--route", "x.test=tcp:nohost")
        == f'--route "x.test=tcp:nohost": {error.message}'
    )
    assert option_error(capsys, "--route", "not a domain=mx").startswith(
        '--route "not a domain=mx": "not a domain" is not a domain name'
    )
    assert option_error(capsys, "--domain", "x.test", "--hold", "x.test=p").startswith(
        '--hold "x.test=p": x.test is a local domain'
    )
    assert option_error(capsys, "--relay-from", "10.0.0.0/99") == (
        '--relay-from "10.0.0.0/99" is not a network (CIDR such as 192.0.2.0/24)'
    )
    assert option_error(capsys, "--domain", "-bad-") == '--domain "-bad-" is not a domain name'
    assert option_error(capsys, "--hostname", "a b") == '--hostname "a b" is not a host name'


def test_option_syntax_is_the_option_s_own():
    with pytest.raises(usage.UsageError, match="expected DOMAIN=VALUE"):
        from_options("--route", "x.test")


def test_options_replace_the_file_s_entry_for_the_same_domain(tmp_path):
    path = tmp_path / "smtppeer.toml"
    path.write_text('[routes]\n"X.test" = "mx"\n"y.test" = "mx"\n[limits]\nrecipients = 200\n')
    config = from_options(
        "-c", str(path), "--route", "x.test=tcp:host=127.0.0.1:port=25", "--max-recipients", "300"
    )
    assert config.routes == {"y.test": "mx", "x.test": "tcp:host=127.0.0.1:port=25"}
    assert config.limits.recipients == 300


def test_an_error_in_the_file_is_the_file_s(tmp_path, capsys):
    path = tmp_path / "smtppeer.toml"
    path.write_text('dns = "x"\n')
    assert (
        option_error(capsys, "-c", str(path))
        == f'{path}: dns: "x": give an IP address and optional port (HOST[:PORT])'
    )
    assert from_options("-c", str(path), "--dns", "::1").dns == ("::1", 53)  # the option replaces it


def test_hold_names_its_peer():
    config = from_options("--hold", "dialup.test=dialup")
    assert config.holds == {"dialup.test": "dialup"}
    assert config.peers["dialup"].domains == ["dialup.test"]


def test_help_shows_durations_and_sizes_as_the_file_spells_them():
    text = " ".join(str(Options()).split())
    assert "432000" not in text and "[default: 5d]" in text and "[default: 1m]" in text
    assert "[default: 50M]" in text
