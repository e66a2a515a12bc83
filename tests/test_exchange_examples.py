"""The example configurations, run as real twistd processes: a dial-up host polls its
provider over verified STARTTLS with AUTH, by TURN and by ATRN."""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from smtppeer.peer.tls import make_self_signed

from .conftest import REPO, TWISTD, free_port, wait_for_port, wait_until

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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def maildir_count(path: Path) -> int:
    new = path / "new"
    return len(list(new.iterdir())) if new.is_dir() else 0


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


def test_atrn_poll_to_the_odmr_port(tmp_path):
    """The same pair with ``method = "atrn"``: log in on the ODMR port, ATRN, receive."""
    make_self_signed(
        "provider.example.org", str(tmp_path / "provider-cert.pem"), str(tmp_path / "provider-key.pem")
    )
    ports = {"2526": free_port(), "2366": free_port(), "2625": free_port(), "2527": free_port()}
    atrn = {
        'method = "turn"': 'method = "atrn"',
        f"port={ports['2526']}": f"port={ports['2366']}",
        'interval = "5m"': 'interval = "1s"',
    }
    provider = Proc(tmp_path, adapt("provider.toml", tmp_path, ports), ports["2526"])
    dialup = Proc(tmp_path, adapt("dialup.toml", tmp_path, ports, atrn), ports["2527"])
    try:
        provider.start()
        with smtplib.SMTP("127.0.0.1", ports["2625"]) as s:
            s.sendmail("boss@provider.example.org", ["dave@dialup.example.org"], b"Subject: a\r\n\r\nx\r\n")
            s.sendmail("boss@provider.example.org", ["carol@dialup.example.org"], b"Subject: b\r\n\r\nx\r\n")
        dialup.start()  # the first poll is at once
        carol = tmp_path / "dialup-data" / "mail" / "dialup.example.org" / "carol"
        dave = tmp_path / "dialup-data" / "mail" / "dialup.example.org" / "dave"
        wait_until(lambda: maildir_count(carol) == 1 and maildir_count(dave) == 1, what="mail by ATRN")
        wait_until(lambda: ", turned, " in dialup.log(), what="the poll's log line")
        assert "ATRN dialup.example.org,.dialup.example.org from dialup: peer dialup" in provider.log()
    finally:
        dialup.stop()
        provider.stop()


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
    done = subprocess.run(
        [sys.executable, "-m", "smtppeer", "poll", "--config", str(dialup.config), "provider"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    summary = done.stdout.decode()
    assert summary.startswith("poll provider: sent 0 messages to 0 recipients, received 1, turned, ")
    dave = tmp_path / "dialup-data" / "mail" / "dialup.example.org" / "dave"
    assert maildir_count(dave) == 1
