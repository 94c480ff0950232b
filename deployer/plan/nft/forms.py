"""The rule forms of the table's chains (not the app chains): each as iptables-save prints it and as `nft list` does.

A rule of no known form is refused before anything is applied, and one read back comes as a comment that never
equals a wanted rule. Comments cross as they are: nft takes at most COMMENT_LIMIT characters and no double quote.
"""

from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass

from deployer.errors import RulesError
from deployer.plan.nft.family import IP, Family
from deployer.plan.nft.layout import COMMENT_LIMIT
from deployer.plan.rules import save_string

CANNOT = 'the nftables backend cannot express this rule (it needs backend = "iptables" for now)'


def written_comment(saved: str, body: str) -> str:
    """A rule's comment as iptables-save quoted it, unquoted; RulesError when nft cannot write it."""
    comment = _unsave(saved)
    if '"' in comment or len(comment) > COMMENT_LIMIT:
        raise RulesError(
            f"the nftables backend cannot write the comment {comment!r}: nft takes at most "
            f"{COMMENT_LIMIT} characters and no double quote",
            rules=body,
        )
    return comment


def _unsave(value: str) -> str:
    """iptables-save's quoting undone (the inverse of rules.save_string)."""
    if not value.startswith('"'):
        return value
    return re.sub(r"\\(.)", r"\1", value[1:-1])


def _fields(family: Family) -> tuple[dict[str, str], dict[str, str]]:
    """Each field's pattern in iptables-save's text and in nft's; nft prints a whole-address prefix bare."""
    iptables = {
        "p": r"tcp|udp",
        "port": r"\d+",
        "to": r"\d+",
        "addr": family.address,
        "src": rf"(?:{family.address})/\d+",
        "dst": rf"(?:{family.address})/\d+",
        "target": r"[A-Za-z0-9_-]+",
        "out": r"[A-Za-z0-9_.-]+",
        "comment": r'"(?:[^"\\]|\\.)*"|[A-Za-z0-9_-]+',
    }
    return iptables, {
        **iptables,
        "src": rf"(?:{family.address})(?:/\d+)?",
        "dst": rf"(?:{family.address})(?:/\d+)?",
        "out": r'"[A-Za-z0-9_.-]+"',
        "comment": r'"[^"]*"',
    }


@dataclass(frozen=True)
class RuleForm:
    """One rule of a chain the backend can write: its iptables-save body (after `-A CHAIN `) and its nft text."""

    iptables: str
    nft: str


# <ip> is the family's keyword (ip, ip6) and <bits> the length of a whole address (32, 128): forms().
_TEMPLATES = (
    RuleForm("-m addrtype --dst-type LOCAL -j {target}", "fib daddr type local jump {target}"),
    # IPv6's OUTPUT jump leaves ::1 alone (rules.builtin_jumps).
    RuleForm(
        "! -d {dst} -m addrtype --dst-type LOCAL -j {target}", "<ip> daddr != {dst} fib daddr type local jump {target}"
    ),
    # The loopback clients' masquerade (rules.py).
    RuleForm(
        "-s {src} -o {out} -m comment --comment {comment} -j MASQUERADE",
        "<ip> saddr {src} oifname {out} masquerade comment {comment}",
    ),
    # A forward's masquerade towards the old host (forwarding.py): `--ctstate DNAT` is conntrack's DNAT status.
    RuleForm(
        "-d {addr}/<bits> -p {p} -m {p} --dport {to} -m conntrack --ctstate DNAT -m comment --comment {comment} "
        "-j MASQUERADE",
        "<ip> daddr {addr} {p} dport {to} ct status dnat masquerade comment {comment}",
    ),
    # A host-bound app's socket match (hostbound.py). `-m socket --nowildcard` matches when any socket takes the
    # packet, a listener on 0.0.0.0 too; nft's socket expression finds the same socket, and either value of
    # its transparent flag means one was found.
    RuleForm(
        "-p tcp -m tcp --dport {port} -m socket --nowildcard -m comment --comment {comment} -j RETURN",
        "tcp dport {port} socket transparent {{ 0, 1 }} return comment {comment}",
    ),
    RuleForm(
        "-p tcp -m tcp --dport {port} -m comment --comment {comment} -j REDIRECT --to-ports {to}",
        "tcp dport {port} redirect to :{to} comment {comment}",
    ),
    RuleForm("-j {target}", "jump {target}"),
)


def _fill(template: str, family: Family) -> str:
    return template.replace("<ip>", family.name).replace("<bits>", str(family.bits))


def forms(family: Family = IP) -> tuple[RuleForm, ...]:
    """The rule forms in a table of this family."""
    return _compiled(family)[0]


def _pattern(template: str, fields: dict[str, str]) -> re.Pattern[str]:
    parts, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name:
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>{fields[name]})")
            seen.add(name)
    return re.compile("".join(parts))


Compiled = list[tuple[RuleForm, re.Pattern[str]]]


@functools.cache
def _compiled(family: Family) -> tuple[tuple[RuleForm, ...], Compiled, Compiled]:
    """The family's forms, each with the pattern of its iptables body and of its nft text."""
    iptables, nft = _fields(family)
    found = tuple(RuleForm(_fill(f.iptables, family), _fill(f.nft, family)) for f in _TEMPLATES)
    return (
        found,
        [(form, _pattern(form.iptables, iptables)) for form in found],
        [(form, _pattern(form.nft, nft)) for form in found],
    )


FORMS = forms(IP)
_TARGETS = ("DNAT", "REDIRECT", "MASQUERADE", "SNAT", "RETURN", "ACCEPT", "DROP")


def rule_to_nft(body: str, family: Family = IP) -> str:
    """One rule of a chain, its iptables body as nft text; RulesError when the backend cannot write it."""
    for form, pattern in _compiled(family)[1]:
        match = pattern.fullmatch(body)
        if match is None or match.groupdict().get("target") in _TARGETS:
            continue
        values = dict(match.groupdict())
        if "comment" in values:
            values["comment"] = f'"{written_comment(values["comment"], body)}"'
        if "out" in values:
            values["out"] = f'"{values["out"]}"'
        for network in ("src", "dst"):
            if network in values:
                values[network] = family.prefix_to_nft(values[network])
        return form.nft.format(**values)
    raise RulesError(CANNOT, rules=body)


def rule_to_iptables(chain: str, text: str, family: Family = IP) -> str:
    """One rule of `nft list` as iptables-save prints its counterpart; a rule of no known form keeps its nft
    text in a comment, so it never equals a wanted rule and drift detection reports it."""
    for form, pattern in _compiled(family)[2]:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        values = dict(match.groupdict())
        if "comment" in values:
            values["comment"] = save_string(values["comment"][1:-1])
        if "out" in values:
            values["out"] = values["out"][1:-1]
        for network in ("src", "dst"):
            if network in values:
                values[network] = family.prefix_to_iptables(values[network])
        return f"-A {chain} {form.iptables.format(**values)}"
    return foreign(chain, text)


def foreign(chain: str, text: str) -> str:
    """A rule of no known form, as a comment in the iptables view: it never equals a wanted rule."""
    return f"-A {chain} -m comment --comment {save_string('nft: ' + text)}"
