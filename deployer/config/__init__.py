"""The TOML config, loaded and validated once; nothing else in the project reads the environment.

Every error names the file, the app and the key, so an operator can fix it without reading code.
Secrets are never written in the config: it names a file or an environment variable instead.

- `model`: what a loaded config is (frozen dataclasses);
- `load`: reading the file, the environment and the secrets, and making paths absolute;
- `fields`: one check per kind of value.
"""

from deployer.config.load import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    DEFAULT_DOCKER_HOST,
    MAX_PAGE_BYTES,
    MIN_OPERATOR_SECRET,
    config_path,
    load,
    load_receiver,
    local_actor,
    parse,
    parse_env_file,
    parse_receiver,
    read_secret,
    receiver_environment,
)
from deployer.config.model import (
    HOOK_NAMES,
    IMAGE_RE,
    PROTOCOLS,
    SETS,
    AppConfig,
    AssetConfig,
    Config,
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

__all__ = [
    "CONFIG_ENV", "DEFAULT_CONFIG_PATH", "DEFAULT_DOCKER_HOST", "HOOK_NAMES", "IMAGE_RE", "MAX_PAGE_BYTES",
    "MIN_OPERATOR_SECRET", "PROTOCOLS", "SETS", "AppConfig", "AssetConfig", "Config", "HealthCheck", "OperatorKey",
    "PortMapping", "ReceiverApp", "ReceiverConfig", "RegistryAuth", "ServerConfig", "Settings", "WatchdogConfig",
    "config_path", "load", "load_receiver", "local_actor", "parse", "parse_env_file", "parse_receiver",
    "read_secret", "receiver_environment",
]
