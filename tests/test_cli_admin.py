"""The admin commands against a running twistd service: send, queue ..., poll."""

from __future__ import annotations

import email
import email.policy
import email.utils
import json
import os
import re
import subprocess

from .conftest import REPO, TWISTD, free_port, smtppeer, wait_for_port, wait_until

MESSAGE = b"From: me@localhost\nTo: u@localhost\nSubject: from the command line\n\n.dot\nbody\n"


def test_send_delivers_locally_and_queues_for_relay(twistd_peer):
    peer = twistd_peer("--route", "far.test=tcp:host=127.0.0.1:port=9", "--retry-interval", "3600")
    data = str(peer.data_dir)
    done = smtppeer("send", "-d", data, "-f", "me@localhost", "u@localhost", "x@far.test", stdin=MESSAGE)
    assert done.returncode == 0, done.stderr
    queue_id = done.stdout.decode().split()[-1]
    [path] = wait_until(lambda: list((peer.maildir("localhost", "u") / "new").glob("*")), what="delivery")
    raw = path.read_bytes()
    assert raw.startswith(b"Return-Path: <me@localhost>\r\nReceived: from localhost (local)")
    assert raw.endswith(b"\r\n\r\n.dot\r\nbody\r\n")  # CRLF, dot kept
    assert b"\r\nFrom: me@localhost\r\nTo: u@localhost\r\nSubject: from the command line\r\n" in raw
    # the relayed copy waits: queue list says why
    wait_until(lambda: "attempts" in smtppeer("queue", "list", "-d", data).stdout.decode(), what="an attempt")
    listing = smtppeer("queue", "list", "-d", data).stdout.decode()
    assert queue_id in listing and "x@far.test: deferred after 1 attempts" in listing
    shown = smtppeer("queue", "show", "-d", data, queue_id)
    assert (
        shown.returncode == 0 and json.loads(shown.stdout.decode().split("\n}\n")[0] + "}")["id"] == queue_id
    )


def test_hold_release_flush_delete(twistd_peer):
    peer = twistd_peer("--route", "far.test=tcp:host=127.0.0.1:port=9", "--retry-interval", "3600")
    data = str(peer.data_dir)
    queue_id = smtppeer("send", "-d", data, "x@far.test", stdin=MESSAGE).stdout.decode().split()[-1]
    held = smtppeer("queue", "hold", "-d", data, queue_id)
    assert (held.returncode, held.stdout.decode()) == (0, f"{queue_id}: held\n")
    assert "(on hold)" in smtppeer("queue", "list", "-d", data).stdout.decode()
    released = smtppeer("queue", "-d", data, "release", queue_id)  # -d before the queue command too
    assert (released.returncode, released.stdout.decode()) == (0, f"{queue_id}: released\n")
    assert "(on hold)" not in smtppeer("queue", "list", "-d", data).stdout.decode()
    flushed = smtppeer("queue", "flush", "-d", data)
    assert flushed.returncode == 0 and "will be tried now" in flushed.stdout.decode()
    deleted = wait_until(
        lambda: (done := smtppeer("queue", "delete", "-d", data, queue_id)).returncode == 0 and done,
        what="delete",
    )
    assert deleted.stdout.decode() == f"{queue_id}: deleted\n"
    assert smtppeer("queue", "list", "-d", data).stdout.decode() == "Mail queue is empty\n"
    assert not list((peer.data_dir / "spool" / "queue").glob(f"{queue_id}.*"))
    missing = smtppeer("queue", "hold", "-d", data, queue_id)
    assert missing.returncode == 1 and b"no message" in missing.stderr


def test_send_refuses_an_unroutable_recipient(twistd_peer):
    peer = twistd_peer()
    done = smtppeer("send", "-d", str(peer.data_dir), "x@nowhere.test", stdin=MESSAGE)
    assert done.returncode == 1 and b"5.7.1" in done.stderr


def test_send_with_recipients_from_the_headers_drops_bcc(twistd_peer):
    peer = twistd_peer()
    message = b"To: a@localhost\nCc: b@localhost\nBcc: c@localhost\nSubject: t\n\nx\n"
    done = smtppeer("send", "-d", str(peer.data_dir), "-t", stdin=message)
    assert done.returncode == 0, done.stderr
    for user in ("a", "b", "c"):
        [path] = wait_until(lambda u=user: list((peer.maildir("localhost", u) / "new").glob("*")), what=user)
        assert b"Bcc:" not in path.read_bytes()


def test_commands_that_change_the_queue_need_a_running_service(tmp_path):
    done = smtppeer("queue", "flush", "-d", str(tmp_path))
    assert done.returncode == 1 and b"no smtppeer service is running" in done.stderr
    listing = smtppeer("queue", "list", "-d", str(tmp_path))
    assert listing.returncode == 0 and listing.stdout == b"Mail queue is empty\n"
    assert not (tmp_path / "spool").exists()  # looking made nothing
    missing = smtppeer("queue", "list", "-d", str(tmp_path / "nowhere"))
    assert (
        missing.returncode == 1
        and missing.stderr.decode() == f"smtppeer queue list: no data directory {tmp_path / 'nowhere'}\n"
    )


def test_poll_without_schedules_says_so(twistd_peer):
    peer = twistd_peer()
    done = smtppeer("poll", "-d", str(peer.data_dir), "provider")
    assert done.returncode == 1 and b"no poll schedules" in done.stderr


