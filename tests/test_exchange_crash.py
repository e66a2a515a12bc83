"""Poll-and-exchange under SIGKILL, and a three-host setup, with the example configs as real twistd processes.

The provider (``examples/provider.toml``) holds mail for ``dialup.example.org``;
the dial-up host (``examples/dialup.toml``, polling every second) sends what it
has queued for the world, says TURN and receives the held mail on the same
connection.  Messages are submitted on both sides in waves while the provider
and the dial-up host are killed in turn with SIGKILL, at seeded random points:
after k of the messages in transit have arrived on one side, or after a random
delay.  Each is restarted on the same ports and data directory; then the test
waits (bounded) until both spools are empty.

Every message a host answered with ``250`` must be in each of its final
Maildirs at least once, byte for byte behind the trace headers; duplicates
(a transfer cut off between the receiver's ``250`` and the sender's record of
it) are allowed and counted; nothing else may appear in any Maildir.

Ports are taken below the kernel's ephemeral range: a poll that connects to the
provider's port while the provider is down could otherwise get that very port
as its own and connect to itself, keeping the provider from listening again.

Set ``SMTPPEER_EXCHANGE_SEED`` to replay a run's kill points and message contents
(the interleaving with the processes still depends on timing).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import smtplib
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtppeer.peer.tls import make_self_signed

from .conftest import REPO, wait_until
from .test_exchange_examples import Proc

pytestmark = pytest.mark.slow

EXAMPLES = REPO / "examples"
PROVIDER, DIALUP, DIALUP2 = "provider.example.org", "dialup.example.org", "dialup2.example.org"
SHORT_POLLS = [('interval = "5m"', 'interval = "1s"'), ('max_backoff = "1h"', 'max_backoff = "2s"')]

ROUNDS = 8  # kills, alternating provider / dial-up host
INITIAL = 15  # messages each way before the first kill
WAVE = 3  # messages each way before each kill (both hosts up)
DOWNTIME = 1  # messages to the surviving host while the other one is down
SETTLE = 45.0  # seconds to wait for both spools to empty at the end

# held at the provider for the dial-up host: (recipients, the Maildirs they end in on the dial-up host)
DOWN_KINDS = [
    (["carol"], ["carol"]),
    (["dave"], ["dave"]),
    (["everyone"], ["carol", "dave"]),  # an alias on the dial-up host
    (["postmaster"], ["carol"]),
    (["carol", "dave"], ["carol", "dave"]),
]
# queued at the dial-up host for the provider's (catch-all) domain
UP_KINDS = [(["boss"], ["boss"]), (["ann"], ["ann"]), (["boss", "ann"], ["boss", "ann"])]
DOWN_SENDER, UP_SENDER = f"sender@{PROVIDER}", f"carol@{DIALUP}"

_TEXT = b"abcdefghijklmnopqrstuvwxyz .0123456789"
ALPHABET = bytes(_TEXT[i % len(_TEXT)] for i in range(256))
SUBJECT = re.compile(rb"^Subject: xchg (\S+)\r$", re.M)
TRACE = re.compile(rb"^(Return-Path:|Received:|[ \t])")


# -- processes ----------------------------------------------------------------------


def low_port(taken: set[int]) -> int:
    """A free loopback port below the ephemeral range (no TCP self-connect while its owner is down)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(10000, low)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def lab_certificate(tmp: Path) -> None:
    """The provider's certificate, made as the provider example's header says."""
    make_self_signed("provider.example.org", str(tmp / "provider-cert.pem"), str(tmp / "provider-key.pem"))


def derive(
    source: str, tmp: Path, name: str, ports: dict[str, int], replacements: list[tuple[str, str]] = ()
) -> Path:
    """An example config with ``replacements`` applied in order (each must apply), then the test's
    ``ports`` for the example's, written to ``tmp``."""
    text = (EXAMPLES / source).read_text()
    for old, new in replacements:
        assert old in text, f"{source}: {old!r} not found"
        text = text.replace(old, new)
    # one pass: a new port number may contain an old one ("12527")
    text = re.sub(r"\b(" + "|".join(ports) + r")\b", lambda m: str(ports[m.group()]), text)
    path = tmp / name
    path.write_text(text)
    return path


