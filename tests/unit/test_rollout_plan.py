"""The rollout plan as exact values: batch sizes, percentages, the canary batch, skips and what a failure reverts."""

from __future__ import annotations

import pytest

from deployer.plan import rollout as plan
from deployer.plan.rollout import HostStep, Options

HOSTS = ["h1", "h2", "h3", "h4", "h5"]


@pytest.mark.parametrize(
    "spec, count, size",
    [
        (1, 5, 1),
        (2, 5, 2),
        (5, 5, 5),
        ("50%", 5, 3),
        ("50%", 4, 2),
        ("34%", 3, 2),
        ("33%", 3, 1),
        ("1%", 5, 1),
        ("100%", 5, 5),
        ("20%", 5, 1),
        ("21%", 5, 2),
        (9, 3, 3),
    ],
)
def test_batch_size_rounds_a_percentage_up_and_is_never_below_one(spec, count, size):
    assert plan.batch_size(spec, count) == size


def test_batches_of_max_parallel_in_the_fleets_order():
    assert plan.batches(HOSTS, max_parallel=2) == [["h1", "h2"], ["h3", "h4"], ["h5"]]
    assert plan.batches(HOSTS, max_parallel=1) == [["h1"], ["h2"], ["h3"], ["h4"], ["h5"]]
    assert plan.batches(HOSTS, max_parallel="50%") == [["h1", "h2", "h3"], ["h4", "h5"]]


def test_a_canary_host_goes_first_alone_and_the_rest_keep_their_order():
    assert plan.batches(HOSTS, max_parallel=2, canary="h3") == [["h3"], ["h1", "h2"], ["h4", "h5"]]


def test_a_canary_count_takes_the_first_hosts_as_the_first_batch():
    assert plan.batches(HOSTS, max_parallel=3, canary=2) == [["h1", "h2"], ["h3", "h4", "h5"]]


def test_the_plan_skips_the_hosts_already_on_the_tag_and_keeps_each_hosts_previous_tag():
    current = {"h1": "v1", "h2": "v2", "h3": "v1", "h4": None, "h5": "v1"}
    steps = plan.plan(HOSTS, current, "v2", Options(max_parallel=2, canary="h3"))
    assert steps == [
        HostStep("h3", 0, "v1"),
        HostStep("h1", 1, "v1"),
        HostStep("h4", 1, None),
        HostStep("h5", 2, "v1"),
        HostStep("h2", -1, "v2", plan.SKIPPED),
    ]


def test_a_canary_already_on_the_tag_is_skipped_and_the_rest_batch_as_usual():
    current = {"h1": "v1", "h2": "v1", "h3": "v2"}
    steps = plan.plan(["h1", "h2", "h3"], current, "v2", Options(max_parallel=1, canary="h3"))
    assert steps == [HostStep("h1", 0, "v1"), HostStep("h2", 1, "v1"), HostStep("h3", -1, "v2", plan.SKIPPED)]


def test_a_failure_reverts_the_done_hosts_and_leaves_the_rest():
    steps = [
        HostStep("h1", 0, "v1", plan.DONE),
        HostStep("h2", 1, "v0", plan.DONE),
        HostStep("h3", 1, "v1", plan.FAILED),
        HostStep("h4", 2, "v1", plan.PENDING),
        HostStep("h5", -1, "v2", plan.SKIPPED),
    ]
    assert plan.reverts(steps, {"h3": "v1"}) == [("h1", "v1"), ("h2", "v0")]


def test_a_failed_host_whose_tag_changed_goes_back_too():
    steps = [HostStep("h1", 0, "v1", plan.DONE), HostStep("h2", 1, "v1", plan.FAILED)]
    assert plan.reverts(steps, {"h2": "v2"}) == [("h1", "v1"), ("h2", "v1")]


def test_a_host_that_had_nothing_or_does_not_answer_is_not_reverted():
    steps = [HostStep("h1", 0, None, plan.DONE), HostStep("h2", 1, "v1", plan.FAILED)]
    assert plan.reverts(steps, {"h2": None}) == []


def test_a_revert_that_began_is_finished():
    steps = [
        HostStep("h1", 0, "v1", plan.REVERTING),
        HostStep("h2", 0, "v1", plan.REVERTED),
        HostStep("h3", 1, "v1", plan.FAILED),
    ]
    assert plan.reverts(steps, {"h3": "v1"}) == [("h1", "v1")]


def test_the_odd_ones_are_the_hosts_that_differ_from_most():
    assert plan.odd_ones({"h1": "v2", "h2": "v1", "h3": "v1"}) == ["h1"]
    assert plan.odd_ones({"h1": "v1", "h2": "v1"}) == []
    assert plan.odd_ones({"h1": "v2", "h2": "v1"}) == ["h2"]  # a tie: the first host's tag is the usual one