def test_json_log_lines_with_queue_ids(twistd_peer, tmp_path):
    config = tmp_path / "json.toml"
    config.write_text('json_log = true\n[domains."localhost"]\n')
    peer = twistd_peer("--config", str(config))
    done = smtppeer("send", "-d", str(peer.data_dir), "u@localhost", stdin=MESSAGE)
    queue_id = done.stdout.decode().split()[-1]
    log_file = peer.data_dir / "smtppeer.log.jsonl"
    events = wait_until(
        lambda: [json.loads(line) for line in log_file.read_text().splitlines() if queue_id in line],
        what="the JSON log line",
    )
    assert any(e.get("queue_id") == queue_id and "accepted" in e.get("line", "") for e in events)
    every = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert_documented(every)


DOCUMENTED = {"time", "level", "namespace", "text", "failure"}


def assert_documented(events: list[dict]) -> None:
    """Only the documented fields: the five, and smtppeer's own scalar fields (README, Operations)."""
    assert events
    for event in events:
        assert {"time", "level", "namespace", "text"} <= set(event), event
        assert isinstance(event["time"], float) and event["level"] in (
            "debug",
            "info",
            "warn",
            "error",
            "critical",
        )
        extra = set(event) - DOCUMENTED
        assert not extra or event["namespace"].startswith("smtppeer"), event
        assert not any(key.startswith("log_") for key in event), event
        assert all(v is None or isinstance(v, str | int | float | bool) for v in event.values()), event
        assert "unpersistable" not in json.dumps(event) and "__class_uuid__" not in json.dumps(event)


def test_twistd_logger_option_gives_json_lines(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            *TWISTD,
            "--logger",
            "smtppeer.service.logs.json_lines",
            "-n",
            "--pidfile=",
            "smtppeer",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert_documented(lines)
    assert any(e["namespace"].startswith("smtppeer") and "listening on" in e["text"] for e in lines)


def test_queue_list_totals_as_mailq_does(twistd_peer):
    peer = twistd_peer("--route", "far.test=tcp:host=127.0.0.1:port=9", "--retry-interval", "1h")
    data = str(peer.data_dir)
    assert smtppeer("queue", "list", "-d", data).stdout.decode() == "Mail queue is empty\n"
    smtppeer("send", "-d", data, "x@far.test", "y@far.test", stdin=MESSAGE)
    smtppeer("send", "-d", data, "z@far.test", stdin=MESSAGE + (b"x" * 78 + b"\n") * 26)  # 2 KB more
    listing = smtppeer("queue", "list", "-d", data).stdout.decode().splitlines()
    assert listing[-1] == "-- 3 Kbytes in 2 messages, 3 recipients."
    assert sum(1 for line in listing if line.startswith("    ")) == 3


def test_queue_help_and_misplaced_options():
    helped = smtppeer("queue", "list", "--help").stdout.decode()
    assert helped.startswith("Usage: smtppeer queue list [-c FILE | -d DIR]\n")
    assert "python -m smtppeer" not in helped  # not __main__'s docstring
    helped = smtppeer("queue", "--help").stdout.decode()
    assert helped.startswith("Usage: smtppeer queue [-c FILE | -d DIR] list | show ID |")
    assert "--data-dir" in helped and "--config" in helped
    early = smtppeer("-d", "/srv/mail", "queue", "list")
    assert early.returncode == 64
    assert early.stderr.decode().startswith(
        "smtppeer: -d/--data-dir goes after the command, e.g. 'smtppeer queue list -d /srv/mail'\n"
    )
    no_id = smtppeer("queue", "hold", "-d", "/srv/mail")
    assert no_id.returncode == 64 and "give a queue ID" in no_id.stderr.decode()


def test_options_go_before_or_after_the_arguments(twistd_peer):
    peer = twistd_peer("--route", "far.test=tcp:host=127.0.0.1:port=9", "--retry-interval", "1h")
    data = str(peer.data_dir)
    sent = smtppeer("send", "x@far.test", "-d", data, "y@far.test", stdin=MESSAGE)
    assert sent.returncode == 0, sent.stderr
    queue_id = sent.stdout.decode().split()[-1]
    shown = smtppeer("queue", "show", queue_id, "--data-dir", data)
    assert shown.returncode == 0 and b"x@far.test" in shown.stdout
    wrong = smtppeer("queue", "list", "surplus", "-d", data)
    assert wrong.returncode == 64
    assert wrong.stderr.decode().splitlines() == [
        "smtppeer queue list: Wrong number of arguments.",
        "Try 'smtppeer queue list --help'.",
    ]


def test_send_adds_from_date_and_message_id(twistd_peer):
    peer = twistd_peer()
    done = smtppeer(
        "send", "-d", str(peer.data_dir), "-f", "me@localhost", "u@localhost", stdin=b"just a body\n"
    )
    assert done.returncode == 0, done.stderr
    [path] = wait_until(lambda: list((peer.maildir("localhost", "u") / "new").glob("*")), what="delivery")
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["From"] == "me@localhost"
    assert email.utils.parsedate_to_datetime(message["Date"]).tzinfo is not None
    assert re.fullmatch(r"<[^<>@]+@[^<>@]+>", message["Message-ID"])
    assert message.get_content() == "just a body\r\n"  # (CRLF on disk)
    # what the message has is kept, and nothing is added twice
    given = b"From: Someone <s@localhost>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <a@b>\n\nhi\n"
    assert smtppeer("send", "-d", str(peer.data_dir), "v@localhost", stdin=given).returncode == 0
    [path] = wait_until(lambda: list((peer.maildir("localhost", "v") / "new").glob("*")), what="delivery")
    raw = path.read_bytes()
    assert raw.endswith(given.replace(b"\n", b"\r\n"))
    assert raw.count(b"\r\nDate:") == 1 and raw.count(b"\r\nMessage-ID:") == 1
