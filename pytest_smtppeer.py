"""pytest fixtures for mail: ``smtp_peer``, a capturing SMTP server, and ``smtp_lab``,
a lab of smtppeer hosts (``docs/topology.rst``).

Installed with smtppeer (the ``pytest11`` entry point ``smtppeer``).  The
servers run in the test's own reactor, so the fixtures need pytest-twisted
and tests that use them are Twisted tests::

    @pytest_twisted.ensureDeferred
    async def test_welcome_mail(smtp_peer):
        await deferToThread(signup, "alice@example.test", smtp_port=smtp_peer.port)
        [message] = await smtp_peer.wait_for_messages(1, {"subject": "Welcome*"})
        assert message.mailbox == "alice@example.test"

This module imports nothing of smtppeer until a fixture is used, so having
smtppeer installed costs other test suites nothing.
"""

from __future__ import annotations

import pytest

try:
    import pytest_twisted
except ImportError:  # pragma: no cover - the fixtures say why they cannot run
    pytest_twisted = None


if pytest_twisted is not None:

    @pytest_twisted.async_yield_fixture
    async def smtp_peer(tmp_path):
        """A capturing SMTP server on a free loopback port: it takes mail for any
        domain into its Maildirs (``smtppeer.testing.CapturingPeer``)."""
        from smtppeer.testing import start_capture

        peer = await start_capture(data_dir=tmp_path / "smtp_peer")
        try:
            yield peer
        finally:
            await peer.stop()

    @pytest_twisted.async_yield_fixture
    async def smtp_lab(tmp_path):
        """Start labs with ``await smtp_lab(topology)`` (TOML text, a file's path or a
        ``Topology``); each is stopped after the test."""
        from smtppeer.testing import start_lab

        labs = []

        async def start(topology, data_dir=None):
            lab = await start_lab(topology, data_dir=data_dir or tmp_path / f"smtp_lab{len(labs)}")
            labs.append(lab)
            return lab

        try:
            yield start
        finally:
            for lab in labs:
                await lab.stop()

else:

    @pytest.fixture
    def smtp_peer():
        pytest.fail("the smtp_peer fixture runs in the reactor: pip install pytest-twisted")

    @pytest.fixture
    def smtp_lab():
        pytest.fail("the smtp_lab fixture runs in the reactor: pip install pytest-twisted")
