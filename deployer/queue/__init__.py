"""The SQLite database the receiver writes and the worker reads, as small stores over one file: jobs and their
steps, deliveries and nonces, what is live, rollouts' progress, the worker's heartbeat; and the accept protocol a
new job goes through (queue/accept.py). Root re-checks every row it reads (queue/rows.py)."""
