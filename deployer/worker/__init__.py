"""The root side: the worker that claims jobs and runs each in its own process, and the supervisor of serve's
children (gunicorn as the receiver's user, the responder, the watchdog). It receives what it runs with from the
composition root (deployer/wiring.py) and imports no adapter."""
