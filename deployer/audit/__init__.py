"""The audit log: a durable, append-only, hash-chained record of what happened to the host.

Its parts:

- chain.py: an entry's canonical JSON and hash, the secret filter, and the check that names the first entry
  that no longer fits (pure);
- query.py: the filters of `GET /audit` and `deployer audit`, and their SQL (pure);
- log.py: `AuditLog`, the SQLite store that appends, reads, verifies and prunes, and its shared folder;
- sinks.py: the journal's audit sink and `build_journal`.

The names other modules use are re-exported here.
"""

from __future__ import annotations

from deployer.audit.chain import (
    GENESIS,
    Entry,
    Verdict,
    canonical_json,
    chain_hash,
    check_chain,
    format_ts,
    record_for,
    row_for,
)
from deployer.audit.log import AuditLog, Pruned, audit_path, prepare_folder
from deployer.audit.query import Query, audit_query_from_args, build_select, deploy_span, parse_time, query_to_json
from deployer.audit.sinks import AuditSink, build_journal

__all__ = [
    "GENESIS",
    "AuditLog",
    "AuditSink",
    "Entry",
    "Pruned",
    "Query",
    "Verdict",
    "audit_path",
    "audit_query_from_args",
    "build_journal",
    "build_select",
    "canonical_json",
    "chain_hash",
    "check_chain",
    "deploy_span",
    "format_ts",
    "parse_time",
    "prepare_folder",
    "query_to_json",
    "record_for",
    "row_for",
]
