"""The internet-facing receiver, run unprivileged under gunicorn: it checks, decides and queues, and acts on nothing.

No module here may load the Docker SDK, a command runner, the host layer, an adapter, the worker or the wiring
(the receiver's contract in .importlinter; tests/unit/test_layers.py shows it holds and that it catches a break).
"""
