"""The internet-facing receiver and what it feeds: signatures, the release policy, the job queue, the worker."""
