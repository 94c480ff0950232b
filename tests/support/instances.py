"""The instances the rule and record tests build on: demo's blue and green, numbered like their containers."""

from __future__ import annotations

from deployer.plan.records import Instance


def demo_instance(port_set: str, tag: str, n: int, *, digest: str | None = None) -> Instance:
    """Instance number `n` of the app demo: container c<n>..., address 172.18.0.<n+1>, up since <8+n>:00."""
    return Instance(
        port_set=port_set,
        tag=tag,
        image="127.0.0.1:5000/demo",
        digest=digest,
        container_id=f"c{n}" * 32,
        container_name=f"deployer-demo-{port_set}",
        address=f"172.18.0.{n + 1}",
        since=f"2026-11-21T{8 + n:02d}:00:00.000Z",
    )


BLUE = demo_instance("blue", "v1", 1)
GREEN = demo_instance("green", "v2", 2)
