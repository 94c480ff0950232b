"""wrk's command line and the figures read from its report."""

from __future__ import annotations

import pytest

from bench.loadgen import WrkOutputError, duration_ms, parse_wrk, wrk_argv

REPORT = """\
Running 1s test @ http://127.0.0.1:24991/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   279.56us  236.58us   4.82ms   93.77%
    Req/Sec    30.09k     2.28k   32.28k    81.82%
  Latency Distribution
     50%  234.00us
     75%  332.00us
     90%  450.00us
     99%    1.29ms
  32886 requests in 1.10s, 3.45MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:  29897.89
Transfer/sec:      3.14MB
"""


def test_the_report_gives_throughput_percentiles_and_errors():
    result = parse_wrk(REPORT)
    assert result.rps == 29897.89 and result.requests == 32886
    assert result.p50_ms == pytest.approx(0.234) and result.p99_ms == pytest.approx(1.29)
    assert result.errors == 9


def test_units_of_wrk_durations():
    assert duration_ms("234.00us") == pytest.approx(0.234)
    assert duration_ms("1.5s") == 1500 and duration_ms("2.00m") == 120_000 and duration_ms("3ms") == 3
    with pytest.raises(WrkOutputError):
        duration_ms("fast")


def test_no_report_or_no_distribution_is_an_error():
    with pytest.raises(WrkOutputError):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")
    with pytest.raises(WrkOutputError, match="--latency"):
        parse_wrk("  10 requests in 1.00s, 1KB read\nRequests/sec: 10.00\n")


def test_command():
    assert wrk_argv("http://h:1/", threads=1, connections=32, seconds=4) == [
        "wrk",
        "-t1",
        "-c32",
        "-d4s",
        "--timeout=2s",
        "--latency",
        "http://h:1/",
    ]
    # wrk refuses "300ms" (its -d takes s, m or h): a fraction is rounded up to a whole second
    assert [wrk_argv("http://h:1/", threads=2, connections=8, seconds=s)[3] for s in (0.3, 1, 2.5)] == [
        "-d1s",
        "-d1s",
        "-d3s",
    ]
