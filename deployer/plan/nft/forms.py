"""The rule forms of the table's chains (not the app chains): each as iptables-save prints it and as `nft list` does.

A rule of no known form is refused before anything is applied, and one read back comes as a comment that never
equals a wanted rule. Comments cross as they are: nft takes at most COMMENT_LIMIT characters and no double quote.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from deployer.errors import RulesError
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


_IPT_FIELDS = {
    "p": r"tcp|udp",
    "port": r"\d+",
    "to": r"\d+",
    "addr": r"\d+\.\d+\.\d+\.\d+",
    "src": r"\d+\.\d+\.\d+\.\d+/\d+",
    "target": r"[A-Za-z0-9_-]+",
    "out": r"[A-Za-z0-9_.-]+",
    "comment": r'"(?:[^"\\]|\\.)*"|[A-Za-z0-9_-]+',
}
_NFT_FIELDS = {**_IPT_FIELDS, "out": r'"[A-Za-z0-9_.-]+"', "comment": r'"[^"]*"'}


@dataclass(frozen=True)
class RuleForm:
    """One rule of a chain the backend can write: its iptables-save body (after `-A CHAIN `) and its nft text."""

    iptables: str
    nft: str


FORMS = (
    RuleForm("-m addrtype --dst-type LOCAL -j {target}", "fib daddr type local jump {target}"),
    # The loopback clients' masquerade (rules.py).
    RuleForm(
        "-s {src} -o {out} -m comment --comment {comment} -j MASQUERADE",
        "ip saddr {src} oifname {out} masquerade comment {comment}",
    ),
    # A forward's masquerade towards the old host (forwarding.py): `--ctstate DNAT` is conntrack's DNAT status.
    RuleForm(
        "-d {addr}/32 -p {p} -m {p} --dport {to} -m conntrack --ctstate DNAT -m comment --comment {comment} "
        "-j MASQUERADE",
        "ip daddr {addr} {p} dport {to} ct status dnat masquerade comment {comment}",
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


def _pattern(template: str, fields: dict[str, str]) -> re.Pattern[str]:
    parts, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name:
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>{fields[name]})")
            seen.add(name)
    return re.compile("".join(parts))


_TO_NFT = [(form, _pattern(form.iptables, _IPT_FIELDS)) for form in FORMS]
_TO_IPTABLES = [(form, _pattern(form.nft, _NFT_FIELDS)) for form in FORMS]
_TARGETS = ("DNAT", "REDIRECT", "MASQUERADE", "SNAT", "RETURN", "ACCEPT", "DROP")


def rule_to_nft(body: str) -> str:
    """One rule of a chain, its iptables body as nft text; RulesError when the backend cannot write it."""
    for form, pattern in _TO_NFT:
        match = pattern.fullmatch(body)
        if match is None or match.groupdict().get("target") in _TARGETS:
            continue
        values = dict(match.groupdict())
        if "comment" in values:
            values["comment"] = f'"{written_comment(values["comment"], body)}"'
        if "out" in values:
            values["out"] = f'"{values["out"]}"'
        return form.nft.format(**values)
    raise RulesError(CANNOT, rules=body)


def rule_to_iptables(chain: str, text: str) -> str:
    """One rule of `nft list` as iptables-save prints its counterpart; a rule of no known form keeps its nft
    text in a comment, so it never equals a wanted rule and drift detection reports it."""
    for form, pattern in _TO_IPTABLES:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        values = dict(match.groupdict())
        if "comment" in values:
            values["comment"] = save_string(values["comment"][1:-1])
        if "out" in values:
            values["out"] = values["out"][1:-1]
        return f"-A {chain} {form.iptables.format(**values)}"
    return foreign(chain, text)


def foreign(chain: str, text: str) -> str:
    """A rule of no known form, as a comment in the iptables view: it never equals a wanted rule."""
    return f"-A {chain} -m comment --comment {save_string('nft: ' + text)}"
