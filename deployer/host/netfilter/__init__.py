"""A rule is applied here.

The host layer (engine, modes, forwarder, canary) hands every netfilter change to `Chains` (chains.py): it takes
the netfilter lock, reads the table once, renders with plan/, restores add-only and proves the result. The
restore goes to a backend (backend.py says what one must do and where each lives): the iptables adapter itself,
or the nftables backend (nftables.py), which keeps a picture of its own table.
"""
