"""IPv6 clients counted by network (``client_ipv6_prefix_length``), for real.

A real ``twistd smtppeer`` runs in a network namespace this test makes (``unshare
-n``, as root; skipped where that is not allowed), whose loopback carries
addresses of two /84 networks.  Clients bound to those addresses open sessions
and keep them; the greeting each gets shows how they were counted.  Nothing
leaves the namespace, which ends with the service.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from .conftest import REPO, TWISTD, end_process, require_tool

PORT = 2525  # inside the namespace: nothing else is there
SAME_84 = ["2001:db8::1", "2001:db8::2", "2001:db8::3"]  # one /84, and one /64
OTHER_84 = "2001:db8:0:0:1000::1"  # the same /64, another /84

SETUP = " && ".join(
    ["ip link set lo up"] + [f"ip -6 addr add {a}/128 dev lo nodad" for a in [*SAME_84, OTHER_84]]
)

# Run in the namespace: wait for the listener, then one session from each source
# address in turn, all kept open, and print the greetings.
CLIENTS = textwrap.dedent(
    """
    import json, socket, sys, time

    port, sources = int(sys.argv[1]), sys.argv[2:]
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("::1", port), timeout=5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    time.sleep(0.2)  # the probe's session has ended on the server's side too
    kept, greetings = [], []
    for source in sources:
        s = socket.socket(socket.AF_INET6)
        s.settimeout(15)
        s.bind((source, 0))
        s.connect(("::1", port))
        greetings.append(s.recv(512).decode(errors="replace").strip())
        kept.append(s)
    print(json.dumps(greetings))
    """
)


@pytest.fixture
def namespace_tools():
    if os.geteuid() != 0:
        pytest.skip("a network namespace of its own needs root")
    require_tool("ip")
    unshare = shutil.which("unshare")
    nsenter = shutil.which("nsenter")
    if unshare is None or nsenter is None:
        pytest.skip("unshare/nsenter (util-linux) missing")
    probe = subprocess.run([unshare, "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {probe.stderr.decode(errors='replace').strip()}")
    return unshare, nsenter


def wait_for_own_namespace(process: subprocess.Popen) -> None:
    """``unshare`` makes the namespace after it starts: enter it only once it is there."""
    ours = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if os.readlink(f"/proc/{process.pid}/ns/net") != ours:
                return
        except FileNotFoundError:
            break
        time.sleep(0.01)
    raise AssertionError(f"no namespace of its own (exit status {process.poll()})")


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (84, ["220", "220", "421", "220"]),  # the third of one /84 is over the limit of 2
        (128, ["220", "220", "220", "220"]),  # each address alone
    ],
)
def test_ipv6_clients_are_counted_by_their_network(namespace_tools, tmp_path, prefix, expected):
    unshare, nsenter = namespace_tools
    config = tmp_path / "ipv6.toml"
    config.write_text(
        f'hostname = "ns.test"\ndata_dir = "{tmp_path / "data"}"\n'
        f'listen = ["tcp6:{PORT}:interface=\\\\:\\\\:"]\n'
        f'[domains."ns.test"]\n[limits]\nmax_connections_per_client = 2\n'
        f"client_ipv6_prefix_length = {prefix}\n"
    )
    log = open(tmp_path / "twistd.log", "wb")  # noqa: SIM115
    env = dict(os.environ, PYTHONPATH=str(REPO))
    service = subprocess.Popen(
        [unshare, "-n", "sh", "-c", f'{SETUP} && exec "$@"', "sh",
         *TWISTD, "-n", "--pidfile=", "smtppeer", "--config", str(config)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_own_namespace(service)
        clients = subprocess.run(
            [nsenter, f"--net=/proc/{service.pid}/ns/net", sys.executable, "-c", CLIENTS,
             str(PORT), *SAME_84, OTHER_84],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert clients.returncode == 0, (
            clients.stderr.decode(errors="replace") + (tmp_path / "twistd.log").read_text()
        )
        greetings = json.loads(clients.stdout)
        assert [g[:3] for g in greetings] == expected, greetings
        if prefix == 84:
            assert "Too many connections from your address" in greetings[2]
    finally:
        end_process(service)
        log.close()
    text = (tmp_path / "twistd.log").read_text()
    assert "Traceback" not in text, text
    if prefix == 84:
        assert "2001:db8::/84 has 2 sessions (max_connections_per_client)" in text, text
