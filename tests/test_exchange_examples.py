"""The example configurations, run as real twistd processes: a dial-up host polls its
provider over verified STARTTLS with AUTH, by TURN and by ATRN."""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
from pathlib import Path

import pytest

from smtppeer.peer.tls import make_self_signed

from .conftest import REPO, TWISTD, end_process, free_port, smtppeer, wait_for_port, wait_until

EXAMPLES = REPO / "examples"


def adapt(name: str, tmp: Path, ports: dict[str, int], extra: dict[str, str] | None = None) -> Path:
    """The example with test ports and a short poll interval, written to ``tmp``."""
    text = (EXAMPLES / name).read_text()
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, ports)) + r")\b")
    text = pattern.sub(lambda m: str(ports[m.group(1)]), text)  # one pass: new ports are never rewritten
    for old, new in (extra or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp / name
    path.write_text(text)
    return path


class Proc:
    """``twistd -n smtppeer --config FILE`` in ``tmp``, on a known port."""

    def __init__(self, tmp: Path, config: Path, port: int) -> None:
        self.tmp, self.config, self.port = tmp, config, port
        self.log_path = tmp / (config.stem + ".log")
        self.proc = None

    def start(self) -> Proc:
        env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*TWISTD, "-n", "--pidfile=", "smtppeer", "--config", str(self.config)],
                cwd=self.tmp,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def maildir_count(path: Path) -> int:
    new = path / "new"
    return len(list(new.iterdir())) if new.is_dir() else 0