class Host(Proc):
    """A ``Proc`` that can be killed and restarted on the same port and data directory."""

    def __init__(self, tmp: Path, config: Path, port: int, data_dir: str) -> None:
        super().__init__(tmp, config, port)
        self.data = tmp / data_dir
        self.starts = 0

    def start(self) -> Host:
        self.starts += 1
        try:
            return super().start()
        except Exception:
            self.kill()
            raise RuntimeError(f"{self.config.name} did not start:\n{self.log()[-3000:]}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def maildir(self, domain: str, user: str) -> Path:
        return self.data / "mail" / domain / user

    def queued(self) -> list[str]:
        queue = self.data / "spool" / "queue"
        return sorted(p.name for p in queue.iterdir()) if queue.is_dir() else []

    def polls(self) -> int:
        return self.log().count("poll provider: sent")

    def wait_for_polls(self, more: int = 2) -> None:
        """Until this dial-up host has logged ``more`` polls from now (with two, at least
        one whole poll began after this call)."""
        start = self.polls()
        wait_until(
            lambda: self.polls() >= start + more, timeout=15, what=f"{more} more polls by {self.config.name}"
        )


def maildir_files(maildir: Path) -> list[Path]:
    return [
        p for sub in ("new", "cur") if (maildir / sub).is_dir() for p in sorted((maildir / sub).iterdir())
    ]


def all_maildirs(host: Host) -> list[Path]:
    root = host.data / "mail"
    return sorted(p for p in root.glob("*/*") if p.is_dir()) if root.is_dir() else []


# -- messages -----------------------------------------------------------------------


@dataclass
class Message:
    token: str
    sender: str
    rcpts: list[str]  # envelope recipients
    boxes: list[Path]  # the Maildirs it must end in
    data: bytes
    acked: bool = False
    detail: str = ""


def make_message(rng: random.Random, token: str, sender: str, rcpts: list[str], boxes: list[Path]) -> Message:
    lines = [
        f"From: <{sender}>",
        "To: " + ", ".join(f"<{r}>" for r in rcpts),
        f"Subject: xchg {token}",
        f"Message-ID: <{token}@exchange.test>",
        "",
        f"token {token}",
        ".a line that needs dot-stuffing",
        ".",
        "..",
    ]
    size = 300 * 1024 if rng.random() < 0.1 else rng.randint(200, 40000)  # some streamed to disk
    text = rng.randbytes(size).translate(ALPHABET)
    pos = 0
    while pos < len(text):
        width = rng.randint(0, 998)
        lines.append(text[pos : pos + width].decode())
        pos += width
    lines.append(f"end {token}")
    return Message(token, sender, rcpts, boxes, ("\r\n".join(lines) + "\r\n").encode())


def submit(port: int, messages: list[Message]) -> None:
    """One session; a message is acknowledged when every recipient and the data got ``250``."""
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="submit.test", timeout=15) as s:
            for m in messages:
                try:
                    refused = s.sendmail(m.sender, m.rcpts, m.data)
                except smtplib.SMTPResponseException as e:
                    m.detail = f"{e.smtp_code} {e.smtp_error!r}"
                    s.rset()
                    continue
                except smtplib.SMTPRecipientsRefused as e:
                    m.detail = f"refused {e.recipients!r}"
                    continue
                m.acked = not refused
                m.detail = f"refused {refused!r}" if refused else "250"
    except (OSError, smtplib.SMTPException) as e:
        for m in messages:
            if not m.detail:
                m.detail = f"session failed: {e!r}"


def check_maildirs(hosts: list[Host], messages: list[Message]) -> tuple[Counter[tuple[str, Path]], list[str]]:
    """How often each (token, Maildir) was delivered; and every file that is not one of ours, intact."""
    by_token = {m.token: m for m in messages}
    delivered: Counter[tuple[str, Path]] = Counter()
    bad: list[str] = []
    for host in hosts:
        for maildir in all_maildirs(host):
            for path in maildir_files(maildir):
                raw = path.read_bytes()
                found = SUBJECT.search(raw)
                m = by_token.get(found.group(1).decode()) if found else None
                if m is None:
                    bad.append(f"{path}: no known token ({len(raw)} octets): {raw[:300]!r}")
                    continue
                head = raw[: len(raw) - len(m.data)]
                if not raw.endswith(m.data) or not head.startswith(f"Return-Path: <{m.sender}>\r\n".encode()):
                    bad.append(f"{path}: {m.token} is not the message sent ({len(raw)} octets)")
                elif not all(TRACE.match(line) for line in head.split(b"\r\n")[:-1]):
                    bad.append(f"{path}: {m.token} has something besides trace headers in front")
                elif maildir not in m.boxes:
                    bad.append(f"{path}: {m.token} does not belong in this Maildir")
                else:
                    delivered[m.token, maildir] += 1
    return delivered, bad


