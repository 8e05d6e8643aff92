"""
Configuration: the ini file and the credentials JSON, read into typed records.

The ini keeps the 2015 sample's sections and keys (C{[server]},
C{[secrets]}, C{[slavealloc]}, C{[inventory]}, C{[bugzilla]}, C{[buildapi]},
C{[slaves]}, C{[logging]}) and adds sections with working defaults (C{[dns]},
C{[ssh]}, C{[http]}, C{[devices]}, C{[timeouts]}, C{[auth]}, ...). Anything
missing, malformed or unknown raises L{ConfigError}, whose message is one
line naming the file, the section and key, and what was expected (for an
unknown section or key: the closest known name).

Each record's fields are the schema: a field's dataclass default is its
one default, and its metadata says how its key is read (kind, bounds,
choices); L{ini_schema} lists the sections and keys the loader accepts.

Secrets are held in L{Secret}, which never shows its value when printed,
logged or put in a repr.

Credentials bound for a plain C{http://} URL (inventory's basic auth,
Bugzilla's API key) are refused unless their section says
C{allow_plain_http = true}; L{plain_http_credentials} lists what such a
configuration sends in clear text, for the start-up warning.
"""

from __future__ import annotations

from ._checks import PlainHTTPCredentials, check_host_key_policy, plain_http_credentials
from ._credentials import API_SCOPES, ApiToken, Credentials, Secret, load_credentials, load_ssh_key
from ._ini import load_config
from ._records import (
    AuthConfig,
    AWSConfig,
    BuildapiConfig,
    BuildbotConfig,
    Config,
    DNSConfig,
    EventsConfig,
    HealthConfig,
    HTTPConfig,
    InventoryConfig,
    IPMIConfig,
    LoggingConfig,
    MozpoolConfig,
    PowerConfig,
    ProbeConfig,
    RebootConfig,
    RedfishConfig,
    ServerConfig,
    ServiceURL,
    SlavesConfig,
    SNMPConfig,
    SSHConfig,
    StoreConfig,
    WebhooksConfig,
)
from ._schema import ConfigError, SectionSchema, ini_schema as _ini_schema


def ini_schema() -> tuple[SectionSchema, ...]:
    """Every section the ini file may have, with whether it is required and the keys it accepts."""
    return _ini_schema(Config)


__all__ = [
    "API_SCOPES",
    "AWSConfig",
    "ApiToken",
    "AuthConfig",
    "BuildapiConfig",
    "BuildbotConfig",
    "Config",
    "ConfigError",
    "Credentials",
    "DNSConfig",
    "EventsConfig",
    "HTTPConfig",
    "HealthConfig",
    "IPMIConfig",
    "InventoryConfig",
    "LoggingConfig",
    "MozpoolConfig",
    "PlainHTTPCredentials",
    "PowerConfig",
    "ProbeConfig",
    "RebootConfig",
    "RedfishConfig",
    "SNMPConfig",
    "SSHConfig",
    "Secret",
    "SectionSchema",
    "ServerConfig",
    "ServiceURL",
    "SlavesConfig",
    "StoreConfig",
    "WebhooksConfig",
    "check_host_key_policy",
    "ini_schema",
    "load_config",
    "load_credentials",
    "load_ssh_key",
    "plain_http_credentials",
]
