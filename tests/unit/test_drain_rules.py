"""Draining: when conntrack says an app is idle, and how long the wait lasts."""

from deployer.plan import drain
from deployer.plan.drain import Census

# `conntrack -L -p tcp --orig-port-dst 1000` on a host (time_wait timeout 120 s, close timeout 10 s).
LINES = [
    "tcp      6 431999 ESTABLISHED src=127.0.0.1 dst=127.0.0.1 sport=41718 dport=1000 src=172.18.0.3 "
    "dst=172.18.0.1 sport=8080 dport=41718 [ASSURED] mark=0 use=1",
    "tcp      6 119 SYN_SENT src=198.18.3.2 dst=198.18.3.1 sport=50000 dport=1000 [UNREPLIED] src=172.18.0.3 "
    "dst=198.18.3.2 sport=8080 dport=50000 mark=0 use=1",
    "tcp      6 119 TIME_WAIT src=127.0.0.1 dst=127.0.0.1 sport=41720 dport=1000 src=172.18.0.3 dst=172.18.0.1 "
    "sport=8080 dport=41720 [ASSURED] mark=0 use=1",
    "tcp      6 60 TIME_WAIT src=127.0.0.1 dst=127.0.0.1 sport=41722 dport=1000 src=172.18.0.3 dst=172.18.0.1 "
    "sport=8080 dport=41722 [ASSURED] mark=0 use=1",
    "tcp      6 9 CLOSE src=127.0.0.1 dst=127.0.0.1 sport=41724 dport=1000 src=172.18.0.3 dst=172.18.0.1 "
    "sport=8080 dport=41724 [ASSURED] mark=0 use=1",
    "tcp      6 2 CLOSE src=127.0.0.1 dst=127.0.0.1 sport=41726 dport=1000 src=172.18.0.3 dst=172.18.0.1 "
    "sport=8080 dport=41726 [ASSURED] mark=0 use=1",
    "conntrack v1.4.7 (conntrack-tools): 6 flow entries have been shown.",
]


def census(lines, settle=2.0):
    return drain.census(lines, settle=settle, time_wait_timeout=120, close_timeout=10)


def test_open_flows_and_flows_closed_within_the_settle_window_count():
    # Open: ESTABLISHED and SYN_SENT. Recent: TIME_WAIT 119 (closed 1 s ago), CLOSE 9 (1 s ago).
    assert census(LINES) == Census(open=2, closed_recently=2)


def test_a_longer_settle_window_counts_older_closes():
    assert census(LINES, settle=61) == Census(open=2, closed_recently=4)


def test_nothing_but_old_closes_is_idle():
    assert census([LINES[3], LINES[5], LINES[-1], ""]) == Census(0, 0)


def test_wait_idle_polls_until_idle():
    counts = iter([Census(3, 0), Census(0, 1), Census(0, 0)])
    clock = iter([0.0, 0.0, 0.25, 0.5, 0.5])
    slept = []
    result = drain.wait_idle(lambda: next(counts), timeout=10, clock=lambda: next(clock), sleep=slept.append)
    assert result == drain.IdleResult(idle=True, open=0, recent=0, waited=0.5)
    assert slept == [0.25, 0.25]


def test_wait_idle_gives_up_at_the_timeout_with_what_is_left():
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    result = drain.wait_idle(lambda: Census(2, 5), timeout=1.0, clock=lambda: now[0], sleep=sleep)
    assert result == drain.IdleResult(idle=False, open=2, recent=5, waited=1.0)


def test_wait_idle_lasts_at_least_min_wait_even_when_quiet_at_once():
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    result = drain.wait_idle(lambda: Census(0, 0), timeout=10, min_wait=1.0, clock=lambda: now[0], sleep=sleep)
    assert result == drain.IdleResult(idle=True, open=0, recent=0, waited=1.0)
