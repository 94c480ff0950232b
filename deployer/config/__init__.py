"""The TOML config, loaded and validated once; nothing else in the project reads the environment.

Every error names the file, the app and the key, so an operator can fix it without reading code.
Secrets are never written in the config: it names a file or an environment variable instead.

- `model`: what a loaded config is (frozen dataclasses);
- `load`: reading the file and the environment, making paths absolute, the checks across tables;
- `settings`, `registries`, `app`, `server`, `cluster`, `fleet`, `reports`, `console`: one table each, with its own checks;
- `secrets`, `env_files`: what a config names instead of a secret, and an app's env files;
- `fields`: one check per kind of value.
"""

from deployer.config.app import MAX_PAGE_BYTES
from deployer.config.env_files import parse_env_file
from deployer.config.load import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    config_path,
    load,
    load_receiver,
    load_reports,
    local_actor,
    parse,
    parse_receiver,
    receiver_environment,
    report_environment,
)
from deployer.config.model import (
    HOOK_NAMES,
    IMAGE_RE,
    PROTOCOLS,
    SETS,
    AppConfig,
    AssetConfig,
    Config,
    ConsoleConfig,
    HealthCheck,
    OperatorKey,
    PortMapping,
    ReceiverApp,
    ReceiverConfig,
    RegistryAuth,
    ServerConfig,
    Settings,
    WatchdogConfig,
)
from deployer.config.secrets import read_secret
from deployer.config.server import MIN_OPERATOR_SECRET
from deployer.config.settings import DEFAULT_DOCKER_HOST

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_DOCKER_HOST",
    "HOOK_NAMES",
    "IMAGE_RE",
    "MAX_PAGE_BYTES",
    "MIN_OPERATOR_SECRET",
    "PROTOCOLS",
    "SETS",
    "AppConfig",
    "AssetConfig",
    "Config",
    "ConsoleConfig",
    "HealthCheck",
    "OperatorKey",
    "PortMapping",
    "ReceiverApp",
    "ReceiverConfig",
    "RegistryAuth",
    "ServerConfig",
    "Settings",
    "WatchdogConfig",
    "config_path",
    "load",
    "load_receiver",
    "load_reports",
    "local_actor",
    "parse",
    "parse_env_file",
    "parse_receiver",
    "read_secret",
    "receiver_environment",
    "report_environment",
]
