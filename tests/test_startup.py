"""Starting ``twistd smtppeer``: privilege drop on a fresh data directory, and
start-up failures said in one line (real twistd processes)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .conftest import REPO, TWISTD, TwistdProcess, free_port, smtppeer, wait_for_port, wait_until

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def twistd(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """A twistd that is expected to end by itself (it failed to start)."""
    return subprocess.run([*TWISTD, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("option", ["--listen", "--metrics"])
def test_a_port_in_use_is_one_line(tmp_path, option):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        listen = port if option == "--listen" else free_port()
        done = twistd(
            "-n", "--pidfile", str(tmp_path / "twistd.pid"), "smtppeer",
            "--listen", f"tcp:{listen}:interface=127.0.0.1", "--data-dir", str(tmp_path / "data"),
            *(["--metrics", f"tcp:{port}:interface=127.0.0.1"] if option == "--metrics" else []),
            cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 1
    assert (
        done.stderr == f"smtppeer: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use\n"
    )
    assert "Traceback" not in done.stdout and len(done.stdout.splitlines()) < 10, done.stdout
    assert not (tmp_path / "twistd.pid").exists()


def test_a_data_directory_in_use_names_its_owner(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    first = TwistdProcess(data).start()
    # the port listens before startService; the control socket opens after the spool's own recovery
    wait_until(lambda: (data / "control.sock").exists(), what="the first service to finish starting")
    try:
        queued = (
            data / "spool" / "incoming" / "unfinished.eml"
        )  # what a second service's recovery would remove
        queued.write_bytes(b"Subject: still arriving\r\n")
        done = twistd(
            "-n", "--pidfile", str(tmp_path / "second.pid"), "smtppeer",
            "--listen", f"tcp:{free_port()}:interface=127.0.0.1", "--data-dir", str(data),
            cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 1
        assert done.stderr == (
            f"smtppeer: another smtppeer (pid {first.proc.pid}) owns the data directory {data}: "
            "stop it first, or give another --data-dir\n"
        )
        assert "Traceback" not in done.stdout
        assert queued.exists()  # the second one touched nothing
        with smtplib.SMTP("127.0.0.1", first.port, timeout=30) as s:  # and the first goes on
            s.sendmail("a@x.test", ["u@localhost"], b"Subject: t\r\n\r\nstill here\r\n")
    finally:
        assert first.stop() == -signal.SIGTERM  # twistd ends as the signal said
    # the lock goes with the process: the directory can be used again at once
    again = TwistdProcess(data).start()
    assert again.stop() == -signal.SIGTERM


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--dns", "x"], '--dns "x": give an IP address and optional port (HOST[:PORT])\n'),
        (["--queue-lifetime", "soon"], '--queue-lifetime "soon" is not a duration (seconds, or a string'),
        (["--config", "broken.toml"], 'broken.toml: routes."*": no peer named "upstream" (there is no'),
    ],
)  # fmt: skip
def test_a_broken_configuration_is_one_line_and_status_2(tmp_path, args, expected):
    (tmp_path / "broken.toml").write_text('[routes]\n"*" = "peer:upstream"\n')
    done = twistd("-n", "--pidfile=", "smtppeer", *args, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr.count("\n")) == (2, "", 1), done.stderr
    assert done.stderr.startswith(expected)


# -- --uid/--gid ------------------------------------------------------------------------------


def _others_can_run(path: Path) -> bool:
    """Whether a user who is neither the owner nor in the group can reach and run ``path``."""
    path = path.resolve()
    if not path.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)


def _interpreter(where: Path) -> list[str]:
    """A command that runs this Python where the unprivileged user can run it too.

    A Python under /root (pyenv) cannot be run by ``nobody``; then the
    installation is bind-mounted at ``where`` in a mount namespace of the
    twistd's own (``unshare -m``), which ends with it and changes nothing
    outside."""
    if _others_can_run(Path(sys.executable)):
        return [sys.executable]
    unshare = shutil.which("unshare")
    prefix = Path(sys.prefix)
    if unshare is None or not Path(sys.executable).is_relative_to(prefix):
        pytest.skip(f"{sys.executable} cannot be run by an unprivileged user, and there is no unshare")
    probe = subprocess.run([unshare, "-m", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"{sys.executable} cannot be run by an unprivileged user, and unshare -m fails")
    where.mkdir(mode=0o755)
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    inside = where / Path(sys.executable).relative_to(prefix)
    return [unshare, "-m", "sh", "-c", script, "sh", str(prefix), str(where), str(inside)]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_uid_and_gid_on_a_fresh_data_directory():
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="smtppeer-uid-"))  # not under pytest's 0700 tmp_path
    proc = None
    try:
        base.chmod(0o755)
        data = base / "data"  # does not exist yet: the service makes it (as root) and hands it over
        port = free_port()
        argv = [
            *_interpreter(base / "python"), "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile", str(data / "twistd.pid"), "--uid", "nobody", "--gid", str(nobody.pw_gid),
            "smtppeer", "--listen", f"tcp:{port}:interface=127.0.0.1", "--hostname", "peer.test",
            "--data-dir", str(data),
        ]  # fmt: skip
        log = base / "twistd.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=base, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(port, proc)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.sendmail("a@x.test", ["u@localhost"], b"Subject: after the switch\r\n\r\nhi\r\n")
        [message] = wait_until(
            lambda: list((data / "mail" / "localhost" / "u" / "new").glob("*")), what="delivery"
        )
        sock = data / "control.sock"
        for path in (data, data / "spool" / "incoming", data / "spool" / "queue", message, sock):
            st = path.lstat()
            assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), path
        assert stat.S_IMODE(sock.lstat().st_mode) == 0o600
        listing = smtppeer("queue", "list", "-d", str(data), text=True)
        assert listing.returncode == 0, listing.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM  # twistd ends as the signal said
        proc = None
        text = log.read_text()
        assert "Traceback" not in text and "PermissionError" not in text and "No permission" not in text, text
        assert not (data / "twistd.pid").exists() and not sock.exists()
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
