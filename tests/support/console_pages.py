"""A console page of a host on a test bed, rendered in-process: the receiver's Flask app built over that host's
config and queue (as gunicorn would build it), a viewer signed in through the form, one GET. No browser, no
server: the facts on the page are what matters here, not how a browser shows them."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from deployer import config as config_module
from deployer.config.model import ConsoleConfig
from deployer.journal import Journal
from deployer.passwords import hash_password
from deployer.queue.queue import Queue
from deployer.receiver.web import create_app

PASSWORD = "bed-viewer-password"
VIEWER_HASH = hash_password(PASSWORD, n=2**4, r=1, p=1)
HTTPS = "https://localhost"
SESSION_ENV = {"CONSOLE_KEY": "b" * 64}
# A [console] table naming the viewer `bed`, its session key read from $CONSOLE_KEY (SESSION_ENV).
CONSOLE_TABLE = f'[console]\nsession_key_env = "CONSOLE_KEY"\n[console.viewers]\nbed = "{VIEWER_HASH}"\n'


def console_client(loaded: Any, queue: Queue, *, clock: Callable[[], float] | None = None) -> Any:
    """A test client of the receiver built over `loaded` (a config with [console]) and `queue`, signed in as `bed`."""
    parts = {"DEPLOYER_CONFIG": loaded, "QUEUE": queue, "JOURNAL": Journal([]), "TESTING": True}
    client = create_app({**parts, **({"CLOCK": clock} if clock else {})}).test_client()
    form = client.get("/console/signin", base_url=HTTPS).get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    signed = client.post("/console/signin", base_url=HTTPS, data={"name": "bed", "password": PASSWORD, "csrf": csrf})
    assert signed.status_code == 302, signed.get_data(as_text=True)
    return client


def get_page(client: Any, path: str) -> str:
    page = client.get(path, base_url=HTTPS)
    assert page.status_code == 200, page.get_data(as_text=True)
    return page.get_data(as_text=True)


def console_page(config_path: Path, path: str) -> str:
    """The page at `path` of the host whose config is `config_path`, as a signed-in viewer sees it."""
    loaded = config_module.load_receiver(config_path, environ={})
    console = ConsoleConfig(viewers={"bed": VIEWER_HASH}, session_key=SESSION_ENV["CONSOLE_KEY"])
    loaded = replace(loaded, console=console, server=replace(loaded.server, names=("localhost",)))
    queue = Queue.for_state_dir(loaded.settings.state_dir)
    try:
        return get_page(console_client(loaded, queue), path)
    finally:
        queue.close()


def text_of(html: str) -> str:
    """The words of an HTML fragment, tags dropped and spaces collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def fleet_cells(page: str, app: str) -> dict[str, str]:
    """host -> the fleet page's cell of `app`: its classes, then its words."""
    return {
        host: f"{classes} | {text_of(body)}"
        for host, classes, body in re.findall(
            rf'<td id="cell-([a-z0-9-]+)-{app}" class="([^"]*)">(.*?)</td>', page, re.S
        )
    }


def bucket_rows(page: str) -> dict[int, str]:
    """bucket -> the cluster page's row of it, in words."""
    return {int(b): text_of(row) for b, row in re.findall(r'<tr id="bucket-(\d+)"[^>]*>(.*?)</tr>', page, re.S)}


def rollout_rows(page: str, rollout: str) -> list[str]:
    """The fleet page's rows of one rollout's hosts, in words (the batch's label on its first host's row)."""
    section = page[page.index(f'id="rollout-{rollout}"') :]
    section = section[: section.index("</section>")]
    return [text_of(row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", section, re.S)[1:]]