def smtppeer_command(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """The admin command as a user runs it in the examples' directory, output as text."""
    return smtppeer(*args, cwd=tmp_path, text=True, env={"PATH": "/usr/bin:/bin"})


@pytest.fixture
def pair(tmp_path):
    # the lab certificate, as the provider example's header says to make it
    make_self_signed(
        "provider.example.org", str(tmp_path / "provider-cert.pem"), str(tmp_path / "provider-key.pem")
    )
    ports = {"2526": free_port(), "2366": free_port(), "2625": free_port(), "2527": free_port()}
    short = {'interval = "5m"': 'interval = "1s"', 'max_backoff = "1h"': 'max_backoff = "3s"'}
    provider = Proc(tmp_path, adapt("provider.toml", tmp_path, ports), ports["2526"])
    dialup = Proc(tmp_path, adapt("dialup.toml", tmp_path, ports, short), ports["2527"])
    yield provider, dialup, ports
    dialup.stop()
    provider.stop()


def test_one_poll_carries_mail_both_ways(pair, tmp_path):
    provider, dialup, ports = pair
    provider.start()
    with smtplib.SMTP("127.0.0.1", ports["2625"]) as s:  # mail for the dial-up host: held
        s.sendmail("boss@provider.example.org", ["carol@dialup.example.org"], b"Subject: held\r\n\r\nx\r\n")
        s.sendmail("boss@provider.example.org", ["everyone@dialup.example.org"], b"Subject: all\r\n\r\nx\r\n")
    held = list((tmp_path / "provider-data" / "spool" / "queue").glob("*.json"))
    assert len(held) == 2
    assert {json.loads(p.read_text())["recipients"][0]["state"] for p in held} == {"held"}
    dialup.start()
    with smtplib.SMTP("127.0.0.1", ports["2527"]) as s:  # mail from the dial-up host's users
        s.sendmail("carol@dialup.example.org", ["boss@provider.example.org"], b"Subject: up\r\n\r\nx\r\n")
    carol = tmp_path / "dialup-data" / "mail" / "dialup.example.org" / "carol"
    dave = tmp_path / "dialup-data" / "mail" / "dialup.example.org" / "dave"
    boss = tmp_path / "provider-data" / "mail" / "provider.example.org" / "boss"
    wait_until(
        lambda: maildir_count(carol) == 2 and maildir_count(dave) == 1, what="held mail on the dial-up host"
    )
    wait_until(lambda: maildir_count(boss) == 1, what="the dial-up host's mail at the provider")
    wait_until(
        lambda: not list((tmp_path / "provider-data" / "spool" / "queue").iterdir()), what="hold queue empty"
    )
    wait_until(lambda: "poll provider: sent" in dialup.log(), what="the poll's log line")
    assert ", turned, " in dialup.log()
    assert "AUTH SCRAM-SHA-256 as dialup from 127.0.0.1" in provider.log()
    assert "TURN from 127.0.0.1: peer dialup" in provider.log()


def test_atrn_poll_to_the_odmr_port_and_outgoing_mail_to_the_smtp_port(tmp_path):
    """The same pair with ``method = "atrn"`` (issue 12, item 2): the poll logs in on the
    provider's ODMR port (the peer's ``odmr_endpoint``), ATRN, receives; what the dial-up
    host has queued for the world goes to the provider's SMTP port (its ``endpoint``) in
    the same poll cycle, never to the ODMR port, which takes no mail."""
    make_self_signed(
        "provider.example.org", str(tmp_path / "provider-cert.pem"), str(tmp_path / "provider-key.pem")
    )
    ports = {"2526": free_port(), "2366": free_port(), "2625": free_port(), "2527": free_port()}
    atrn = {
        'method = "turn"': 'method = "atrn"',
        'interval = "5m"': 'interval = "1h"',
        "jitter = 0.1": "jitter = 0",
    }
    provider = Proc(tmp_path, adapt("provider.toml", tmp_path, ports), ports["2526"])
    dialup = Proc(tmp_path, adapt("dialup.toml", tmp_path, ports, atrn), ports["2527"])
    carol = tmp_path / "dialup-data" / "mail" / "dialup.example.org" / "carol"
    dave = tmp_path / "dialup-data" / "mail" / "dialup.example.org" / "dave"
    try:
        provider.start()
        with smtplib.SMTP("127.0.0.1", ports["2625"]) as s:
            s.sendmail("boss@provider.example.org", ["dave@dialup.example.org"], b"Subject: a\r\n\r\nx\r\n")
            s.sendmail("boss@provider.example.org", ["carol@dialup.example.org"], b"Subject: b\r\n\r\nx\r\n")
        dialup.start()  # the first poll is at once (no jitter), the next in an hour
        wait_until(lambda: maildir_count(carol) == 1 and maildir_count(dave) == 1, what="mail by ATRN")
        wait_until(lambda: ", turned, " in dialup.log(), what="the first poll's log line")
        with smtplib.SMTP("127.0.0.1", ports["2527"]) as s:  # mail for the world, queued for the poll
            s.sendmail("carol@dialup.example.org", ["boss@provider.example.org"], b"Subject: up\r\n\r\nx\r\n")
            s.sendmail("<>", ["ann@provider.example.org"], b"Subject: a bounce\r\n\r\nx\r\n")
        with smtplib.SMTP("127.0.0.1", ports["2625"]) as s:
            s.sendmail("boss@provider.example.org", ["dave@dialup.example.org"], b"Subject: c\r\n\r\nx\r\n")
        done = smtppeer_command(tmp_path, "poll", "--config", str(dialup.config), "provider")
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert done.stdout.startswith("poll provider: sent 2 messages to 2 recipients, received 1, turned, ")
        assert maildir_count(dave) == 2
        boss = tmp_path / "provider-data" / "mail" / "provider.example.org" / "boss"
        ann = tmp_path / "provider-data" / "mail" / "provider.example.org" / "ann"
        assert maildir_count(boss) == 1 and maildir_count(ann) == 1  # over the SMTP port
        assert not list((tmp_path / "dialup-data" / "spool" / "queue").iterdir())
        assert "ATRN dialup.example.org from dialup: peer dialup" in provider.log()
        assert "502" not in dialup.log()
    finally:
        dialup.stop()
        provider.stop()


def test_a_peer_polled_by_atrn_at_its_only_endpoint_cannot_take_mail(tmp_path):
    """Issue 12's setup: ``method = "atrn"`` with the ODMR port as the only endpoint, and
    mail routed through that peer: refused when the file is read, one line, exit 2."""
    ports = {"2526": free_port(), "2366": free_port(), "2625": free_port(), "2527": free_port()}
    smtp, odmr = (f'endpoint = "tcp:host=127.0.0.1:port={ports[p]}"' for p in ("2526", "2366"))
    odmr_only = {'method = "turn"': 'method = "atrn"', smtp: odmr}
    config = adapt("dialup.toml", tmp_path, ports, odmr_only)
    text = config.read_text()
    config.write_text("\n".join(line for line in text.splitlines() if not line.startswith("odmr_endpoint")))
    make_self_signed(
        "provider.example.org", str(tmp_path / "provider-cert.pem"), str(tmp_path / "provider-key.pem")
    )
    done = smtppeer_command(tmp_path, "check-config", str(config))
    assert done.returncode == 2
    assert done.stderr == (
        f'{config}: routes."*": peer "provider" is polled by ATRN at its endpoint, an ODMR port, which '
        "takes no mail (RFC 2645): give its SMTP port as endpoint and the ODMR port as odmr_endpoint\n"
    )


def test_unknown_user_on_a_listed_domain_is_refused(pair):
    provider, dialup, ports = pair
    provider.start()
    dialup.start()
    with smtplib.SMTP("127.0.0.1", ports["2527"]) as s:
        s.ehlo()
        s.mail("x@provider.example.org")
        code, text = s.rcpt("nobody@dialup.example.org")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert s.rcpt("dave@dialup.example.org")[0] == 250
        assert s.rcpt("postmaster@dialup.example.org")[0] == 250


def test_polls_back_off_while_the_provider_is_down_and_recover(pair, tmp_path):
    provider, dialup, ports = pair
    dialup.start()
    wait_until(lambda: dialup.log().count("backing off") >= 2, what="two failed polls")
    provider.start()
    with smtplib.SMTP("127.0.0.1", ports["2625"]) as s:
        s.sendmail("boss@provider.example.org", ["dave@dialup.example.org"], b"Subject: later\r\n\r\nx\r\n")
    dave = tmp_path / "dialup-data" / "mail" / "dialup.example.org" / "dave"
    wait_until(lambda: maildir_count(dave) == 1, timeout=30, what="delivery after the provider came back")


def test_smtppeer_poll_runs_one_cycle_now_and_prints_the_summary(pair, tmp_path):
    provider, dialup, ports = pair
    text = dialup.config.read_text().replace('interval = "1s"', 'interval = "1h"')
    dialup.config.write_text(text.replace('max_backoff = "3s"', 'max_backoff = "2h"'))
    provider.start()
    dialup.start()
    with smtplib.SMTP("127.0.0.1", ports["2625"]) as s:
        s.sendmail("boss@provider.example.org", ["dave@dialup.example.org"], b"Subject: now\r\n\r\nx\r\n")
    done = smtppeer_command(tmp_path, "poll", "--config", str(dialup.config), "provider")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("poll provider: sent 0 messages to 0 recipients, received 1, turned, ")
    dave = tmp_path / "dialup-data" / "mail" / "dialup.example.org" / "dave"
    assert maildir_count(dave) == 1


def test_outgoing_mail_waits_for_the_next_poll_and_flush_sends_it_now(pair, tmp_path):
    """dialup.toml's ``send = "on-poll"`` (issue 12, item 3): what its users send through the
    provider goes with the next poll, not at once on a connection of its own; ``smtppeer
    queue flush provider`` sends it now all the same."""
    provider, dialup, ports = pair
    text = dialup.config.read_text().replace('interval = "1s"', 'interval = "1h"')
    dialup.config.write_text(
        text.replace('max_backoff = "3s"', 'max_backoff = "2h"').replace("jitter = 0.1", "jitter = 0")
    )
    provider.start()
    dialup.start()  # its first poll is at once, the next in an hour
    wait_until(
        lambda: "poll provider: sent 0 messages to 0 recipients, received 0, turned" in dialup.log(),
        what="the first poll",
    )
    with smtplib.SMTP("127.0.0.1", ports["2527"]) as s:
        s.sendmail("carol@dialup.example.org", ["boss@provider.example.org"], b"Subject: 1\r\n\r\nx\r\n")
    listed = smtppeer_command(tmp_path, "queue", "list", "-c", str(dialup.config))
    assert "    boss@provider.example.org: waiting for the next poll of provider\n" in listed.stdout
    boss = tmp_path / "provider-data" / "mail" / "provider.example.org" / "boss"
    assert maildir_count(boss) == 0 and "session with tcp:" not in dialup.log()  # no connection of its own
    polled = smtppeer_command(tmp_path, "poll", "-c", str(dialup.config), "provider")
    assert polled.stdout.startswith("poll provider: sent 1 message to 1 recipient, received 0, turned, "), (
        polled
    )
    assert maildir_count(boss) == 1
    with smtplib.SMTP("127.0.0.1", ports["2527"]) as s:
        s.sendmail("carol@dialup.example.org", ["boss@provider.example.org"], b"Subject: 2\r\n\r\nx\r\n")
    flushed = smtppeer_command(tmp_path, "queue", "flush", "-c", str(dialup.config), "provider")
    assert (flushed.returncode, flushed.stdout) == (0, "1 recipients will be tried now\n")
    wait_until(lambda: maildir_count(boss) == 2, what="the flushed message at the provider")
    assert dialup.log().count("poll provider: sent") == 2  # the first poll and ours: no other
    wait_until(lambda: not list((tmp_path / "dialup-data" / "spool" / "queue").iterdir()), what="spool empty")
