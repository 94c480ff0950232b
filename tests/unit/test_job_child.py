"""A job's own process: the command line the worker starts it with, and the worker's checks over its probes."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from deployer.errors import DockerUnavailable
from deployer.worker import child
from deployer.worker.loop import host_checks


def test_a_job_runs_in_the_entry_module_with_its_config_id_and_attempt():
    config = SimpleNamespace(path="/etc/deployer/deployer.toml")
    job = SimpleNamespace(id="j-1", attempts=2)
    assert child.job_argv(config, job, python="/opt/deployer/.venv/bin/python") == [  # type: ignore[arg-type]
        "/opt/deployer/.venv/bin/python",
        "-m",
        "deployer.cli.job",
        "--config",
        "/etc/deployer/deployer.toml",
        "--job",
        "j-1",
        "--attempt",
        "2",
    ]
    assert importlib.util.find_spec(child.ENTRY_MODULE) is not None


def test_the_launcher_starts_the_job_with_the_package_importable():
    started = []
    launch = child.process_launcher(
        SimpleNamespace(path="d.toml"),  # type: ignore[arg-type]
        lambda argv, env: started.append((argv, env)) or "process",
    )
    assert launch(SimpleNamespace(id="j-2", attempts=1)) == "process"  # type: ignore[arg-type]
    argv, env = started[0]
    assert argv[1:] == ["-m", "deployer.cli.job", "--config", "d.toml", "--job", "j-2", "--attempt", "1"]
    assert env["PYTHONPATH"].split(":")[0] == str(Path(child.__file__).resolve().parents[2])


def ok() -> None:
    return None


def docker_down() -> None:
    raise DockerUnavailable("Docker does not answer")


def broken() -> None:
    raise ValueError("x" * 300)


@pytest.mark.parametrize(
    "probes, expected",
    [
        ((ok, ok), ("ok", "ok")),
        ((docker_down, ok), ("Docker does not answer", "ok")),
        ((ok, broken), ("ok", "ValueError: " + "x" * 200)),  # any error reports, cut short; none ends the worker
    ],
)
def test_the_worker_checks_report_each_probe(probes, expected):
    assert host_checks(probes)() == expected
