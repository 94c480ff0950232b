"""What a deploy must not touch: other apps, other deploys of the same app, and rules it does not own."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import threading
import time

import pytest

from deployer.adapters.docker_host import DockerHost
from deployer.adapters.iptables import Netfilter
from deployer.errors import PullError
from deployer.plan import rules
from support.integration import IMAGE, TEST_PREFIX_RE, demo_app, http_get, remove_leftovers, run

pytestmark = pytest.mark.integration


def app(name: str, port: int, **overrides) -> str:
    return demo_app(name, external=port, blue=port + 1, green=port + 2, drain=0.5, stop_timeout=3, **overrides)


def version(port: int) -> str:
    return http_get("127.0.0.1", port, timeout=3).split()[0]


class Hammer:
    """A thread that GETs 127.0.0.1:port in a loop and counts every answer and every failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                answer = version(self.port)
                self.answers[answer] = self.answers.get(answer, 0) + 1
            except Exception as exc:  # every kind of failure counts
                self.failures.append(f"{time.time():.3f} {type(exc).__name__}: {exc}")

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def total(self) -> int:
        return sum(self.answers.values()) + len(self.failures)


class ChainWatcher:
    """A thread that reads one app chain again and again and keeps every version it saw."""

    def __init__(self, deployer, app_name: str) -> None:
        self.deployer, self.app = deployer, app_name
        self.seen: list[list[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            chain = self.deployer.chain(self.app)
            if not self.seen or self.seen[-1] != chain:
                self.seen.append(chain)
            self._stop.wait(0.05)

    def __enter__(self) -> ChainWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def window(deployer, app_name: str, kind: str = "deploy") -> tuple[float, float]:
    """Wall-clock start and end of the last finished deploy of an app."""
    started = [e["wall"] for e in deployer.events if e["event"] == f"{kind}.started" and e.get("app") == app_name]
    finished = [e["wall"] for e in deployer.events if e["event"] == f"{kind}.finished" and e.get("app") == app_name]
    return started[-1], finished[-1]


# --- two apps on one host --------------------------------------------------------------------------


def test_deploying_one_app_never_disturbs_another(deployer):
    deployer.configure(app("alpha", 21200), app("beta", 21210))
    engine = deployer.engine()
    engine.deploy("alpha", "v1", actor="test")
    engine.deploy("beta", "v1", actor="test")
    alpha_chain = deployer.chain("alpha")
    assert alpha_chain and version(21200) == "v1" and version(21210) == "v1"

    with Hammer(21200) as hammer, ChainWatcher(deployer, "alpha") as watcher:
        time.sleep(0.3)
        result = deployer.engine().deploy("beta", "v2", actor="test")
        time.sleep(0.3)
    assert result.port_set == "green" and version(21210) == "v2"
    assert hammer.failures == [], hammer.failures[:5]
    assert hammer.answers.get("v1", 0) > 20 and set(hammer.answers) == {"v1"}, hammer.answers
    assert watcher.seen == [alpha_chain]
    assert deployer.chain("alpha") == alpha_chain
    assert len(deployer.containers("alpha")) == 1


def test_two_apps_deploy_at_the_same_time(deployer):
    deployer.configure(app("alpha", 21220), app("beta", 21230))
    errors: list[BaseException] = []
    results = {}

    def deploy(name: str, tag: str, barrier: threading.Barrier) -> None:
        engine = deployer.engine()
        try:
            barrier.wait(timeout=10)
            results[name] = engine.deploy(name, tag, actor=f"thread-{name}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    # From nothing, then an upgrade of both at once: two threads, two engines.
    for tags in (("v1", "v1"), ("v2", "v1")):
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=deploy, args=(name, tag, barrier)) for name, tag in zip(("alpha", "beta"), tags)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
    (a_start, a_end), (b_start, b_end) = window(deployer, "alpha"), window(deployer, "beta")
    assert a_start < b_end and b_start < a_end, "the deploys did not overlap"
    assert (results["alpha"].tag, results["alpha"].port_set) == ("v2", "green")
    assert (results["beta"].tag, results["beta"].port_set) == ("v1", "green")

    # And from two CLI processes.
    processes = {"alpha": deployer.popen("deploy", "alpha", "v1"), "beta": deployer.popen("deploy", "beta", "v2")}
    try:
        outputs = {name: process.communicate(timeout=120)[0] for name, process in processes.items()}
    finally:
        for process in processes.values():
            _stop(process)
    for name, process in processes.items():
        assert process.returncode == 0, outputs[name]
        assert "Traceback" not in outputs[name]
    assert version(21220) == "v1" and version(21230) == "v2"
    statuses = {s.app: s for s in deployer.engine().status()}
    assert statuses["alpha"].rules_match and statuses["beta"].rules_match
    assert (statuses["alpha"].active.port_set, statuses["beta"].active.port_set) == ("blue", "blue")
    assert sorted(c.name for c in deployer.containers()) == [
        f"{deployer.prefix.lower()}-alpha-blue",
        f"{deployer.prefix.lower()}-beta-blue",
    ]


# --- one deploy at a time per app ------------------------------------------------------------------


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


def _wait_for(path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_second_deploy_of_an_app_is_refused_or_waits(deployer):
    deployer.configure(app("web", 21240))
    deployer.engine().deploy("web", "v1", actor="test")
    started = deployer.root / "hook-started"
    deployer.hook("post-healthy", f'touch "{started}-$DEPLOYER_TAG"\nsleep 3\n')

    first = deployer.popen("deploy", "web", "v2")
    try:
        _wait_for(deployer.root / "hook-started-v2")
        t0 = time.monotonic()
        refused = deployer.cli("deploy", "web", "v2")
        assert time.monotonic() - t0 < 5, "a busy app must be refused at once"
        assert refused.returncode == 75, refused.stderr
        assert "Traceback" not in refused.stderr
        reason = [line for line in refused.stderr.splitlines() if line.startswith("deployer: ")]
        assert len(reason) == 1, refused.stderr
        assert "another deploy of app 'web' is running" in reason[0]
        assert f"pid {first.pid}" in reason[0] and "tag v2" in reason[0]
        output = first.communicate(timeout=120)[0]
        assert first.returncode == 0, output
    finally:
        _stop(first)
    assert version(21240) == "v2"

    # With lock_wait the second deploy waits for the first, then runs.
    deployer.configure(app("web", 21240), settings="lock_wait = 30")
    first = deployer.popen("deploy", "web", "v1")
    try:
        _wait_for(deployer.root / "hook-started-v1")
        t0 = time.monotonic()
        waited = deployer.cli("deploy", "web", "v2")
        assert waited.returncode == 0, waited.stderr
        assert time.monotonic() - t0 > 1.5, "the second deploy did not wait"
        output = first.communicate(timeout=120)[0]
        assert first.returncode == 0, output
    finally:
        _stop(first)
    assert waited.stdout.startswith("web: v2 is live on green"), waited.stdout
    assert "replacing v1" in waited.stdout
    assert version(21240) == "v2"


# --- rules the deployer does not own ---------------------------------------------------------------


def _nat_lines() -> list[str]:
    return Netfilter().save_nat().splitlines()


def _filter_chains() -> set[str]:
    saved = run(["iptables-save", "-t", "filter"]).stdout
    return {line[1:].split()[0] for line in saved.splitlines() if line.startswith(":")}


def test_foreign_rules_and_chains_survive_every_operation(deployer):
    tag = f"canary-{deployer.prefix}"
    foreign = f"{deployer.prefix}X"  # shares the prefix, but not "PREFIX-": not the deployer's
    canaries = [
        f"-A PREROUTING -p tcp -m tcp --dport 65001 -m comment --comment {tag}-first -j RETURN",
        f"-A PREROUTING -p tcp -m tcp --dport 65002 -m comment --comment {tag}-last -j {foreign}",
        f"-A OUTPUT -p tcp -m tcp --dport 65001 -m comment --comment {tag}-first -j RETURN",
        f"-A OUTPUT -p tcp -m tcp --dport 65002 -m comment --comment {tag}-last -j RETURN",
        f"-A POSTROUTING -p tcp -m tcp --dport 65001 -m comment --comment {tag}-first -j RETURN",
        f"-A POSTROUTING -p tcp -m tcp --dport 65002 -m comment --comment {tag}-last -j RETURN",
        f"-A {foreign} -p tcp -m tcp --dport 65003 -m comment --comment {tag}-chain -j RETURN",
    ]
    # "-first" goes at the top of its chain, "-last" at the bottom.
    setup = ["*nat", f":{foreign} - [0:0]", canaries[-1]]
    for rule in canaries[:-1]:
        chain = rule.split()[1]
        setup.append(rule.replace(f"-A {chain}", f"-I {chain} 1", 1) if rule.endswith("-first -j RETURN") else rule)
    docker_nat = {c for c in ("DOCKER",) if any(line.startswith(f":{c} ") for line in _nat_lines())}
    docker_filter = {c for c in _filter_chains() if c.startswith("DOCKER")}
    assert "DOCKER" in docker_nat and "DOCKER-USER" in docker_filter

    def ours() -> list[str]:
        return [line for line in _nat_lines() if tag in line or line.startswith(f":{foreign} ")]

    def check() -> None:
        lines = ours()
        assert [line for line in lines if line.startswith("-A")] == canaries
        assert [line.split()[0] for line in lines if line.startswith(":")] == [f":{foreign}"]
        nat_chains = {line[1:].split()[0] for line in _nat_lines() if line.startswith(":")}
        assert docker_nat <= nat_chains
        assert docker_filter <= _filter_chains()

    netfilter = Netfilter()
    try:
        netfilter.restore("\n".join(setup + ["COMMIT", ""]))
        check()
        deployer.configure(app("web", 21250))
        engine = deployer.engine()
        engine.deploy("web", "v1", actor="test")
        check()
        engine.deploy("web", "v2", actor="test")
        check()
        assert engine.rollback("web", actor="test").tag == "v1"
        check()
        with pytest.raises(PullError):
            engine.deploy("web", "v404", actor="test")
        check()
        # A drifted chain, repaired by reconcile: still nothing foreign is touched.
        netfilter.restore(f"*nat\n-F {deployer.prefix}-web\nCOMMIT\n")
        cli = deployer.cli("reconcile")
        assert cli.returncode == 0 and "repaired: rules of web" in cli.stdout, cli.stdout + cli.stderr
        check()
        assert version(21250) == "v1"
        # The deployer's own teardown (what the fixture runs) leaves them too.
        deployer.teardown()
        check()
    finally:
        with contextlib.suppress(Exception):
            live = _nat_lines()
            deletes = [f"-D {rule[3:]}" for rule in canaries[:-1] if rule in live]
            netfilter.restore("\n".join(["*nat", *deletes, f"-F {foreign}", f"-X {foreign}", "COMMIT", ""]))
    assert not any(tag in line or line.startswith(f":{foreign} ") for line in _nat_lines())


# --- leftovers of a killed test run ----------------------------------------------------------------


def test_remove_leftovers_removes_what_a_dead_run_left_and_nothing_alive(deployer):
    # A live test of this session, with a container and chains.
    deployer.configure(app("web", 21260))
    deployer.engine().deploy("web", "v1", actor="test")
    live_chain = deployer.chain("web")

    dead = f"DT{secrets.token_hex(3).upper()[:5]}"
    while dead == deployer.prefix:
        dead = f"DT{secrets.token_hex(3).upper()[:5]}"
    docker = DockerHost("unix:///var/run/docker.sock")
    netfilter = Netfilter()
    leftover = None
    try:
        netfilter.restore(
            "\n".join(
                [
                    "*nat",
                    f":{dead} - [0:0]",
                    f":{dead}-web - [0:0]",
                    f":{dead}-POSTROUTING - [0:0]",
                    f"-A {dead} -j {dead}-web",
                    f"-A {dead}-web -p tcp -m tcp --dport 21269 -j DNAT --to-destination 192.0.2.1:8080",
                    f"-I OUTPUT 1 -m addrtype --dst-type LOCAL -j {dead}",
                    f"-A POSTROUTING -j {dead}-POSTROUTING",
                    "COMMIT",
                    "",
                ]
            )
        )
        leftover = docker.client.containers.create(
            f"{IMAGE}:v1",
            name=f"{dead.lower()}-web-blue",
            labels={
                "deployer.owner": dead.lower(),
                "deployer.app": "web",
                "deployer.set": "blue",
                "test.deployer": "1",
            },
        )
        assert TEST_PREFIX_RE.match(dead)

        remove_leftovers()

        nat = deployer.nat()
        assert not [chain for chain in nat.chains if chain == dead or chain.startswith(f"{dead}-")]
        assert not [rule for chain_rules in nat.chains.values() for rule in chain_rules if dead in rule]
        assert docker.inspect(leftover.id) is None
        # What belongs to a live test is still there, and still serves.
        assert deployer.chain("web") == live_chain
        assert len(deployer.containers("web")) == 1 and version(21260) == "v1"
    finally:
        if leftover is not None:
            docker.remove(leftover.id)
        text = rules.render_teardown(deployer.nat(), rules.ChainNames(dead))
        if text:
            netfilter.restore(text)
