"""The [console] table: off without it, what loads, what the receiver gets, and each refusal with its message."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from deployer import config
from deployer.cli.console import read_password, viewer_line
from deployer.config.receiver_files import receiver_files
from deployer.errors import ConfigError, UsageError
from deployer.passwords import hash_password, hash_problem, verify_password
from support.configs import app_toml

APP = app_toml("web", 8000)
KEY = "s" * 40
LINE = hash_password("a long enough password", n=2**4, r=1, p=1)
TABLE = f'[console]\nsession_key_env = "CONSOLE_KEY"\n[console.viewers]\nalice = "{LINE}"\n'


def write(folder: Path, text: str) -> Path:
    path = folder / "deployer.toml"
    path.write_text(text)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={"CONSOLE_KEY": KEY, "SHORT_KEY": "short"})
    return str(caught.value).removeprefix(f"{path}, ")


def test_without_the_table_the_console_is_off(tmp_path):
    assert config.load(write(tmp_path, APP), environ={}).console is None


def test_the_table_loads_for_the_worker_and_the_receiver(tmp_path):
    path = write(tmp_path, APP + TABLE)
    loaded = config.load(path, environ={"CONSOLE_KEY": KEY})
    receiver = config.load_receiver(path, environ={"CONSOLE_KEY": KEY})
    assert loaded.console == receiver.console
    console = receiver.console
    assert (console.viewers, console.session_key, console.session_hours, console.secure_cookie) == (
        {"alice": LINE},
        KEY,
        12.0,
        True,
    )
    assert KEY in loaded.secrets() and KEY in receiver.secrets()
    assert "CONSOLE_KEY" in loaded.receiver_env_names
    assert KEY not in repr(console) and LINE not in repr(console)


def test_enabled_false_turns_it_off_and_the_key_file_is_the_receivers(tmp_path):
    (tmp_path / "console-key").write_text(KEY + "\n")
    text = APP + f'[console]\nsession_key_file = "console-key"\nviewers = {{ alice = "{LINE}" }}\n'
    assert config.load(write(tmp_path, text), environ={}).console.session_key == KEY
    assert ("console.session_key_file", tmp_path / "console-key") in [
        (f.key, f.path) for f in receiver_files(config.load(write(tmp_path, text), environ={}))
    ]
    assert config.load(write(tmp_path, text + "enabled = false\n"), environ={}).console is None


def test_a_trusted_proxy_needs_no_viewers(tmp_path):
    text = APP + (
        '[console]\nsession_key_env = "CONSOLE_KEY"\ntrusted_proxy_header = "X-Forwarded-User"\n'
        'trusted_proxies = ["127.0.0.1/32", "::1"]\n'
    )
    console = config.load(write(tmp_path, text), environ={"CONSOLE_KEY": KEY}).console
    assert (console.trusted_proxy_header, console.trusted_proxies) == ("X-Forwarded-User", ("127.0.0.1/32", "::1/128"))


@pytest.mark.parametrize(
    "table, message",
    [
        (
            '[console]\nsession_key_env = "CONSOLE_KEY"\n',
            "key 'console.viewers': no one can sign in: name viewers (deployer console passwd NAME) "
            "or a trusted_proxy_header",
        ),
        (
            f'[console]\nsession_key = "{KEY}"\n[console.viewers]\nalice = "{LINE}"\n',
            "key 'console.session_key': secrets are not written in the config: use session_key_file or session_key_env",
        ),
        (
            f'[console]\n[console.viewers]\nalice = "{LINE}"\n',
            "key 'console': one of session_key_file or session_key_env is required",
        ),
        (
            f'[console]\nsession_key_env = "SHORT_KEY"\n[console.viewers]\nalice = "{LINE}"\n',
            "key 'console.session_key_env': the session key is shorter than 32 characters; make one with: "
            "openssl rand -hex 32",
        ),
        (
            TABLE.replace(LINE, "hunter2"),
            "key 'console.viewers.alice': must be a line printed by `deployer console passwd NAME` "
            "(scrypt$N$r$p$salt$hash)",
        ),
        (
            TABLE.replace("alice", '"al ice"'),
            "key 'console.viewers.al ice': viewer names are 1 to 64 letters, digits, '.', '_' or '-'",
        ),
        (
            TABLE.replace("[console.viewers]", "session_hours = 0\n[console.viewers]"),
            "key 'console.session_hours': must be more than 0 and at most 720 hours",
        ),
        (
            TABLE.replace("[console.viewers]", "secure_cookie = 1\n[console.viewers]"),
            "key 'console.secure_cookie': must be of type boolean",
        ),
        (
            TABLE.replace("[console.viewers]", 'trusted_proxy_header = "X-User"\n[console.viewers]'),
            "key 'console': trusted_proxy_header and trusted_proxies go together: the header is believed only "
            "from those addresses",
        ),
        (
            TABLE.replace("[console.viewers]", 'trusted_proxies = ["proxy"]\n[console.viewers]'),
            "key 'console.trusted_proxies': 'proxy' is not a network such as 127.0.0.1/32",
        ),
        (
            TABLE.replace("[console.viewers]", "cookie_name = 1\n[console.viewers]"),
            "key 'console.cookie_name': unknown key (allowed: enabled, secure_cookie, session_hours, session_key, "
            "session_key_env, session_key_file, trusted_proxies, trusted_proxy_header, viewers)",
        ),
    ],
)
def test_each_refusal_names_its_key(tmp_path, table, message):
    assert refusal(write(tmp_path, APP + table)) == message


def test_a_hash_line_with_an_expensive_cost_is_refused():
    assert hash_problem(LINE.replace("$16$", "$2097152$", 1)).startswith("its cost is out of bounds")
    assert hash_problem(LINE.replace("$16$", "$24$", 1)).startswith("its cost is out of bounds")


def test_passwd_prints_a_line_that_verifies_and_never_the_password():
    line = viewer_line("alice", "a long enough password")
    name, _, quoted = line.partition(" = ")
    encoded = quoted.strip('"')
    assert name == "alice" and encoded.startswith("scrypt$32768$8$3$") and hash_problem(encoded) is None
    assert verify_password("a long enough password", encoded) and not verify_password("another one", encoded)
    assert "a long enough password" not in line
    assert viewer_line("alice", "a long enough password") != line  # a new salt each time


def test_passwd_refuses_a_bad_name_and_a_short_password():
    with pytest.raises(UsageError, match="a viewer's name is"):
        viewer_line("al ice", "a long enough password")
    with pytest.raises(UsageError, match="shorter than 12"):
        viewer_line("alice", "short")


def test_passwd_reads_stdin_when_it_is_not_a_terminal_and_asks_twice_on_one():
    assert read_password(io.StringIO("from a pipe\nignored\n")) == "from a pipe"

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["typed twice", "typed twice"])
    assert read_password(Terminal(), ask=lambda prompt: next(answers)) == "typed twice"
    differing = iter(["one", "two"])
    with pytest.raises(UsageError, match="differ"):
        read_password(Terminal(), ask=lambda prompt: next(differing))
