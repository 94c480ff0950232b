"""A controller's rollouts across its hosts, through each host's signed routes only; no host's answer is trusted."""
