"""UNPRIVILEGED: the report loop: each feed's cursor over the audit log, delivered to GitHub and notification targets."""
