"""The lab's status page in a real headless browser: Debian's ``chromium``, driven
over the DevTools pipe from this test's own reactor (``tests/cdp.py``), so the
lab and its web server run in this process while the browser loads the page.

The page must show what the lab is (hosts, links, queues, events) and follow
it live over its event stream: a link set down through the API turns "down"
on the page, and new events appear, without a reload.  Every wait is bounded
and says what it waited for; the browser is always closed (killed if it
must be) and its profile removed.  Skipped without chromium on a laptop, a
failure under ``CI=true`` (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import time

import pytest_twisted

from .cdp import Browser
from .conftest import require_tool
from .test_lab_web import Client, eventually, lab, mail, web  # noqa: F401 -- lab and web are fixtures


def live_processes_of(profile: str) -> list[int]:
    """Processes (not zombies) whose command line names the browser's profile."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if profile.encode() in cmdline and state != "Z":
            found.append(int(pid))
    return found


@pytest_twisted.async_yield_fixture
async def browser():
    started = time.monotonic()
    chromium = await Browser.launch(require_tool("chromium"))
    print(f"\n{chromium.version} started in {time.monotonic() - started:.2f}s")
    try:
        yield chromium
    finally:
        await chromium.close()
        await eventually(lambda: not live_processes_of(chromium.profile), 15, "the browser's processes gone")
        assert not os.path.exists(chromium.profile)


@pytest_twisted.async_yield_fixture
async def page(browser, web):  # noqa: F811
    """A tab of its own, closed before the web server stops: its event stream holds a
    connection (a browser has six per server) and would come back if left open."""
    tab = await browser.new_page()
    try:
        yield tab
    finally:
        if tab.console:
            print("the page's console:", *tab.console, sep="\n  ")
        await tab.close()


def text_of(selector: str) -> str:
    return f"document.querySelector({selector!r})?.textContent"


@pytest_twisted.ensureDeferred
async def test_the_page_follows_the_lab_live(lab, web, page):  # noqa: F811
    started = time.monotonic()
    api = Client(web)
    await page.goto(web.url + "/")
    await page.wait_for("document.getElementById('conn').dataset.state === 'live'")
    # what the lab is: its hosts, their roles and domains; its links, up
    await page.wait_for("document.querySelectorAll('#hosts tbody tr').length === 3")
    assert await page.evaluate(text_of("#host-alpha td:nth-child(2)")) == "dialup via provider (turn)"
    assert await page.evaluate(text_of("#host-beta td:nth-child(3)")) == "beta.test"
    assert await page.evaluate(text_of("#source")) == "web.toml"
    await page.wait_for("document.getElementById('link-alpha-provider')?.dataset.up === 'true'")
    assert await page.evaluate(text_of("#link-alpha-provider .state")) == "up"
    assert await page.evaluate(text_of("#faults tbody tr td")) == "full"

    # a link set down through the API: down on the page, and its event listed
    await api("PUT", "/api/links/alpha-provider", {"up": False})
    await page.wait_for("document.getElementById('link-alpha-provider').dataset.up === 'false'")
    await page.wait_for(
        "document.querySelector('#link-alpha-provider .state').textContent.startsWith('down')"
    )
    await page.wait_for("document.querySelector('#events li[data-kind=\"link-down\"]') !== null")

    # mail that cannot leave alpha: received there, deferred, and queued on the page
    await mail(lab, "alpha", ["p@provider.test"], "stuck", sender="a@alpha.test")
    await page.wait_for('document.querySelector(\'#events li[data-kind="received"][data-host="alpha"]\')')
    await page.wait_for("document.querySelector('#events li[data-kind=\"deferred\"]') !== null")
    await page.wait_for("document.querySelector('#host-alpha')?.dataset.queued === '1'")
    await page.wait_for("document.querySelector('#queue-alpha')?.textContent.includes('p@provider.test')")

    # the link back on its schedule: up on the page, alpha polls and the mail lands
    await api("PUT", "/api/links/alpha-provider", {"up": None})
    await page.wait_for("document.getElementById('link-alpha-provider').dataset.up === 'true'")
    await page.wait_for("document.querySelector('#host-provider')?.dataset.messages === '1'")
    await page.wait_for("document.querySelector('#host-alpha')?.dataset.queued === '0'")
    assert page.console == []
    print(f"page, link and mail round trips in {time.monotonic() - started:.2f}s")
    if os.environ.get("SCREENSHOT"):  # SCREENSHOT=page.png: to look at the page as it ends
        await page.screenshot(os.environ["SCREENSHOT"])


@pytest_twisted.ensureDeferred
async def test_the_page_catches_up_after_a_reconnection(lab, web, page):  # noqa: F811
    """The stream is cut (the server closes it) while things happen; the browser
    reconnects with its Last-Event-ID and the page shows what it missed."""
    api = Client(web)
    await page.goto(web.url + "/")
    await page.wait_for("document.getElementById('conn').dataset.state === 'live'")
    for request in list(web.api.streams):
        request.finish()  # as a proxy or a restart would end it
    await eventually(lambda: not web.api.streams, what="the stream ended")
    await api("PUT", "/api/links/beta-provider", {"up": False})  # while the page is not connected
    missed = lab.events[-1].id
    await page.wait_for(f"document.getElementById('event-{missed}') !== null")
    await page.wait_for("document.getElementById('link-beta-provider').dataset.up === 'false'")
    await page.wait_for("document.getElementById('conn').dataset.state === 'live'")
