"""`deployer setup` without touching the host's accounts or systemd: fakes that record what setup asked of them.

Files are still written for real, under a --root in tmp_path, by whoever runs the tests: the fake accounts
record the owner names setup gives each file (by inode) and answer them back, as the host's would.
"""

from __future__ import annotations

import os

from deployer.adapters.host_setup import HostSetup


class FakeAccounts:
    def __init__(self, users=("root",), groups=("root",)):
        self.existing_users = set(users)
        self.existing_groups = set(groups)
        self.owners: dict[tuple[int, int], tuple[str, str]] = {}
        self.effects: list[tuple] = []

    def users(self):
        return frozenset(self.existing_users)

    def groups(self):
        return frozenset(self.existing_groups)

    def root_uid(self):
        return os.geteuid()  # the tests' user plays root: it owns the folders under --root

    def owner(self, info):
        return self.owners.get((info.st_dev, info.st_ino), ("root", "root"))

    def chown(self, fd, user, group):
        assert user in self.existing_users and group in self.existing_groups, (user, group)
        info = os.fstat(fd)
        self.owners[(info.st_dev, info.st_ino)] = (user, group)

    def create_group(self, name):
        self.effects.append(("groupadd", name))
        self.existing_groups.add(name)

    def create_user(self, name, group, shell):
        self.effects.append(("useradd", name, group, shell))
        self.existing_users.add(name)


class FakeSystemctl:
    def __init__(self, running=()):
        self.running_units = set(running)
        self.effects: list[tuple] = []

    def booted(self):
        return True

    def running(self, units):
        return frozenset(unit for unit in units if unit in self.running_units)

    def reload(self):
        self.effects.append(("daemon-reload",))

    def enable(self, units):
        self.effects.append(("enable --now", *units))
        self.running_units.update(units)


def fake_host(root, accounts=None, systemctl=None) -> HostSetup:
    return HostSetup(root, accounts or FakeAccounts(), systemctl or FakeSystemctl())
