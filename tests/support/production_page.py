"""The steps of docs/production.md, read from the page itself, so the test that follows them cannot drift from it.

`steps()` is every ```sh block of its "Installing" section, in order. `steps_in_a_tree()` is what a test runs of
them in a chroot of a stock Debian tree (tests/integration/test_fresh_debian.py): each block but the lines that
cannot run there, the `git clone` (the test clones this checkout to the same place) and `systemctl enable`
(no systemd runs in a chroot: the test starts the unit's ExecStart itself).
"""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "production.md"
NOT_IN_A_TREE = ("git clone ", "systemctl enable ")


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def steps(text: str | None = None) -> list[str]:
    installing = section(text if text is not None else PAGE.read_text(), "Installing")
    return [block.strip("\n") for block in re.findall(r"^```sh\n(.*?)^```$", installing, re.M | re.S)]


def steps_in_a_tree(text: str | None = None) -> list[str]:
    kept = []
    for block in steps(text):
        lines = [line for line in block.splitlines() if not line.startswith(NOT_IN_A_TREE)]
        if lines:
            kept.append("\n".join(lines))
    return kept


def app_keys(text: str | None = None) -> str:
    """The TOML the page appends to the config for its app: the heredoc of the `cat >>` step."""
    [block] = [block for block in steps(text) if block.startswith("cat >> /etc/deployer/deployer.toml")]
    body = block.split("\n", 1)[1]
    return body.rsplit("\n", 1)[0] + "\n"
