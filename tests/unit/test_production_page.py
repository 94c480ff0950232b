"""The "Production host" page's steps: the ones a fresh Debian tree runs, and the app they configure loads."""

from __future__ import annotations

from pathlib import Path

from deployer import config
from support import production_page

REPO = Path(__file__).resolve().parents[2]


def test_the_page_installs_sets_up_writes_the_app_checks_and_starts_in_that_order():
    steps = production_page.steps()
    assert [step.splitlines()[0].split(" <<")[0] for step in steps] == [
        "apt-get update && apt-get install -y git python3 docker.io iptables conntrack iproute2 systemd",
        "deployer setup",
        "cat >> /etc/deployer/deployer.toml",
        "deployer -c /etc/deployer/deployer.toml check",
        "systemctl enable --now deployer-serve",
    ]
    assert "/opt/deployer/scripts/install-deps --python" in steps[0].splitlines()


def test_a_tree_runs_every_step_but_the_clone_and_systemctl():
    in_a_tree = production_page.steps_in_a_tree()
    assert len(in_a_tree) == 4 and in_a_tree[1] == "deployer setup"
    assert not any("git clone" in step or "systemctl" in step for step in in_a_tree)
    assert in_a_tree[0].splitlines()[1:] == [
        "/opt/deployer/scripts/install-deps --python",
        "ln -sf /opt/deployer/.venv/bin/deployer /usr/local/bin/deployer",
    ]


def test_the_example_config_with_the_pages_app_loads(tmp_path):
    """What `deployer setup` writes, and the page's app appended, is a config the real loader takes."""
    for name in ("github-secret", "operators/admin"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("0123456789abcdef0123456789abcdef\n")
    path = tmp_path / "deployer.toml"
    path.write_text((REPO / "deploy/deployer.toml.example").read_text() + production_page.app_keys())
    loaded = config.load(path, environ={})
    web = loaded.app("web")
    assert (web.image, web.ports[0].external, web.health.path) == ("registry.example.com/web", 80, "/healthz")
    assert loaded.settings.state_dir == Path("/var/lib/deployer/state")
    assert loaded.server.user == "deployer"