def present(boxes) -> Counter[tuple[str, Path]]:
    """(token, Maildir) of the files there, from their headers only: cheap enough to poll."""
    counts: Counter[tuple[str, Path]] = Counter()
    for box in boxes:
        for path in maildir_files(box):
            with open(path, "rb") as f:
                found = SUBJECT.search(f.read(8192))
            if found:
                counts[found.group(1).decode(), box] += 1
    return counts


def file_count(boxes: list[Path]) -> int:
    return sum(len(os.listdir(b / "new")) for b in boxes if (b / "new").is_dir())


# -- 1. kills in the middle of exchanges ------------------------------------------------


def wait_for_kill_point(rng: random.Random, direction: str, boxes: list, before: int) -> str:
    """Wait for the moment to kill: a random time, or until 1-3 more messages have
    arrived in that direction (bounded); say which it was, for the report."""
    if direction == "time":
        delay = rng.uniform(0.0, 1.2)
        time.sleep(delay)
        return f"after {delay:.2f}s"
    k = rng.randint(1, 3)
    deadline = time.monotonic() + 6
    while file_count(boxes) < before + k and time.monotonic() < deadline:
        time.sleep(0.002)
    late = "" if file_count(boxes) >= before + k else " (timed out)"
    return f"after {k} more arrived {direction}{late}"


