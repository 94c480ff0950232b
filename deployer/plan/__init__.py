"""Pure: what to do. Renders rules, chains, container arguments, conntrack filters and mode decisions; no I/O, no clock."""
