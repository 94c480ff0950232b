"""What a script relies on, the same for every command: the exit codes of each command's main failure kinds, and
--json printing one JSON document and nothing else on stdout, an error included.

Driven through `main([...])` with configs in tmp, a fake engine where a command needs Docker and netfilter, a
small HTTP server on loopback for `redeploy`, and fleet hosts on loopback ports where nothing listens. No root,
no Docker, no netfilter."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deployer.cli import main as main_module
from deployer.cli.main import main, status_exit_code
from deployer.errors import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_REFUSED,
    EXIT_TEMPFAIL,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    DockerUnavailable,
    HealthCheckFailed,
    LockError,
    NothingToRollBack,
    RegistryUnavailable,
    UnknownApp,
)
from deployer.host.engine import AppStatus, DeployResult
from support.configs import app_toml, config_text

JOB = "job-0123456789abcdef"
RESULT = DeployResult(
    app="web", tag="v2", port_set="green", digest=None, container="deployer-web-green", previous_tag="v1"
)


class FakeEngine:
    """What the commands call on the engine: each call raises `error` when one is given."""

    def __init__(self, error: Exception | None = None, rules_match: bool = True) -> None:
        self.error, self.rules_match = error, rules_match

    def _maybe_raise(self) -> None:
        if self.error is not None:
            raise self.error

    def deploy(self, app, tag, *, actor, canary_split=None):
        self._maybe_raise()
        return RESULT

    def rollback(self, app, *, actor):
        self._maybe_raise()
        return RESULT

    def status(self, app=None):
        self._maybe_raise()
        return [
            AppStatus(
                app="web", active=None, previous=None, rules_match=self.rules_match, live_rules=[], wanted_rules=[]
            )
        ]

    def rules_text(self, app, *, ipv6=False):
        self._maybe_raise()
        return "*nat\nCOMMIT\n"

    def reconcile(self, app=None, *, actor):
        self._maybe_raise()
        return []


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "deployer.toml"
    path.write_text(config_text(tmp_path, app_toml("web", 8000)))
    (tmp_path / "state").mkdir()  # status reports a state folder it cannot check as a fault of the disk
    return path


@pytest.fixture
def engine(monkeypatch):
    """Install a FakeEngine for the commands that build one: engine(error=..., rules_match=...)."""

    def install(**kwargs) -> FakeEngine:
        fake = FakeEngine(**kwargs)
        monkeypatch.setattr(main_module, "build_engine", lambda config: fake)
        return fake

    return install


class Answers(BaseHTTPRequestHandler):
    """A receiver's answers, scripted: POST /deploy gets `deploy_status`, GET /jobs/<id> a job that `job_status`."""

    deploy_status = 202
    job_status = "failed"

    def do_POST(self):
        self._answer(self.deploy_status, {"job": JOB} if self.deploy_status == 202 else {"error": "no"})

    def do_GET(self):
        self._answer(
            200,
            {
                "id": JOB,
                "app": "web",
                "status": self.job_status,
                "reason": "the health gate failed",
                "steps": [{"name": "pull", "outcome": "ok"}],
            },
        )

    def _answer(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    """A loopback HTTP server whose answers each test sets: receiver(deploy_status, job_status) -> its URL."""
    servers = []

    def start(deploy_status: int = 202, job_status: str = "failed") -> str:
        handler = type("Scripted", (Answers,), {"deploy_status": deploy_status, "job_status": job_status})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def redeploy(tmp_path: Path, url: str, *extra: str) -> list[str]:
    secret = tmp_path / "alice.secret"
    secret.write_text("alice-secret-0123456789abcdef\n")
    return ["redeploy", "web", "v2", "--url", url, "--key-id", "alice", "--secret-file", str(secret), *extra]


@pytest.mark.parametrize(
    "command, error, code",
    [
        (["deploy", "web", "v2"], HealthCheckFailed("the new instance did not pass"), EXIT_FAILED),
        (["deploy", "web", "v2"], LockError("app web is locked by another deploy"), EXIT_TEMPFAIL),
        (["deploy", "web", "v2"], DockerUnavailable("cannot reach Docker"), EXIT_UNAVAILABLE),
        (["deploy", "web", "v2"], RegistryUnavailable("registry.example:5000 does not answer"), EXIT_UNAVAILABLE),
        (["deploy", "web", "v2"], UnknownApp("no app 'web'"), EXIT_USAGE),
        (["rollback", "web"], NothingToRollBack("web has no previous release"), EXIT_USAGE),
        (["rollback", "web"], DockerUnavailable("cannot reach Docker"), EXIT_UNAVAILABLE),
        (["rules", "web"], DockerUnavailable("cannot reach Docker"), EXIT_UNAVAILABLE),
        (["status"], DockerUnavailable("cannot reach Docker"), EXIT_UNAVAILABLE),
        (["status", "--json"], DockerUnavailable("cannot reach Docker"), EXIT_UNAVAILABLE),
        (["reconcile"], LockError("the netfilter lock is held"), EXIT_TEMPFAIL),
    ],
    ids=lambda value: (
        " ".join(value)
        if isinstance(value, list)
        else type(value).__name__
        if isinstance(value, Exception)
        else str(value)
    ),
)
def test_an_engine_error_gives_its_class_exit_code(config_file, engine, capsys, command, error, code):
    engine(error=error)
    assert main(["-c", str(config_file), *command]) == code
    shown = capsys.readouterr()
    assert f"deployer: {error}" in shown.err or f"fault docker: {error}" in shown.out


@pytest.mark.parametrize("rules_match, code", [(True, 0), (False, EXIT_FAILED)])
def test_status_exits_1_while_the_rules_differ(config_file, engine, capsys, rules_match, code):
    engine(rules_match=rules_match)
    assert main(["-c", str(config_file), "status"]) == code
    assert ("RULES DIFFER" in capsys.readouterr().out) is not rules_match


@pytest.mark.parametrize(
    "rules_match, faults, code",
    [
        ([True, True], [], 0),
        ([], [], 0),
        ([True, False], [], EXIT_FAILED),
        ([True], ["fault docker: down since 10:00"], EXIT_FAILED),
    ],
)
def test_status_exit_code(rules_match, faults, code):
    assert status_exit_code(rules_match, faults) == code


@pytest.mark.parametrize(
    "argv, code",
    [
        (["deploy", "web"], EXIT_USAGE),  # argparse: a missing argument
        (["deploy", "web", "v2", "--bake", "soon"], EXIT_USAGE),
        (["canary", "web", "100"], EXIT_USAGE),
        (["audit", "--outcome", "bogus"], EXIT_USAGE),
        (["rollout", "web", "v2", "--canary-hosts", "two"], EXIT_USAGE),
        (["no-such-command"], EXIT_USAGE),
    ],
)
def test_usage_errors_exit_2(argv, code, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == code


@pytest.mark.parametrize(
    "argv",
    [
        ["deploy", "web", "v2", "--sticky"],
        ["deploy", "web", "v2", "--canary", "10", "--seed", "7"],
        ["uninstall"],
    ],
)
def test_flags_that_do_not_go_together_exit_2_before_anything_is_done(config_file, engine, argv):
    engine(error=AssertionError("the engine must not be called"))
    assert main(["-c", str(config_file), *argv]) == EXIT_USAGE


def test_an_invalid_config_exits_2(tmp_path):
    path = tmp_path / "deployer.toml"
    path.write_text("[deployer]\nbogus = 1\n")
    assert main(["-c", str(path), "status"]) == EXIT_USAGE
    assert main(["-c", str(tmp_path / "missing.toml"), "rules", "web"]) == EXIT_USAGE


def test_audit_show_of_an_unknown_job_exits_1(config_file):
    assert main(["-c", str(config_file), "audit", "show", "job-nope"]) == EXIT_FAILED


@pytest.mark.parametrize(
    "deploy_status, job_status, extra, code",
    [
        (202, "succeeded", ["--wait"], 0),
        (202, "failed", [], 0),  # queued: that is all it waits for
        (202, "failed", ["--wait"], EXIT_FAILED),
        (202, "superseded", ["--wait"], EXIT_FAILED),
        (429, "failed", [], EXIT_TEMPFAIL),
        (503, "failed", [], EXIT_TEMPFAIL),
        (401, "failed", [], EXIT_REFUSED),
        (403, "failed", [], EXIT_REFUSED),
        (422, "failed", [], EXIT_REFUSED),
    ],
)
def test_redeploy_tells_each_answer_apart(tmp_path, receiver, capsys, deploy_status, job_status, extra, code):
    assert main(redeploy(tmp_path, receiver(deploy_status, job_status), *extra, "--timeout", "5")) == code
    if deploy_status in (429, 503):
        assert f"the server refused the request ({deploy_status})" in capsys.readouterr().err


def test_redeploy_to_a_server_that_does_not_answer_exits_69(tmp_path, capsys):
    assert main(redeploy(tmp_path, "http://127.0.0.1:9")) == EXIT_UNAVAILABLE
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["127.0.0.1:9", "ftp://127.0.0.1:9"])
def test_redeploy_to_a_url_without_its_scheme_exits_2(tmp_path, url):
    assert main(redeploy(tmp_path, url)) == EXIT_USAGE


def test_redeploy_with_an_unreadable_secret_file_exits_2(tmp_path):
    argv = redeploy(tmp_path, "http://127.0.0.1:9")
    argv[argv.index("--secret-file") + 1] = str(tmp_path / "missing")
    assert main(argv) == EXIT_USAGE


def test_redeploy_lists_no_config_flag(capsys):
    with pytest.raises(SystemExit):
        main(["redeploy", "--help"])
    assert "--config" not in capsys.readouterr().out


def test_every_code_is_in_the_table_the_help_prints(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    shown = capsys.readouterr().out
    for code, meaning in EXIT_CODES.items():
        assert f"{code:<4} {meaning}" in shown


# --- --json ---------------------------------------------------------------------------------------------


@pytest.fixture
def controller(tmp_path: Path) -> Path:
    """A controller of two hosts on loopback ports where nothing listens."""
    secret = tmp_path / "fleet.secret"
    secret.write_text("fleet-secret-0123456789abcdef\n")
    hosts = "".join(
        f'[[fleet.hosts]]\nname = "h{i}"\nurl = "http://127.0.0.1:{i}"\nkey_id = "fleet"\nsecret_file = "{secret}"\n'
        for i in (9, 13)
    )
    path = tmp_path / "controller" / "deployer.toml"
    path.parent.mkdir()
    path.write_text(config_text(path.parent, tables=f'[fleet]\napps = ["web"]\n{hosts}'))
    return path


def one_document(out: str):
    """The whole of stdout parsed as one JSON document (json.loads refuses anything before or after it)."""
    return json.loads(out)


@pytest.mark.parametrize(
    "command, expected",
    [
        (["deploy", "web", "v2", "--json"], {"app": "web", "tag": "v2", "port_set": "green", "previous_tag": "v1"}),
        (["rollback", "web", "--json"], {"app": "web", "tag": "v2"}),
        (
            ["rules", "web", "--json"],
            {"app": "web", "backend": "iptables", "family": "ipv4", "transaction": "*nat\nCOMMIT\n"},
        ),
        (["audit", "--json"], {"entries": []}),
        (["audit", "verify", "--json"], {"ok": True}),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_a_command_prints_one_json_document(config_file, engine, capsys, command, expected):
    engine()
    assert main(["-c", str(config_file), *command]) == 0
    document = one_document(capsys.readouterr().out)
    assert {key: document.get(key) for key in expected} == expected


def test_status_prints_one_document_with_each_app(config_file, engine, capsys):
    engine(rules_match=False)
    assert main(["-c", str(config_file), "status", "--json"]) == EXIT_FAILED
    [status] = one_document(capsys.readouterr().out)
    assert (status["app"], status["rules_match"]) == ("web", False)


@pytest.mark.parametrize(
    "command, code",
    [
        (["deploy", "web", "v2", "--json"], EXIT_FAILED),
        (["audit", "show", "job-nope", "--json"], EXIT_FAILED),
    ],
)
def test_an_error_with_json_is_a_json_document_too(config_file, engine, capsys, command, code):
    engine(error=HealthCheckFailed("the new instance did not pass its health gate"))
    assert main(["-c", str(config_file), *command]) == code
    shown = capsys.readouterr()
    document = one_document(shown.out)
    assert document["exit_code"] == code and document["error"] in shown.err


@pytest.mark.parametrize(
    "extra, job_status, code",
    [
        ([], "failed", 0),
        (["--wait"], "succeeded", 0),
        (["--wait"], "failed", EXIT_FAILED),
    ],
)
def test_redeploy_json(tmp_path, receiver, capsys, extra, job_status, code):
    assert main(redeploy(tmp_path, receiver(202, job_status), "--json", "--timeout", "5", *extra)) == code
    document = one_document(capsys.readouterr().out)
    assert document["job" if not extra else "id"] == JOB
    if extra:
        assert document["status"] == job_status


def test_redeploy_json_when_the_server_does_not_answer(tmp_path, capsys):
    assert main(redeploy(tmp_path, "http://127.0.0.1:9", "--json")) == EXIT_UNAVAILABLE
    assert one_document(capsys.readouterr().out)["exit_code"] == EXIT_UNAVAILABLE


@pytest.mark.parametrize("extra", [[], ["--wait", "--timeout", "0"]])
def test_rollout_json(controller, capsys, extra):
    code = main(["-c", str(controller), "rollout", "web", "v2", "--canary-host", "h9", "--json", *extra])
    document = one_document(capsys.readouterr().out)
    assert (document["app"], document["tag"]) == ("web", "v2")
    if extra:  # no worker runs here: the rollout is still queued when --wait gives up
        assert (code, document["status"], document["done"]) == (EXIT_FAILED, "queued", False)
    else:
        assert (code, document["canary"], document["hosts"]) == (0, "h9", ["h9", "h13"])


def test_fleet_status_json_names_each_host_that_does_not_answer(controller, capsys):
    assert main(["-c", str(controller), "fleet", "status", "--json"]) == EXIT_FAILED
    hosts = one_document(capsys.readouterr().out)["web"]
    assert sorted(hosts) == ["h13", "h9"] and all("error" in host for host in hosts.values())
