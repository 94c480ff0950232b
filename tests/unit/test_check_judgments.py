"""What `deployer check` makes of its observations (deployer/plan/checks.py), from tables of hand-made stat results:
who can read what, who besides the deployer can write under the state folder, the accounts, the hooks, the probes.
And the effective config `--print` shows, every secret masked."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from deployer.config import parse
from deployer.plan.checks import (
    MAX_STATE_PROBLEMS,
    READ,
    SEARCH,
    WRITE,
    Account,
    Entry,
    HooksListing,
    Observations,
    ProbeResult,
    ReadFile,
    ReceiverIdentity,
    StateTree,
    file_problems,
    hooks_problems,
    judge,
    permitted,
    probe_problems,
    read_blocker,
    receiver_problems,
    state_problems,
    writers_beyond,
)
from deployer.plan.effective_config import MASK, effective_config

RECEIVER = ReceiverIdentity(user="deployer", group="deployer", group_named=True, uid=999, gid=998)
DEPLOYER = RECEIVER.account
assert DEPLOYER is not None


def folder(path: str, mode: int, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path, uid, gid, stat.S_IFDIR | mode)


def plain(path: str, mode: int, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path, uid, gid, stat.S_IFREG | mode)


def link(path: str, uid: int = 0) -> Entry:
    return Entry(path, uid, 0, stat.S_IFLNK | 0o777)


# --- permissions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "account, entry, wanted, allowed",
    [
        (Account(999, 998), plain("/f", 0o600, uid=999), READ, True),  # the owner's bits
        (Account(999, 998), plain("/f", 0o060, uid=999), READ, False),  # the owner's bits, even when the group's allow
        (Account(999, 998), plain("/f", 0o640, gid=998), READ, True),  # the group's bits
        (Account(999, 998), plain("/f", 0o604, gid=998), READ, False),  # in the group: the group's, not the others'
        (Account(999, 998, frozenset({5})), plain("/f", 0o640, gid=5), READ, True),  # a supplementary group
        (Account(999, 998), plain("/f", 0o640, gid=5), READ, False),  # a group it is not in: the others' bits
        (Account(999, 998), plain("/f", 0o644), READ, True),
        (Account(999, 998), folder("/d", 0o750, gid=998), SEARCH, True),
        (Account(999, 998), folder("/d", 0o740, gid=998), SEARCH, False),
        (Account(999, 998), folder("/d", 0o2770, gid=998), READ | WRITE | SEARCH, True),
        (Account(999, 998), folder("/d", 0o2750, gid=998), WRITE, False),
        (Account(0, 0), plain("/f", 0o000, uid=5, gid=5), READ, True),  # root
    ],
)
def test_permitted_takes_the_bits_of_the_owner_the_group_or_the_others(account, entry, wanted, allowed):
    assert permitted(account, entry, wanted) is allowed


SECRET = plain("/etc/deployer/github-secret", 0o640, gid=998)


@pytest.mark.parametrize(
    "chain, blocker",
    [
        ((folder("/", 0o755), folder("/etc", 0o755), folder("/etc/deployer", 0o750, gid=998), SECRET), None),
        (
            (folder("/", 0o755), folder("/etc", 0o755), folder("/etc/deployer", 0o700), SECRET),
            ("/etc/deployer", "search"),
        ),
        (
            (folder("/", 0o755), folder("/etc", 0o711), folder("/etc/deployer", 0o751), SECRET),
            None,  # search without read on the folders is enough
        ),
        (
            (folder("/", 0o755), folder("/etc", 0o755), plain("/etc/secret", 0o600)),
            ("/etc/secret", "read"),
        ),
    ],
)
def test_reading_a_file_needs_search_on_every_folder_and_read_on_the_file(chain, blocker):
    found = read_blocker(DEPLOYER, chain)
    assert (found[0].path, found[1]) == blocker if blocker else found is None


def test_each_file_the_receiver_cannot_read_is_one_problem_naming_its_key():
    files = [
        ReadFile("config", "/etc/deployer/deployer.toml", (folder("/", 0o755), plain("/etc/deployer.toml", 0o644))),
        ReadFile("server.github_secret_file", "/s", (folder("/", 0o755), plain("/s", 0o600))),
        ReadFile("server.audit_token_file", "/x/t", (folder("/", 0o755), folder("/x", 0o700), plain("/x/t", 0o644))),
        ReadFile("apps.web.maintenance_page", "/gone", (folder("/", 0o755),), missing="/gone: No such file"),
    ]
    problems = file_problems(RECEIVER, files)
    assert [(p.key, p.path) for p in problems] == [
        ("server.github_secret_file", "/s"),
        ("server.audit_token_file", "/x/t"),
        ("apps.web.maintenance_page", "/gone"),
    ]
    assert problems[0].message == (
        "the receiver's user 'deployer' cannot read /s (uid 0, gid 0, mode 0600); chown root:deployer /s; chmod 0640 /s"
    )
    assert problems[1].message.startswith("the receiver's user 'deployer' cannot search /x (uid 0, gid 0, mode 0700)")
    assert problems[1].message.endswith("so it cannot read /x/t; chgrp deployer /x; chmod g+x /x")


def test_a_receiver_that_does_not_exist_reads_nothing_and_a_receiver_left_unset_is_not_checked():
    unreadable = [ReadFile("server.github_secret_file", "/s", (folder("/", 0o755), plain("/s", 0o600)))]
    missing = ReceiverIdentity(user="deployer", group="deployer", group_named=True, uid=None, gid=998)
    assert file_problems(missing, unreadable) == []
    assert file_problems(None, unreadable) == []


@pytest.mark.parametrize(
    "entry, writers",
    [
        (plain("/s/a", 0o644), None),
        (plain("/s/a", 0o664), None),  # group root
        (plain("/s/a", 0o664, gid=998), "is writable by group 998"),
        (plain("/s/a", 0o646), "is writable by every user"),
        (folder("/s/d", 0o1777), "is writable by every user"),
        (plain("/s/a", 0o600, uid=999), "belongs to uid 999"),
        (link("/s/l"), None),
        (link("/s/l", uid=999), "belongs to uid 999"),
    ],
)
def test_who_besides_root_can_change_an_entry(entry, writers):
    assert writers_beyond(entry, frozenset({0}), frozenset({0})) == writers


# --- accounts -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "receiver, lines",
    [
        (None, []),
        (RECEIVER, []),
        (
            ReceiverIdentity("deployer", "deployer", True, None, None),
            [
                "PROBLEM server.user: no user 'deployer' on this host, so the receiver cannot start; create it: "
                "useradd --system --gid deployer --no-create-home --shell /usr/sbin/nologin deployer"
            ],
        ),
        (
            ReceiverIdentity("deployer", "web", True, 999, None),
            ["PROBLEM server.group: no group 'web' on this host; create it: groupadd --system web"],
        ),
        (
            ReceiverIdentity("deployer", "deployer", False, 999, None),
            [
                "PROBLEM server.group: is not set, so the receiver's group is 'deployer', and no group 'deployer' on "
                "this host; create it: groupadd --system deployer"
            ],
        ),
    ],
)
def test_the_receivers_account(receiver, lines):
    assert [problem.line() for problem in receiver_problems(receiver)] == lines


# --- the state folder --------------------------------------------------------------------------------------

ABOVE = (folder("/", 0o755), folder("/var", 0o755), folder("/var/lib", 0o755))


def state(*entries: Entry, top: Entry | None = None, above=ABOVE) -> StateTree:
    return StateTree(
        "/var/lib/state", above, top or folder("/var/lib/state", 0o750, gid=998), entries=entries, shared_gid=998
    )


SHARED = (
    folder("/var/lib/state/queue", 0o2770, gid=998),
    plain("/var/lib/state/queue/jobs.db", 0o660, gid=998),
    plain("/var/lib/state/queue/jobs.db-wal", 0o660, uid=999, gid=998),  # made by the receiver
    folder("/var/lib/state/audit", 0o2770, gid=998),
    plain("/var/lib/state/audit/audit.db", 0o660, gid=998),
)
APPS = (folder("/var/lib/state/apps", 0o700), plain("/var/lib/state/apps/web.json", 0o600))


@pytest.mark.parametrize(
    "tree, lines",
    [
        (StateTree("/var/lib/state", ABOVE, None), []),  # not made yet: the worker makes it
        (
            state(top=link("/var/lib/state")),
            [
                "PROBLEM deployer.state_dir: /var/lib/state is not a folder (a link?): the deployer refuses to use "
                "it; make it a folder of its own"
            ],
        ),
        (state(*SHARED, *APPS), []),
        (state(*APPS), []),  # no serve yet: no shared folder to reach
        (
            state(top=folder("/var/lib/state", 0o750, uid=1000)),
            [
                "PROBLEM deployer.state_dir: /var/lib/state belongs to uid 1000, not to uid 0 that runs the deployer: "
                "it refuses a state folder another user could rewrite; chown 0 /var/lib/state"
            ],
        ),
        (
            state(*APPS, plain("/var/lib/state/apps/api.json", 0o600, uid=1000)),
            [
                "PROBLEM /var/lib/state/apps/api.json: belongs to uid 1000: root never trusts what another user can "
                "write; chown 0 /var/lib/state/apps/api.json; chmod go-w /var/lib/state/apps/api.json (or remove it)"
            ],
        ),
        (
            state(plain("/var/lib/state/apps/web.json", 0o660, gid=998)),  # the receiver's group, outside its folders
            ["PROBLEM /var/lib/state/apps/web.json: is writable by group 998: root never trusts what another user"],
        ),
        (
            state(plain("/var/lib/state/queue/x", 0o666, gid=998)),
            ["PROBLEM /var/lib/state/queue/x: is writable by every user: root never trusts"],
        ),
        (
            state(plain("/var/lib/state/queue/x", 0o660, uid=1000, gid=998)),  # neither root nor the receiver
            ["PROBLEM /var/lib/state/queue/x: belongs to uid 1000: "],
        ),
        (state(link("/var/lib/state/queue/jobs.db-shm", uid=999)), []),  # a link's mode is no one's write
        (
            state(*SHARED, top=folder("/var/lib/state", 0o700)),
            [
                "PROBLEM deployer.state_dir: the receiver's user 'deployer' cannot search /var/lib/state (uid 0, gid "
                "0, mode 0700), so it cannot reach the queue and the audit log; chgrp deployer /var/lib/state; chmod "
                "g+x /var/lib/state (deployer serve (or deployer worker) sets it when it starts as root)"
            ],
        ),
        (
            state(*SHARED, above=(folder("/", 0o755), folder("/var", 0o755), folder("/var/lib", 0o700))),
            ["PROBLEM deployer.state_dir: the receiver's user 'deployer' cannot search /var/lib (uid 0"],
        ),
        (
            state(folder("/var/lib/state/queue", 0o700), *SHARED[1:3]),
            [
                "PROBLEM /var/lib/state/queue: /var/lib/state/queue (uid 0, gid 0, mode 0700) is not the receiver's: "
                "it must be group deployer with mode 2770 for the receiver to write it; deployer serve (or deployer "
                "worker) sets it when it starts as root, or: chgrp deployer /var/lib/state/queue; chmod 2770 "
                "/var/lib/state/queue"
            ],
        ),
    ],
)
def test_the_state_folder_is_the_deployers_and_its_shared_folders_the_receivers(tree, lines):
    found = [problem.line() for problem in state_problems(tree, RECEIVER, 0)]
    assert len(found) == len(lines), found
    for line, expected in zip(found, lines):
        assert line.startswith(expected), line


def test_many_entries_another_user_can_write_are_counted_past_a_cap():
    entries = [plain(f"/var/lib/state/apps/a{i}.json", 0o666) for i in range(MAX_STATE_PROBLEMS + 5)]
    problems = state_problems(state(*entries), RECEIVER, 0)
    assert len(problems) == MAX_STATE_PROBLEMS + 1
    assert problems[-1].line() == "PROBLEM deployer.state_dir: 5 more entries under it another user can write"


def test_without_a_receiver_user_the_shared_folders_are_roots_and_the_configured_groups():
    tree = state(*SHARED[:2], *APPS)
    assert state_problems(tree, None, 0) == []
    without_group = StateTree(tree.path, tree.above, tree.folder, tree.entries, shared_gid=None)
    assert [p.path for p in state_problems(without_group, None, 0)] == [
        "/var/lib/state/queue",
        "/var/lib/state/queue/jobs.db",
    ]


# --- hooks ----------------------------------------------------------------------------------------------------


def test_every_hook_problem_is_reported_not_just_the_first():
    listings = [
        HooksListing("deployer.hooks_dir", "/etc/deployer/hooks", configured=True, exists=False, is_dir=False),
        HooksListing("apps.web.hooks_dir", "/srv/web/hooks", configured=True, exists=True, is_dir=False),
        HooksListing(
            "apps.api.hooks_dir",
            "/srv/api/hooks",
            configured=True,
            exists=True,
            is_dir=True,
            entries=(
                plain("/srv/api/hooks/pre-deploy", 0o755),
                plain("/srv/api/hooks/post-flip", 0o644),
                plain("/srv/api/hooks/post-healthy.sh", 0o755),
                folder("/srv/api/hooks/on-failure", 0o755),
                plain("/srv/api/hooks/README", 0o644),
            ),
        ),
        HooksListing("deployer.hooks_dir", "/opt/hooks", configured=False, exists=False, is_dir=False),  # default
    ]
    assert [problem.line() for problem in hooks_problems(listings)] == [
        "PROBLEM deployer.hooks_dir: names no folder: /etc/deployer/hooks; create it, or remove the key",
        "PROBLEM apps.web.hooks_dir: is not a folder: /srv/web/hooks; create it, or remove the key",
        "PROBLEM /srv/api/hooks/post-flip: is not executable: a deploy would skip it (chmod +x it)",
        "PROBLEM /srv/api/hooks/post-healthy.sh: is never run: a hook is named exactly 'post-healthy', without a "
        "suffix",
        "PROBLEM /srv/api/hooks/on-failure: is not a file: a hook is an executable file",
    ]


def test_a_hook_or_hooks_folder_another_user_can_change_is_a_problem_root_runs_them():
    listing = HooksListing(
        "deployer.hooks_dir",
        "/etc/deployer/hooks",
        configured=True,
        exists=True,
        is_dir=True,
        itself=folder("/etc/deployer/hooks", 0o777),
        entries=(
            plain("/etc/deployer/hooks/pre-deploy", 0o755, uid=1000),
            plain("/etc/deployer/hooks/post-flip", 0o775, gid=1000),
            plain("/etc/deployer/hooks/post-deploy", 0o755),
            plain("/etc/deployer/hooks/README", 0o666, uid=1000),  # never run
        ),
    )
    assert [problem.line() for problem in hooks_problems([listing])] == [
        "PROBLEM /etc/deployer/hooks: is writable by every user: root runs the hooks, so only root may change them; "
        "chown root /etc/deployer/hooks; chmod go-w /etc/deployer/hooks",
        "PROBLEM /etc/deployer/hooks/pre-deploy: belongs to uid 1000: root runs the hooks, so only root may change "
        "them; chown root /etc/deployer/hooks/pre-deploy; chmod go-w /etc/deployer/hooks/pre-deploy",
        "PROBLEM /etc/deployer/hooks/post-flip: is writable by group 1000: root runs the hooks, so only root may "
        "change them; chown root /etc/deployer/hooks/post-flip; chmod go-w /etc/deployer/hooks/post-flip",
    ]
    assert [p.path for p in hooks_problems([listing], deployer_uid=1000)] == [
        "/etc/deployer/hooks",
        "/etc/deployer/hooks/post-flip",
    ]


# --- probes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "probe, line",
    [
        (ProbeResult("docker", "unix:///var/run/docker.sock", "deployer.docker_host", None), None),
        (
            ProbeResult("docker", "unix:///d.sock", "deployer.docker_host", "no answer within 15 s"),
            "PROBLEM deployer.docker_host: Docker at unix:///d.sock does not answer: no answer within 15 s; start it "
            "(systemctl start docker), or correct docker_host",
        ),
        (
            ProbeResult(
                "registry",
                "r.example:5000",
                "apps.web.image",
                "registry r.example:5000: answers 503",
                apps=("web", "api"),
            ),
            "PROBLEM apps.web.image: the registry r.example:5000 does not answer /v2/ (pulled by web, api): answers "
            "503; start it, or correct the registry in the image",
        ),
        (
            ProbeResult("netfilter", "nftables", "deployer.backend", "libnftables.so.1 is not installed"),
            "PROBLEM deployer.backend: libnftables.so.1 is not installed; run check as root, and install the "
            "backend's tools (iptables; libnftables1 for nftables)",
        ),
        (
            ProbeResult("netfilter", "iptables", "deployer.backend", "RulesError: exit code 4"),
            "PROBLEM deployer.backend: the iptables backend cannot read the nat rules: RulesError: exit code 4; run "
            "check as root, and install the backend's tools (iptables; libnftables1 for nftables)",
        ),
        (
            ProbeResult("keepalived", "keepalived", "cluster", "ValueError: odd"),
            "PROBLEM cluster: keepalived does not run: ValueError: odd; [cluster] needs it, the cluster agent runs "
            "it: apt-get install keepalived",
        ),
    ],
)
def test_a_probe_that_did_not_answer_is_its_line(probe, line):
    assert [problem.line() for problem in probe_problems([probe])] == ([line] if line else [])


def test_the_summary_says_what_was_checked():
    observations = Observations(
        config_path="/etc/deployer/deployer.toml",
        deployer_uid=0,
        receiver=RECEIVER,
        files=(ReadFile("config", "/etc/deployer/deployer.toml", (plain("/etc/deployer/deployer.toml", 0o644),)),),
        state=StateTree("/var/lib/state", ABOVE, None),
        probes=(
            ProbeResult("docker", "unix:///d.sock", "deployer.docker_host", None),
            ProbeResult("netfilter", "iptables", "deployer.backend", None),
            ProbeResult("keepalived", "keepalived", "cluster", None, detail="Keepalived v2.2.7"),
        ),
    )
    report = judge(observations)
    assert report.ok
    assert report.summary("/etc/deployer/deployer.toml") == (
        "ok: /etc/deployer/deployer.toml and this host are ready (receiver deployer:deployer reading 1 file, state "
        "folder, Docker, iptables, Keepalived v2.2.7)"
    )


# --- the effective config ---------------------------------------------------------------------------------------------


def test_the_effective_config_masks_every_secret_and_shows_where_it_comes_from(tmp_path: Path):
    password, token, key, github = "registry-password", "asset-token-0123456789", "k" * 32, "g" * 32
    data = {
        "deployer": {"state_dir": "state"},
        "registries": {"r.example": {"username": "bot", "password_env": "REGISTRY_PASSWORD"}},
        "server": {"github_secret_env": "GITHUB_SECRET", "operators": {"ops": {"secret_env": "OPS_KEY"}}},
        "apps": {
            "web": {
                "image": "r.example/web",
                "ports": [{"external": 80, "container": 8080, "blue": 8001, "green": 8002}],
                "env": {"DATABASE_URL": f"postgres://web:{password}@db/web", "MODE": "production"},
                "repository": "acme/web",
                "asset": {"name": "image.tar", "token_env": "ASSET_TOKEN"},
                "labels": {"note": f"made with {token}"},
            }
        },
    }
    environ = {"REGISTRY_PASSWORD": password, "GITHUB_SECRET": github, "OPS_KEY": key, "ASSET_TOKEN": token}
    config = parse(data, path=tmp_path / "deployer.toml", environ=environ)
    effective = effective_config(config, config.secrets())
    text = str(effective)
    for secret in (password, token, key, github):
        assert secret not in text
    assert effective["registries"]["r.example"] == {"registry": "r.example", "username": "bot", "password": MASK}
    assert effective["server"]["github_secret"] == MASK and effective["server"]["audit_token"] is None
    assert effective["server"]["operators"]["ops"]["secret"] == MASK
    web = effective["apps"]["web"]
    assert web["env"] == {"DATABASE_URL": MASK, "MODE": MASK}  # an environment's names show, never its values
    assert web["asset"]["token"] == MASK
    assert web["labels"]["note"] == f"made with {MASK}"  # a secret's value anywhere else is masked too
    assert effective["settings"]["state_dir"] == str(tmp_path / "state")
    assert "raw" not in effective
    assert sorted(effective["secret_env_names"]) == ["ASSET_TOKEN", "GITHUB_SECRET", "OPS_KEY", "REGISTRY_PASSWORD"]
