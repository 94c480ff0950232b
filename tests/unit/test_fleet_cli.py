"""`deployer rollout` on a controller: bad input is refused before anything is queued; good input queues one
rollout job, with its options and its `job.queued` audit record, for the worker to run."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.audit import AuditLog, Query
from deployer.cli.main import main
from deployer.queue.model import JobKind
from deployer.queue.queue import Queue
from support.configs import app_toml, config_text


@pytest.fixture
def controller(tmp_path: Path) -> Path:
    secret = tmp_path / "fleet.secret"
    secret.write_text("fleet-secret-0123456789abcdef\n")
    hosts = "".join(
        f'[[fleet.hosts]]\nname = "h{i}"\nurl = "http://10.0.0.{i}:8000"\nkey_id = "fleet"\n'
        "insecure_http = true\n"
        f'secret_file = "{secret}"\n'
        for i in (1, 2, 3)
    )
    path = tmp_path / "deployer.toml"
    path.write_text(config_text(tmp_path, tables=f'[fleet]\napps = ["web"]\nbake = 5\n{hosts}'))
    return path


def queued(controller: Path) -> list:
    return Queue.for_state_dir(controller.parent / "state").jobs.jobs()


@pytest.mark.parametrize(
    "args, message",
    [
        (["rollout", "api", "v2"], "app 'api' is not a fleet app (listed: web)"),
        (["rollout", "web", "v2;id"], "is not a valid Docker tag"),
        (["rollout", "web", "v2", "--max-parallel", "0"], "key '--max-parallel': must be a count of hosts from 1 to 3"),
        (["rollout", "web", "v2", "--max-parallel", "4"], "key '--max-parallel': must be a count of hosts from 1 to 3"),
        (
            ["rollout", "web", "v2", "--canary-host", "h9"],
            "key '--canary-host': names no host of [[fleet.hosts]] (h1, h2, h3)",
        ),
        (["rollout", "web", "v2", "--canary-host", "2"], "key '--canary-host': names no host of [[fleet.hosts]]"),
        (
            ["rollout", "web", "v2", "--canary-hosts", "3"],
            "key '--canary-hosts': must be a host's name or a count of hosts from 1 to 2",
        ),
        (
            ["rollout", "web", "v2", "--canary", "h2"],
            "rollout --canary is now --canary-host HOST (a host's name) or --canary-hosts COUNT",
        ),
        (["rollout", "web"], "give the TAG to roll out (or --abort to stop the running rollout)"),
    ],
)
def test_bad_input_is_refused_with_exit_2_and_queues_nothing(controller, capsys, args, message):
    assert main(["-c", str(controller), *args]) == 2
    assert message in capsys.readouterr().err
    assert queued(controller) == []


def test_a_rollout_is_queued_with_its_options_and_recorded(controller, capsys):
    assert (
        main(
            [
                "-c",
                str(controller),
                "rollout",
                "web",
                "v2",
                "--max-parallel",
                "50%",
                "--canary-host",
                "h2",
                "--no-revert",
                "--reason",
                "release day",
            ]
        )
        == 0
    )
    [job] = queued(controller)
    assert (job.app, job.tag, job.kind, job.status) == ("web", "v2", JobKind.ROLLOUT, "queued")
    assert job.source == {"max_parallel": "50%", "canary": "h2", "bake": 5, "revert": False, "reason": "release day"}
    out, err = capsys.readouterr()
    assert out == f"web: queued rollout {job.id} of v2 over h1, h2, h3\n"
    assert "no worker runs on this controller's state folder" in err  # none was started here
    [record] = AuditLog.for_state_dir(controller.parent / "state").query(Query(event=("job.queued",)))
    assert (record.get("job"), record.get("rollout"), record.get("kind")) == (job.id, job.id, JobKind.ROLLOUT)


def test_a_command_of_the_fleet_on_a_deployer_without_fleet_says_so(tmp_path, capsys):
    path = tmp_path / "deployer.toml"
    path.write_text(config_text(tmp_path, app_toml("web", 80, container=8080, blue=8001, green=8002)))
    assert main(["-c", str(path), "fleet", "status"]) == 2
    assert "this deployer is not a controller: it has no [fleet] table" in capsys.readouterr().err


def test_no_warning_while_the_controllers_worker_beats(controller, capsys):
    import time

    Queue.for_state_dir(controller.parent / "state").heartbeat.heartbeat(pid=1, started_at=time.time())
    assert main(["-c", str(controller), "rollout", "web", "v2"]) == 0
    assert "no worker" not in capsys.readouterr().err


# --- --abort -------------------------------------------------------------------------------------------------


def test_an_abort_is_recorded_in_the_queue_and_audited_for_the_worker_to_carry_out(controller, capsys):
    assert main(["-c", str(controller), "rollout", "web", "v2"]) == 0
    [job] = queued(controller)
    capsys.readouterr()
    assert main(["-c", str(controller), "rollout", "web", "--abort", "--reason", "h3 is in maintenance"]) == 0
    out, err = capsys.readouterr()
    assert out == (
        f"web: abort of rollout {job.id} (v2) recorded; the hosts it changed go back unless it was "
        f"started with --no-revert\n"
    )
    assert "the abort is carried out when it next runs" in err  # no worker was started here
    abort = Queue.for_state_dir(controller.parent / "state").rollouts.abort_of(job.id)
    assert abort is not None and abort.reason == "h3 is in maintenance"
    [record] = AuditLog.for_state_dir(controller.parent / "state").query(Query(event=("rollout.aborted",)))
    assert (record.get("rollout"), record.get("app"), record.get("reason")) == (job.id, "web", "h3 is in maintenance")
    assert main(["-c", str(controller), "rollout", "web", "--abort"]) == 0
    assert "was already asked to stop" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["rollout", "web", "--abort"], "no rollout of web is queued or running"),
        (["rollout", "web", "v2", "--abort"], "--abort takes no TAG"),
    ],
)
def test_an_abort_with_nothing_to_stop_or_a_tag_is_refused(controller, capsys, args, message):
    assert main(["-c", str(controller), *args]) != 0
    assert message in capsys.readouterr().err