def test_sigkill_provider_and_poller_mid_exchange_loses_nothing(tmp_path):
    seed = int(os.environ.get("SMTPPEER_EXCHANGE_SEED") or random.SystemRandom().randrange(1, 2**31))
    print(f"\nexchange-crash seed {seed} (SMTPPEER_EXCHANGE_SEED={seed} to replay)")
    rng = random.Random(seed)
    started = time.monotonic()

    taken: set[int] = set()
    ports = {p: low_port(taken) for p in ("2526", "2366", "2625", "2527")}
    lab_certificate(tmp_path)
    provider = Host(
        tmp_path,
        derive("provider.toml", tmp_path, "provider.toml", ports),
        ports["2625"],  # where the world's mail comes in (the customers' port wants STARTTLS)
        "provider-data",
    )
    dialup = Host(
        tmp_path,
        derive("dialup.toml", tmp_path, "dialup.toml", ports, SHORT_POLLS),
        ports["2527"],
        "dialup-data",
    )
    hosts = {"provider": provider, "dialup": dialup}
    down_boxes = {u: dialup.maildir(DIALUP, u) for u in ("carol", "dave")}
    up_boxes = {u: provider.maildir(PROVIDER, u) for u in ("boss", "ann")}
    down: list[Message] = []  # submitted to the provider, held for the dial-up host
    up: list[Message] = []  # submitted to the dial-up host, for the provider's domain

    def new_down(n: int) -> list[Message]:
        out = []
        for _ in range(n):
            rcpts, boxes = DOWN_KINDS[len(down) % len(DOWN_KINDS)]
            token = f"down{len(down):02d}-{rng.getrandbits(32):08x}"
            m = make_message(
                rng, token, DOWN_SENDER, [f"{r}@{DIALUP}" for r in rcpts], [down_boxes[b] for b in boxes]
            )
            down.append(m)
            out.append(m)
        return out

    def new_up(n: int) -> list[Message]:
        out = []
        for _ in range(n):
            rcpts, boxes = UP_KINDS[len(up) % len(UP_KINDS)]
            token = f"up{len(up):02d}-{rng.getrandbits(32):08x}"
            m = make_message(
                rng, token, UP_SENDER, [f"{r}@{PROVIDER}" for r in rcpts], [up_boxes[b] for b in boxes]
            )
            up.append(m)
            out.append(m)
        return out

    def outstanding(messages: list[Message]) -> int:
        """Acknowledged messages not yet in all their Maildirs."""
        counts = present({b for m in messages for b in m.boxes})
        return sum(1 for m in messages if m.acked and any(not counts[m.token, b] for b in m.boxes))

    kills: list[str] = []
    try:
        provider.start()
        submit(provider.port, new_down(INITIAL))
        dialup.start()  # its first poll comes within a tenth of a second
        submit(dialup.port, new_up(INITIAL))
        for n in range(ROUNDS):
            victim_name = "provider" if n % 2 == 0 else "dialup"
            victim = hosts[victim_name]
            survivor = dialup if victim is provider else provider
            if n:  # the first round cuts into the initial load
                wave_down, wave_up = new_down(WAVE), new_up(WAVE)
                direction = rng.choice(["down", "up", "time"])
                before = {
                    "down": file_count(list(down_boxes.values())),
                    "up": file_count(list(up_boxes.values())),
                }
                # the dial-up host relays its new mail at once, the provider's goes down on the next poll
                first, second = (provider, dialup) if direction == "up" else (dialup, provider)
                submit(first.port, wave_down if first is provider else wave_up)
                submit(second.port, wave_down if second is provider else wave_up)
            else:
                direction = rng.choice(["down", "up"])
                before = {"down": 0, "up": 0}
            boxes = list((down_boxes if direction == "down" else up_boxes).values())
            point = wait_for_kill_point(rng, direction, boxes, before.get(direction, 0))
            victim.kill()
            kills.append(f"{victim_name} {point}: outstanding down {outstanding(down)}, up {outstanding(up)}")
            time.sleep(rng.uniform(0.1, 0.8))
            if victim is provider:  # queued on the dial-up host while the provider is down
                submit(survivor.port, new_up(DOWNTIME))
            else:  # held at the provider while the dial-up host is down
                submit(survivor.port, new_down(DOWNTIME))
            victim.start()

        def settled() -> bool:
            if provider.queued() or dialup.queued():
                return False
            counts = present([*down_boxes.values(), *up_boxes.values()])
            return all(counts[m.token, b] for m in down + up if m.acked for b in m.boxes)

        wait_until(
            settled,
            timeout=SETTLE,
            what="both spools empty and every acknowledged message delivered",
            detail=lambda: (
                f"provider queue {provider.queued()[:9]}, dial-up queue {dialup.queued()[:9]}\n"
                f"--- provider log ---\n{provider.log()[-4000:]}\n--- dial-up log ---\n{dialup.log()[-4000:]}"
            ),
        )
        dialup.wait_for_polls()  # one more whole poll: late duplicates, if any, show up too
    finally:
        dialup.stop()
        provider.stop()

    delivered, bad = check_maildirs([provider, dialup], down + up)
    lost = [(m.token, str(b)) for m in down + up if m.acked for b in m.boxes if not delivered[m.token, b]]
    unacked_delivered = [
        m.token for m in down + up if not m.acked and any(delivered[m.token, b] for b in m.boxes)
    ]
    leftovers = {
        name: host.queued() + sorted(p.name for p in (host.data / "spool" / "incoming").iterdir())
        for name, host in hosts.items()
    }

    def stats(messages: list[Message]) -> str:
        pairs = [(m.token, b) for m in messages if m.acked for b in m.boxes]
        copies = sum(delivered[p] for p in pairs)
        dups = sum(delivered[p] - 1 for p in pairs if delivered[p] > 1)
        return (
            f"{len(messages)} submitted, {sum(m.acked for m in messages)} acknowledged, "
            f"{len(pairs)} Maildir deliveries due, {copies} files, {dups} duplicates"
        )

    dlog = dialup.log()
    poll_line = (
        r"poll provider: sent \d+ messages? to \d+ recipients?, "
        r"received (\d+), (.*?), [\d.]+s, (ok|failed: .*)"
    )
    polls = re.findall(poll_line, dlog)
    broken = [p for p in polls if p[2] != "ok" and "cannot connect" not in p[2]]
    print(
        f"exchange-crash: {len(kills)} kills ({sum(k.startswith('provider') for k in kills)} provider, "
        f"{sum(k.startswith('dialup') for k in kills)} dial-up host):"
    )
    for line in kills:
        print(f"  kill {line}")
    print(f"  provider -> dial-up (held, released on TURN): {stats(down)}")
    print(f"  dial-up -> provider: {stats(up)}")
    print(
        f"  dial-up host started {dialup.starts} times, provider {provider.starts} times; "
        f"polls logged {len(polls)}, of them cut off mid-exchange {len(broken)}, refused "
        f"{sum('cannot connect' in p[2] for p in polls)}; lost {len(lost)}, corrupt or stray {len(bad)}, "
        f"delivered without 250 {len(unacked_delivered)}; {time.monotonic() - started:.1f}s"
    )
    assert len(kills) == ROUNDS
    assert not bad, "corrupt or unexpected Maildir files:\n" + "\n".join(bad[:20])
    assert not lost, f"acknowledged but never delivered: {lost[:20]}"
    assert not unacked_delivered, f"delivered although never acknowledged: {unacked_delivered[:20]}"
    assert not any(leftovers.values()), f"left in a spool: {leftovers}"
    assert sum(m.acked for m in down) >= 35 and sum(m.acked for m in up) >= 35, "too little traffic"
    assert "TURN from 127.0.0.1: peer dialup" in provider.log()
    for host in hosts.values():
        assert not re.search(r"Traceback|Unhandled", host.log()), f"errors in {host.log_path.name}"


# -- 2. three hosts: dial-up to dial-up through the provider ---------------------------------


