"""Orders effects on this host: the engine, the netfilter transactions, modes, forwarding, the watchdog; receives its adapters."""
