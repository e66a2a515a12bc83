"""``metrics = ENDPOINT`` (``--metrics``): ``twistd smtppeer`` serves Prometheus metrics.

A real twistd process takes real mail (smtplib); its ``/metrics`` is scraped
with urllib and read with prometheus_client's own parser.  The key and the
option share one check, as every key and option do (``test_options.py``).
The lab's metrics are tested with the rest of its HTTP API (``test_lab_web.py``),
a metrics port in use with the other start-up failures (``test_startup.py``).
"""

from __future__ import annotations

import smtplib
import urllib.error
import urllib.request

import pytest

from smtppeer.service.configfile import ConfigError, loads_config
from smtppeer.service.options import Options

from .conftest import free_port, wait_for_port, wait_until
from .test_cli_admin import smtppeer
from .test_lab_web import Scrape


def scrape(port: int, path: str = "/metrics") -> tuple[int, str | None, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers["content-type"], e.read().decode()


def test_twistd_serves_the_metrics_of_the_mail_it_handles(twistd_peer):
    port, unreachable = free_port(), free_port()
    peer = twistd_peer(
        "--metrics", f"tcp:{port}:interface=127.0.0.1",
        "--domain", "peer.test",
        "--route", f"far.test=tcp:host=127.0.0.1:port={unreachable}",  # nobody there: deferred
    )  # fmt: skip
    wait_for_port(port, peer.proc)
    with smtplib.SMTP("127.0.0.1", peer.port, timeout=20) as client:
        client.sendmail("a@x.test", ["u@peer.test"], b"Subject: local\r\n\r\nhi\r\n")
        client.sendmail("a@x.test", ["v@far.test"], b"Subject: relayed\r\n\r\nhi\r\n")
        client.sendmail("a@x.test", ["w@far.test"], b"Subject: frozen\r\n\r\nhi\r\n")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@x.test", ["w@nowhere.test"], b"Subject: refused\r\n\r\nhi\r\n")

    def deferred() -> Scrape | None:
        metrics = Scrape(scrape(port)[2])
        return metrics if metrics("smtppeer_deliveries_total", host="peer.test", outcome="deferred") else None

    metrics = wait_until(deferred, what="the relayed messages deferred")
    assert metrics("smtppeer_received_total", host="peer.test") == 3
    assert metrics("smtppeer_refused_total", host="peer.test", stage="rcpt") == 1
    assert metrics("smtppeer_deliveries_total", host="peer.test", outcome="delivered") == 0
    assert metrics("smtppeer_queue_messages", host="peer.test", state="held") == 0

    # an administrator holds one back: it is counted as frozen, not pending
    [frozen] = [
        p.stem for p in (peer.data_dir / "spool" / "queue").glob("*.json") if b"w@far" in p.read_bytes()
    ]
    assert smtppeer("queue", "hold", "-d", str(peer.data_dir), frozen).returncode == 0
    metrics = Scrape(scrape(port)[2])
    assert metrics("smtppeer_queue_messages", host="peer.test", state="frozen") == 1
    assert metrics("smtppeer_queue_messages", host="peer.test", state="pending") == 1
    assert metrics("smtppeer_delivery_latency_seconds_count", host="peer.test") == 0
    assert metrics("process_open_fds") > 0

    status, content_type, _ = scrape(port)
    assert (status, content_type) == (200, "text/plain; version=0.0.4; charset=utf-8")
    status, _, body = scrape(port, "/other")
    assert (status, body) == (404, "not found: try /metrics\n")
    assert f"metrics at http://127.0.0.1:{port}/metrics" in peer.log()


def from_options(*argv: str):
    options = Options()
    options.parseOptions(list(argv))
    return options.config


def test_the_key_and_the_option():
    assert loads_config("").metrics is None
    assert loads_config('metrics = "tcp:9101:interface=127.0.0.1"').metrics == "tcp:9101:interface=127.0.0.1"
    assert from_options("--metrics", "tcp:9102").metrics == "tcp:9102"
    assert from_options().metrics is None


def test_the_option_is_laid_over_the_file(tmp_path):
    config = tmp_path / "smtppeer.toml"
    config.write_text('metrics = "tcp:9101:interface=127.0.0.1"\n')
    assert from_options("--config", str(config)).metrics == "tcp:9101:interface=127.0.0.1"
    assert from_options("--config", str(config), "--metrics", "tcp:9102").metrics == "tcp:9102"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope:1", "\"nope:1\" is not a server endpoint description (Unknown endpoint type: 'nope')"),
        ("tcp:port=x", '"tcp:port=x" is not a server endpoint description'),
    ],
)
def test_a_bad_endpoint_is_one_line_from_the_file_and_the_option(capsys, text, message):
    with pytest.raises(ConfigError) as raised:
        loads_config(f'metrics = "{text}"', "smtppeer.toml")
    assert str(raised.value).startswith(f"smtppeer.toml: metrics: {message}")
    with pytest.raises(SystemExit) as exited:
        from_options("--metrics", text)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"--metrics {message}") and err.count("\n") == 1


def test_not_a_string_is_one_line():
    with pytest.raises(ConfigError) as raised:
        loads_config("metrics = 9101", "smtppeer.toml")
    assert str(raised.value) == "smtppeer.toml: metrics: expected a string, got an integer (9101)"


def test_the_metrics_count_the_mail_of_worker_processes_too(twistd_peer):
    """``--processes 2``: a worker takes sessions on its own socket; what it receives
    and refuses reaches the service's ``/metrics`` over the workers' pipe."""
    from .test_processes import queue_id_pids, workers_of

    port = free_port()
    peer = twistd_peer(
        "--processes", "2", "--metrics", f"tcp:{port}:interface=127.0.0.1", "--domain", "peer.test"
    )
    wait_for_port(port, peer.proc)
    wait_until(lambda: len(workers_of(peer.proc.pid)) == 1, what="the worker process")
    wait_until(lambda: "accepting on" in peer.log(), what="the worker to accept")
    sent = refused = 0
    box = peer.maildir("peer.test", "u")
    for n in range(200):  # SO_REUSEPORT spreads sessions: bounded, until both processes had some
        with smtplib.SMTP("127.0.0.1", peer.port, timeout=20) as client:
            client.sendmail("a@x.test", ["u@peer.test"], f"Subject: {n}\r\n\r\nhi\r\n".encode())
            sent += 1
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("a@x.test", ["w@nowhere.test"], b"Subject: refused\r\n\r\nhi\r\n")
            refused += 1
        if sent >= 10 and len(queue_id_pids(box)) == 2:
            break
    assert len(queue_id_pids(box)) == 2, "the worker took no session"

    def counted() -> Scrape | None:
        metrics = Scrape(scrape(port)[2])
        return metrics if metrics("smtppeer_received_total", host="peer.test") == sent else None

    metrics = wait_until(counted, what=f"{sent} messages counted")
    assert metrics("smtppeer_refused_total", host="peer.test", stage="rcpt") == refused
    assert "unreadable" not in peer.log()
