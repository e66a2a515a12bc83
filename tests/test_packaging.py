"""A normal ``pip install`` into a fresh virtualenv makes ``twistd smtppeer`` work.

Editable installs and running from the checkout both hide packaging mistakes
(a missing ``twisted.plugins`` entry, a sub-package left out of ``packages``):
this test installs a copy of the repository the way a user would, then runs
the installed ``twistd`` from outside the checkout, with a clean environment.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, end_process, free_port, wait_for_port

pytestmark = pytest.mark.slow

IGNORE = shutil.ignore_patterns(
    ".git", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".pytest_cache", ".ruff_cache",
    ".hypothesis", "dropin.cache", ".venv", "venv", "smtppeer-data",
)  # fmt: skip


def clean_env(home: Path) -> dict[str, str]:
    """No PYTHONPATH or virtualenv leaking in from the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))}
    env["HOME"] = os.environ.get("HOME", str(home))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtualenv with ``pip install <copy of the repo>`` (not editable)."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "src"
    shutil.copytree(REPO, source, ignore=IGNORE)
    venv = base / "venv"
    work = base / "work"
    work.mkdir()
    env = clean_env(base)
    run([sys.executable, "-m", "venv", str(venv)], cwd=work, env=env, timeout=120)
    python = venv / "bin" / "python"
    run(
        [str(python), "-m", "pip", "install", "--no-input", "--timeout", "60", str(source)],
        cwd=work,
        env=env,
        timeout=900,
    )
    return venv, work, env


def test_installed_package_is_not_the_checkout(installed):
    venv, work, env = installed
    done = run(
        [str(venv / "bin" / "python"), "-c", "import smtppeer, twisted.plugins.smtppeer_plugin as p; "
         "print(smtppeer.__file__); print(p.__file__)"],
        cwd=work, env=env, timeout=60,
    )  # fmt: skip
    for path in done.stdout.split():
        assert Path(path).resolve().is_relative_to(venv.resolve()), done.stdout


def test_twistd_help_lists_smtppeer(installed):
    venv, work, env = installed
    done = run([str(venv / "bin" / "twistd"), "--help"], cwd=work, env=env, timeout=60)
    commands = [
        line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ") and line.split()
    ]
    assert "smtppeer" in commands, done.stdout
    assert "smtppeer" in done.stdout.split("Commands:", 1)[1], done.stdout


def test_twistd_smtppeer_help_shows_options(installed):
    venv, work, env = installed
    done = run([str(venv / "bin" / "twistd"), "smtppeer", "--help"], cwd=work, env=env, timeout=60)
    for option in ("--listen", "--hostname", "--data-dir", "--domain"):
        assert option in done.stdout, done.stdout


def test_installed_twistd_accepts_mail(installed):
    """The installed plugin really runs: one message in, on a loopback port."""
    venv, work, env = installed
    port = free_port()
    data = work / "data"
    log = work / "twistd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "twistd"), "-n", "--pidfile=", "smtppeer", "--hostname", "pkg.test",
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", str(data)],
            cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for_port(port, proc, timeout=30)
            with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
                assert client.sendmail("a@x.test", ["u@localhost"], b"Subject: pkg\r\n\r\nhi\r\n") == {}
        finally:
            end_process(proc)
    assert len(list((data / "mail" / "localhost" / "u" / "new").iterdir())) == 1, log.read_text()


SERVE_STATUS_PAGE = """
import sys, urllib.request
from twisted.internet import reactor, threads
from smtppeer.lab.lab import Lab
from smtppeer.lab.topology import loads_topology
from smtppeer.lab.web import web_service

lab = Lab(loads_topology('[hosts.a]\\ndomains = ["a.test"]\\n', "pkg.toml"), data_dir=sys.argv[1])
web = web_service(lab)

def fetch(path):
    with urllib.request.urlopen(web.url + path, timeout=30) as response:
        return response.headers["content-type"], response.read()

def main():
    lab.startService()
    web.startService()
    d = threads.deferToThread(lambda: [fetch("/"), fetch("/metrics")])
    d.addCallback(show)
    d.addErrback(lambda failure: print(failure.getTraceback()))
    d.addBoth(lambda _: web.stopService())
    d.addBoth(lambda _: lab.stopService())
    d.addBoth(lambda _: reactor.stop())

def show(pages):
    for kind, body in pages:
        print(kind, len(body), b"EventSource" in body)

reactor.callWhenRunning(main)
reactor.run()
"""


def test_installed_lab_serves_its_status_page_and_metrics(installed):
    """The page is package data and prometheus_client a dependency: both come with a normal install."""
    venv, work, env = installed
    done = run(
        [str(venv / "bin" / "python"), "-c", SERVE_STATUS_PAGE, str(work / "lab")],
        cwd=work,
        env=env,
        timeout=120,
    )
    page, metrics = done.stdout.splitlines()
    assert page.startswith("text/html; charset=utf-8 ") and page.endswith(" True"), done.stdout
    assert metrics.startswith("text/plain; version=0.0.4; charset=utf-8 "), done.stdout
