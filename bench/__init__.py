"""Benchmarks of the deployer against its alternatives: run them with `sudo bench/run`."""
