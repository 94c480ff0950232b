"""Docs are part of the code: every command, route and config key is in docs/, and what the docs name exists.

The README is the front page: short, opening with the demo and the test command, linking to each page
of docs/. The lists checked here come from the code (the CLI parser, the Flask url_map, the config
loader's own refusals), so a new command, route or key fails a test until it is documented.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from deployer import config as config_module
from deployer.cli.main import build_parser
from deployer.cli.reference import command_names
from deployer.errors import ConfigError
from deployer.receiver.web import create_app

REPO = Path(__file__).resolve().parents[2]
README_PATH = REPO / "README.md"
README = README_PATH.read_text()
PAGES = sorted((REPO / "docs").glob("*.md"))
DOCS = "\n".join(page.read_text() for page in PAGES)
README_MAX_LINES = 250
CONSOLE_VIEWER = "scrypt$16$1$1$" + "00" * 16 + "$" + "00" * 32  # a well-formed line: the routes are only listed
# Every Markdown file a reader meets: the checks of links, paths and modules cover them all.
ALL_TEXT = {path: path.read_text() for path in [README_PATH, *PAGES, REPO / "state" / "README.md"]}


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_has_help_with_an_example():
    for name, sub in commands().items():
        assert sub.description, f"deployer {name} has no description"
        assert sub.epilog and "example:" in sub.epilog and f"deployer {name}" in sub.epilog, (
            f"deployer {name} --help has no example"
        )


def test_every_command_is_in_the_docs():
    missing = [
        name for name in command_names(build_parser()) if not re.search(rf"deployer {re.escape(name)}(?![\w-])", DOCS)
    ]
    assert not missing, f"commands missing from docs/: {missing}"


def test_the_readme_opens_with_the_demo_and_the_test_command():
    first_block = README.split("```", 2)[1]
    assert "scripts/demo" in first_block and "scripts/test" in first_block


def test_the_readmes_first_screen_says_what_it_is_what_the_commands_change_and_where_production_is():
    first_screen = "\n".join(README.splitlines()[:25])
    assert "deploys Docker apps on a Linux host with zero downtime" in first_screen
    for change in ("apt", "docker.io", "dockerd", "127.0.0.1:5000", "iptables", "network namespaces"):
        assert change in first_screen, f"the README's first screen does not say the commands change: {change}"
    assert "(docs/production.md)" in first_screen


def test_the_readme_is_a_front_page():
    lines = len(README.splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; move detail into docs/ (at most {README_MAX_LINES})"
    )


def test_the_readme_links_to_every_page_of_the_docs():
    linked = {target.split("#")[0] for target in markdown_links(README)}
    missing = [f"docs/{page.name}" for page in PAGES if f"docs/{page.name}" not in linked]
    assert not missing, f"README.md does not link to: {missing}"


# --- routes -------------------------------------------------------------------------------------


def routes(tmp_path) -> dict[str, object]:
    """`METHOD /path` of every route the receiver serves, the console's included, and its view function."""
    config = config_module.parse(
        {
            "deployer": {"state_dir": str(tmp_path / "state")},
            "apps": {
                "web": {
                    "image": "registry.example/web",
                    "ports": [{"external": 8000, "container": 80, "blue": 8001, "green": 8002}],
                }
            },
            "console": {"session_key_env": "CONSOLE_KEY", "viewers": {"alice": CONSOLE_VIEWER}},
        },
        path=tmp_path / "deployer.toml",
        environ={"CONSOLE_KEY": "k" * 32},
    )
    app = create_app({"DEPLOYER_CONFIG": config})
    return {
        f"{method} {rule.rule}": app.view_functions[rule.endpoint]
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"})
    }


def test_every_route_is_documented_in_the_docs(tmp_path):
    found = routes(tmp_path)
    assert "GET /audit" in found and "POST /deploy" in found
    # `GET /jobs/<job_id>` may be written `GET /jobs/<id>`: any name between the brackets.
    patterns = {route: "`" + "<[^>`]+>".join(map(re.escape, re.split(r"<[^>]*>", route))) + "`" for route in found}
    missing = [route for route, pattern in patterns.items() if not re.search(pattern, DOCS)]
    assert not missing, f"routes missing from docs/: {missing}"


