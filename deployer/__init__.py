"""deployer: zero-downtime deploys of Docker apps by flipping DNAT rules between two port sets."""

__version__ = "0.1.0"
