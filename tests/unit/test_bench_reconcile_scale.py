"""The reconcile bench point: a host of healthy apps, reconciled by the real engine, reads its table once."""

from __future__ import annotations

from bench.reconcile_scale import run_reconcile_scale


def test_the_reconcile_point_reads_the_table_once_and_changes_nothing():
    result = run_reconcile_scale((1, 30))
    assert result["summary"]["reads"] == [1]
    assert [(p["apps"], p["reads"], p["chain_reads"], p["one_read_per_app_reads"]) for p in result["points"]] == [
        (1, 1, 0, 1),
        (30, 1, 0, 30),
    ]