def test_every_route_has_help_with_an_example(tmp_path):
    for route, view in routes(tmp_path).items():
        assert view.__doc__ and "Example:" in view.__doc__, f"{route} has no docstring with an example"


# --- config keys --------------------------------------------------------------------------------

PROBE = "zz_probe"
PORTS = [{"external": 8000, "container": 80, "blue": 8001, "green": 8002}]
APP = {"image": "registry.example/web", "ports": PORTS}
HOST_BOUND = {"host_bound": True, "ports": [{"external": 80}]}
# Where a table sits in the file, as the docs write its header, and a config that puts an unknown key in it.
TABLES = {
    "": {PROBE: 1},
    "[deployer]": {"deployer": {PROBE: 1}},
    "[registries.HOST]": {"registries": {"registry.example": {PROBE: 1}}},
    "[apps.NAME]": {"apps": {"web": {**APP, PROBE: 1}}},
    "[[apps.NAME.ports]]": {"apps": {"web": {**APP, "ports": [{**PORTS[0], PROBE: 1}]}}},
    "[apps.NAME.health]": {"apps": {"web": {**APP, "health": {PROBE: 1}}}},
    "[apps.NAME.watchdog]": {"apps": {"web": {**APP, "watchdog": {PROBE: 1}}}},
    "[apps.NAME.asset]": {"apps": {"web": {**APP, "asset": {PROBE: 1}}}},
    "[apps.NAME] host_bound": {"apps": {"web": {**HOST_BOUND, PROBE: 1}}},
    "[[apps.NAME.ports]] host_bound": {"apps": {"web": {**HOST_BOUND, "ports": [{"external": 80, PROBE: 1}]}}},
    "[server]": {"apps": {"web": APP}, "server": {PROBE: 1}},
    "[server.operators.NAME]": {"apps": {"web": APP}, "server": {"operators": {"alice": {PROBE: 1}}}},
    "[cluster]": {"apps": {"web": APP}, "cluster": {PROBE: 1}},
    "[[cluster.hosts]]": {
        "apps": {"web": APP},
        "cluster": {
            "interface": "eth0",
            "subnet": "198.18.10.0/24",
            "address": "198.18.10.100",
            "buckets": 2,
            "hash_seed": 1,
            "hosts": [{"name": "h1", "address": "198.18.10.1", PROBE: 1}],
        },
    },
    "[fleet]": {"fleet": {PROBE: 1}},
    "[console]": {"apps": {"web": APP}, "console": {PROBE: 1}},
    "[[fleet.hosts]]": {"fleet": {"apps": ["web"], "hosts": [{PROBE: 1}]}},
}


def allowed_keys(data: dict) -> list[str]:
    """The keys the loader accepts where `data` puts an unknown one, read from its refusal."""
    with pytest.raises(ConfigError) as refused:
        config_module.parse(data, path=Path("/etc/deployer/deployer.toml"), environ={})
    found = re.search(r"unknown key \(allowed: ([^)]*)\)", str(refused.value))
    assert found, f"the loader did not refuse the unknown key {PROBE}: {refused.value}"
    return found.group(1).split(", ")


def documented(key: str) -> bool:
    """`key` in backticks, `key = ...` in a TOML example, or a table header such as `[apps.demo.health]`."""
    key = re.escape(key)
    return bool(re.search(rf"`{key}[`\s=]|^\s*{key}\s*=|^\[\[?([\w.-]+\.)?{key}[\].]", DOCS, re.M))


@pytest.mark.parametrize("table", TABLES)
def test_every_config_key_is_documented(table):
    keys = allowed_keys(TABLES[table])
    assert keys, f"no keys found for {table or 'the top level'}"
    missing = [key for key in keys if not documented(key)]
    assert not missing, f"config keys of {table or 'the top level'} missing from docs/: {missing}"
    header = table.split(" ")[0]
    if header:
        pattern = re.escape(header).replace("NAME", "[a-z][a-z0-9-]*").replace("HOST", "[^]]+")
        assert re.search(pattern, DOCS), f"no example of the table {header} in docs/"


