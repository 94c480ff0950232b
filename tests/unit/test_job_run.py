"""One job's run: the handler each job kind gets, which run under the fault policy, the image a redeploy runs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from deployer.queue.model import KINDS, JobKind
from deployer.worker import run


@pytest.mark.parametrize(
    "kind, act, retried",
    [
        ("release", run.release, True),
        ("redeploy", run.redeploy, True),
        ("promote", run.promote, True),
        ("abort", run.abort, True),
        (
            JobKind.ROLLOUT,
            run.roll_out,
            False,
        ),  # bounded by [fleet] host_timeout per host, not by the job's fault policy
    ],
)
def test_each_job_kind_has_its_handler(kind, act, retried):
    assert run.HANDLERS[kind] == run.Handler(act, retried=retried)


def test_every_kind_the_queue_accepts_has_a_handler():
    assert set(run.HANDLERS) == set(KINDS)


@pytest.mark.parametrize(
    "asset, tag, expected",
    [
        (None, "v2", None),  # from the registry: the engine pulls
        ({"name": "image.tar"}, "v2", "127.0.0.1:5000/web:v2"),  # the image an earlier asset left tagged on the host
        ({"name": "image.tar"}, "v1", "127.0.0.1:5000/web:v1"),
    ],
)
def test_the_image_a_redeploy_runs(asset, tag, expected):
    app = SimpleNamespace(image="127.0.0.1:5000/web", asset=asset)
    assert run.asset_image(app, tag) == expected  # type: ignore[arg-type]