def test_three_hosts_dialup_to_dialup_via_the_provider(tmp_path):
    rng = random.Random(4)
    taken: set[int] = set()
    ports = {p: low_port(taken) for p in ("2526", "2366", "2625", "2527")}
    lab_certificate(tmp_path)
    port2 = low_port(taken)
    # the second customer logs in as itself (and calls from 127.0.0.2, to tell the sessions apart)
    provider_cfg = derive(
        "provider.toml",
        tmp_path,
        "provider.toml",
        ports,
        [
            (
                '"dialup.example.org" = "dialup"\n',
                f'"dialup.example.org" = "dialup"\n"{DIALUP2}" = "dialup2"\n',
            ),
        ],
    )
    with open(provider_cfg, "a") as f:
        f.write(f'\n[peers.dialup2]\ndomains = ["{DIALUP2}"]\nusername = "dialup2"\npassword = "two"\n')
    dialup2_cfg = derive(
        "dialup.toml",
        tmp_path,
        "dialup2.toml",
        ports,
        [
            (DIALUP, DIALUP2),
            ('"./dialup-data"', '"./dialup2-data"'),
            ("tcp:2527:", f"tcp:{port2}:"),
            ('port=2526"', 'port=2526:bindAddress=127.0.0.2"'),
            ('username = "dialup"\npassword = "change me"', 'username = "dialup2"\npassword = "two"'),
            *SHORT_POLLS,
        ],
    )
    provider = Host(tmp_path, provider_cfg, ports["2625"], "provider-data")
    dialup1 = Host(
        tmp_path,
        derive("dialup.toml", tmp_path, "dialup.toml", ports, SHORT_POLLS),
        ports["2527"],
        "dialup-data",
    )
    dialup2 = Host(tmp_path, dialup2_cfg, port2, "dialup2-data")
    c2, d2 = dialup2.maildir(DIALUP2, "carol"), dialup2.maildir(DIALUP2, "dave")
    d1 = dialup1.maildir(DIALUP, "dave")
    to2 = [
        make_message(rng, "one-to-two-a", f"carol@{DIALUP}", [f"dave@{DIALUP2}"], [d2]),
        make_message(rng, "one-to-two-b", f"carol@{DIALUP}", [f"everyone@{DIALUP2}"], [c2, d2]),
    ]
    to1 = [make_message(rng, "two-to-one", f"carol@{DIALUP2}", [f"dave@{DIALUP}"], [d1])]

    def held_for(peer: str) -> list[str]:
        out = []
        for path in (provider.data / "spool" / "queue").glob("*.json"):
            try:
                envelope = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # replaced or removed while we looked
            out += [r["address"] for r in envelope["recipients"] if r["route"].get("hold") == peer]
        return sorted(out)

    try:
        provider.start()
        dialup1.start()
        submit(dialup1.port, to2)
        assert all(m.acked for m in to2), [m.detail for m in to2]
        wait_until(
            lambda: (
                held_for("dialup2") == [f"dave@{DIALUP2}", f"everyone@{DIALUP2}"] and not dialup1.queued()
            ),
            timeout=15,
            what="dial-up 1's mail held at the provider for dial-up 2",
        )
        dialup1.wait_for_polls()
        assert held_for("dialup2") == [f"dave@{DIALUP2}", f"everyone@{DIALUP2}"], "released to the wrong peer"
        assert not (dialup1.data / "mail" / DIALUP2).exists()

        dialup2.start()
        submit(dialup2.port, to1)
        assert all(m.acked for m in to1), [m.detail for m in to1]

        def arrived() -> bool:
            delivered, _ = check_maildirs([provider, dialup1, dialup2], to1 + to2)
            return all(delivered[m.token, b] for m in to1 + to2 for b in m.boxes) and not provider.queued()

        wait_until(arrived, timeout=20, what="mail between the dial-up hosts, through the provider")
        for host in (dialup1, dialup2):  # another whole poll each: nothing comes twice
            host.wait_for_polls()
    finally:
        for host in (dialup2, dialup1, provider):
            host.stop()

    delivered, bad = check_maildirs([provider, dialup1, dialup2], to1 + to2)
    assert not bad, bad
    assert sorted(delivered.values()) == [1, 1, 1, 1], delivered
    assert "TURN from 127.0.0.2: peer dialup2" in provider.log()
    assert "TURN from 127.0.0.1: peer dialup" in provider.log()
    assert not provider.queued() and not dialup1.queued() and not dialup2.queued()
    print(
        f"\nthree hosts: {len(to2)} messages dial-up 1 -> dial-up 2 and {len(to1)} back, "
        f"each delivered once via the provider's hold queues"
    )
