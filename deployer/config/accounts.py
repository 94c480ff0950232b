"""The receiver's account on this host: `[server] user` and `group` looked up, root only when the config says so.

The receiver answers the internet, so it runs as an unprivileged user by default (`deployer`, which
`deployer setup` creates); its group is that user's primary group unless `[server] group` names another.
The queue's and the audit log's folders are made for that group. `user = "root"` keeps the receiver in root's
process tree: allowed when written, warned about at every start.
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deployer.config.model import ServerConfig
from deployer.errors import MissingAccount

ROOT = "root"
ROOT_WARNING = (
    '[server] user = "root": the internet-facing receiver runs as root; '
    "run `deployer setup` and remove that line to run it as an unprivileged user"
)


@dataclass(frozen=True)
class Account:
    """A user and the group the receiver runs as, with their ids."""

    user: str
    uid: int
    group: str
    gid: int

    @property
    def is_root(self) -> bool:
        return self.uid == 0


def receiver_account(
    server: ServerConfig,
    *,
    user_by_name: Callable[[str], Any] = pwd.getpwnam,
    group_by_name: Callable[[str], Any] = grp.getgrnam,
    group_by_id: Callable[[int], Any] = grp.getgrgid,
) -> Account:
    """`[server] user` and its group on this host; MissingAccount, naming the fix, when either does not exist."""
    try:
        user = user_by_name(server.user)
    except KeyError:
        raise MissingAccount(
            f"the receiver's user {server.user!r} ([server] user) does not exist on this host: create it with "
            f"`deployer setup`, or set [server] user to an existing unprivileged user",
            user=server.user,
        ) from None
    try:
        group = group_by_name(server.group) if server.group is not None else group_by_id(user.pw_gid)
    except KeyError:
        shown = server.group if server.group is not None else f"gid {user.pw_gid}"
        raise MissingAccount(
            f"the receiver's group {shown!r} ([server] group) does not exist on this host: create it with "
            f"`deployer setup`, or set [server] group to an existing group",
            group=shown,
        ) from None
    return Account(user=server.user, uid=user.pw_uid, group=group.gr_name, gid=group.gr_gid)


def root_warning(server: ServerConfig) -> str | None:
    """The warning `serve` logs at every start when the receiver runs as root; None when it does not."""
    return ROOT_WARNING if server.user == ROOT else None