# --- what the docs name exists -----------------------------------------------------------------


def markdown_links(text: str) -> list[str]:
    """Relative link targets of `[text](target)`, outside code blocks."""
    return [
        target for target in re.findall(r"\]\(([^)\s]+)\)", strip_code_blocks(text)) if not re.match(r"[a-z]+:", target)
    ]


def strip_code_blocks(text: str) -> str:
    return re.sub(r"(?ms)^```.*?^```", "", text)


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    found = set()
    for heading in re.findall(r"(?m)^#{1,6} (.+)$", strip_code_blocks(text)):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("path", ALL_TEXT, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves(path):
    broken = []
    for target in markdown_links(ALL_TEXT[path]):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            broken.append(target)
    assert not broken, f"{path.name}: links to nothing: {broken}"


def named_but_missing(pattern: str, exists) -> list[str]:
    """`FILE: name` for each match of `pattern` in the docs for which `exists(name)` is false."""
    return [
        f"{path.name}: {named}"
        for path, text in ALL_TEXT.items()
        for named in sorted(set(re.findall(pattern, text)))
        if not exists(named)
    ]


def test_every_test_file_the_docs_name_exists():
    test_files = {p.name for p in (REPO / "tests").rglob("test_*.py")}
    missing = named_but_missing(r"\btests/[\w/]+\.py\b", lambda named: (REPO / named).is_file()) + named_but_missing(
        r"(?<![\w/])(test_\w+\.py)\b", lambda named: named in test_files
    )
    assert not missing, f"the docs name test files that do not exist: {missing}"


def test_every_module_the_docs_name_exists():
    # Not /etc/deployer/... or ~/.deployer/...: paths in the repository start with deployer/.
    missing = named_but_missing(
        r"(?<![\w./~-])deployer/[\w/]+(?:\.py)?", lambda named: (REPO / named).exists()
    ) + named_but_missing(
        r"(?<![\w./~-])deployer(?:\.\w+)+",  # deployer.toml is a file
        lambda named: (REPO / named).is_file() or importable_name(named),
    )
    assert not missing, f"the docs name modules that do not exist: {missing}"


def importable_name(dotted: str) -> bool:
    """`deployer.receiver.web` is a module or package; `deployer.receiver.web.create_app` a name in one."""
    parts = dotted.split(".")
    for length in (len(parts), len(parts) - 1):
        base = REPO.joinpath(*parts[:length])
        module = base.with_suffix(".py") if not base.is_dir() else base / "__init__.py"
        if module.is_file():
            rest = parts[length:]
            return not rest or bool(re.search(rf"(?m)^(def|class) {rest[0]}\b|^{rest[0]}\s*[:=]", module.read_text()))
    return False


# --- the architecture page ---------------------------------------------------------------------


def tree_entries(text: str) -> set[str]:
    """Paths listed in the folder tree of docs/architecture.md (two spaces of indent per level)."""
    block = re.search(r"(?ms)^## The folder tree.*?^```text\n(.*?)^```", text)
    assert block, "docs/architecture.md has no folder tree (## The folder tree, then a ```text block)"
    stack: list[str] = []
    entries = set()
    for line in block.group(1).splitlines():
        found = re.match(r"( *)(\S+)", line)
        if not found:
            continue
        depth = len(found.group(1)) // 2
        stack[depth:] = [found.group(2).rstrip("/")]
        entries.add("/".join(stack))
    return entries


def test_the_architecture_page_lists_every_module():
    listed = tree_entries((REPO / "docs" / "architecture.md").read_text())
    real = {
        str(p.relative_to(REPO).with_suffix("")) + ".py"
        for p in (REPO / "deployer").rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    real |= {str(p.relative_to(REPO)) for p in (REPO / "deployer").rglob("*") if p.is_dir() and p.name != "__pycache__"}
    missing = sorted(real - listed)
    assert not missing, f"docs/architecture.md's folder tree misses: {missing}"
