"""The console benchmark's smoke: a tiny log, every page rendered through the real app, the table printed."""

from __future__ import annotations

import json

from bench import console_bench


def test_the_console_bench_renders_each_page_and_writes_its_table(tmp_path, capsys):
    out = tmp_path / "console.json"
    assert console_bench.main(["--entries", "300", "--apps", "3", "--rounds", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["page"] for row in result["pages"]] == [
        "overview",
        "audit, first page",
        "audit, last page (chain over all)",
        "an app's page",
    ]
    assert result["pages"][2]["path"] == "/console/audit?before=51"
    assert all(row["ms"]["n"] == 2 and row["bytes"] > 1000 for row in result["pages"])
    printed = capsys.readouterr().out
    assert "console: 300 audit entries, 3 apps, 2 rounds a page" in printed and "| overview " in printed
