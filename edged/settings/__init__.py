"""The one validated, frozen configuration tree.

Sources, highest priority first: ``EDGED_*`` environment variables (``__`` for nesting), then the TOML
file given with ``--config``. Unknown keys are errors. Relative paths in the TOML file are resolved
against the file's directory, relative paths from the environment against the working directory.
"""

from __future__ import annotations

from edged.settings.deploy import DeploySettings
from edged.settings.functions import FunctionSettings, ModelSettings, PoolSettings, Preopen
from edged.settings.http import HttpSettings
from edged.settings.limits import LimitsSettings
from edged.settings.mqtt import HomeAssistantSettings, MqttSettings, Subscription, TlsSettings
from edged.settings.root import FUNCTION_NAME, ConfigError, Settings, is_loopback, load_settings
from edged.settings.sync import DaprSettings, OutboxSettings, SyncSettings

__all__ = [
    "FUNCTION_NAME",
    "ConfigError",
    "DaprSettings",
    "DeploySettings",
    "FunctionSettings",
    "HomeAssistantSettings",
    "HttpSettings",
    "LimitsSettings",
    "ModelSettings",
    "MqttSettings",
    "OutboxSettings",
    "PoolSettings",
    "Preopen",
    "Settings",
    "Subscription",
    "SyncSettings",
    "TlsSettings",
    "is_loopback",
    "load_settings",
]
