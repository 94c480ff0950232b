"""The netfilter adapter against stand-in programs on PATH: real processes, spawned as the hot path spawns them.

Each stand-in is a small shell script that records its arguments and input and answers as the real tool does
in the case under test, so the error mapping (the stderr excerpt, "not installed", conntrack's exit code 1 for
"nothing matched") is checked without root.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deployer.adapters.iptables import Netfilter
from deployer.adapters.nftables import Nftables
from deployer.errors import ConntrackError, RulesError


@pytest.fixture
def tools(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))

    def tool(name: str, body: str) -> Path:
        path = bin_dir / name
        record = f'echo "$*" > {tmp_path}/{name}.args\n/bin/cat > {tmp_path}/{name}.stdin'
        path.write_text(f"#!/bin/sh\n{record}\n{body}\n")
        path.chmod(0o755)
        return tmp_path

    return tool


def test_a_restore_passes_the_transaction_on_stdin_with_the_wait_and_noflush(tools):
    out = tools("iptables-restore", "exit 0")
    Netfilter(wait_seconds=7).restore("*nat\n-A X -j ACCEPT\nCOMMIT\n")
    assert (out / "iptables-restore.args").read_text() == "-w 7 --noflush\n"
    assert (out / "iptables-restore.stdin").read_text() == "*nat\n-A X -j ACCEPT\nCOMMIT\n"


def test_a_refused_restore_is_a_rules_error_with_the_tools_words_and_an_excerpt(tools):
    tools("iptables-restore", "echo 'iptables-restore: line 2 failed' >&2; exit 1")
    with pytest.raises(RulesError, match="refused the transaction: iptables-restore: line 2 failed$") as caught:
        Netfilter().restore("*nat\n-A X -j NOPE\nCOMMIT\n")
    assert caught.value.context["rules"] == "*nat\n-A X -j NOPE\nCOMMIT"


def test_a_missing_tool_says_it_is_not_installed(tools):
    with pytest.raises(RulesError, match="^iptables-restore is not installed$"):
        Netfilter().restore("*nat\nCOMMIT\n")
    with pytest.raises(ConntrackError, match="^conntrack is not installed$"):
        Netfilter().conntrack_delete(["-p", "tcp"])


def test_a_chain_that_is_not_there_lists_as_none_and_another_failure_is_an_error(tools):
    tools("iptables", "echo 'iptables v1.8.9 (nf_tables): chain X in table nat is incompatible' >&2; exit 1")
    assert Netfilter().list_chain("X") is None
    tools("iptables", "echo 'Permission denied (you must be root)' >&2; exit 4")
    with pytest.raises(RulesError, match="iptables -S X failed: Permission denied"):
        Netfilter().list_chain("X")


def test_a_chain_lists_as_its_rules_only(tools):
    out = tools("iptables", "printf -- '-N X\\n-A X -p tcp -m tcp --dport 1 -j ACCEPT\\n'")
    assert Netfilter(wait_seconds=3).list_chain("X") == ["-A X -p tcp -m tcp --dport 1 -j ACCEPT"]
    assert (out / "iptables.args").read_text() == "-w 3 -t nat -S X\n"


def test_conntrack_exit_1_with_nothing_matched_is_zero_and_without_its_words_a_failure(tools):
    tools("conntrack", "echo 'conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.' >&2; exit 1")
    assert Netfilter().conntrack_delete(["-p", "udp"]) == 0
    tools("conntrack", "echo 'conntrack v1.4.7: 3 flow entries have been deleted.' >&2; exit 0")
    assert Netfilter().conntrack_delete(["-p", "udp"]) == 3
    tools("conntrack", "echo 'Operation failed: invalid parameters' >&2; exit 1")
    with pytest.raises(ConntrackError, match="conntrack -L -p udp failed: Operation failed: invalid parameters"):
        Netfilter().conntrack_list(["-p", "udp"])


def test_no_terminal_is_given_to_the_tools(tools):
    out = tools("conntrack", "if [ -t 0 ] || [ -t 1 ]; then echo tty >&2; exit 9; fi; echo ok")
    assert Netfilter().conntrack_list(["-L"]) == ["ok"]
    assert os.path.exists(out / "conntrack.args")


def test_the_hot_path_spawns_its_tools_without_the_sh_wrapper():
    import sys

    import deployer.adapters.iptables as netfilter

    # sh's pty and reader threads cost some 7 ms a call; the flip spawns three commands.
    assert "sh" not in vars(netfilter) and netfilter.subprocess is sys.modules["subprocess"]


def test_a_missing_libnftables_says_it_is_not_installed_and_how_to_install_it():
    with pytest.raises(
        RulesError,
        match=r"^libnftables-missing\.so\.1 is not installed \(Debian: apt-get install "
        r"libnftables1\)$",
    ):
        Nftables(library="libnftables-missing.so.1").run("list tables")
