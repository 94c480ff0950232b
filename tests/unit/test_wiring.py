"""The one place that builds the real adapters: what the engine gets from it, without touching the host."""

from __future__ import annotations

from deployer.adapters.api_client import SignedClient
from deployer.adapters.docker_host import DockerHost
from deployer.adapters.image_archive import PreloadedImage
from deployer.adapters.iptables import Netfilter
from deployer.adapters.probes import Probes
from deployer.adapters.processes import run_hook
from deployer.adapters.routing import Routing
from deployer.config import parse
from deployer.journal import Journal
from deployer.wiring import build_engine, build_fleet_client, build_job_tools


def config(tmp_path):
    data = {
        "deployer": {"state_dir": str(tmp_path / "state"), "iptables_wait": 3},
        "apps": {
            "web": {
                "image": "127.0.0.1:5000/web",
                "ports": [{"external": 18080, "container": 80, "blue": 18081, "green": 18082}],
            }
        },
    }
    return parse(data, path=tmp_path / "deployer.toml", environ={})


def test_the_engine_gets_every_real_adapter(tmp_path):
    engine = build_engine(config(tmp_path), Journal([]))
    assert isinstance(engine.docker, DockerHost) and isinstance(engine.prober, Probes)
    assert isinstance(engine.netfilter, Netfilter) and engine.netfilter.wait_seconds == 3
    assert engine.chains.backend is engine.netfilter and isinstance(engine.forwarder.routing, Routing)
    assert engine.run_hook is run_hook


def test_a_wrapped_docker_or_netfilter_replaces_the_real_one(tmp_path):
    docker, netfilter = object(), object()
    engine = build_engine(config(tmp_path), Journal([]), docker=docker, netfilter=netfilter)  # type: ignore[arg-type]
    assert (engine.docker, engine.netfilter, engine.chains.backend) == (docker, netfilter, netfilter)


def test_the_worker_runs_an_asset_release_through_the_preloaded_image(tmp_path):
    engine = build_job_tools(config(tmp_path), Journal([])).engine("127.0.0.1:5000/web:v2")
    assert isinstance(engine.docker, PreloadedImage) and isinstance(engine.prober, Probes)


def test_the_controller_gets_a_signed_client_of_each_host(tmp_path):
    secret = tmp_path / "fleet.secret"
    secret.write_text("fleet-secret-0123456789abcdef\n")
    hosts = [
        {
            "name": f"h{i}",
            "url": f"http://h{i}:8000",
            "key_id": "fleet",
            "secret_file": str(secret),
            "insecure_http": True,
        }
        for i in (1, 2)
    ]
    controller = parse(
        {"deployer": {"state_dir": str(tmp_path / "state")}, "fleet": {"apps": ["web"], "hosts": hosts}},
        path=tmp_path / "deployer.toml",
        environ={},
    )
    client = build_fleet_client(controller.fleet)
    assert {name: (type(c), c.base_url, c.timeout) for name, c in client.clients.items()} == {
        "h1": (SignedClient, "http://h1:8000", 5.0),
        "h2": (SignedClient, "http://h2:8000", 5.0),
    }
