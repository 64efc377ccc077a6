"""The one credentials reader, for the MQTT password, the Dapr token and the HTTP bearer token.

A secret lives in a file, never in the TOML. Its file name is looked up in systemd's
``$CREDENTIALS_DIRECTORY`` first (``LoadCredential=NAME:PATH`` puts it there, readable only by the
service), then at the configured path. A trailing line ending is not part of the secret; anything else
is. An unreadable or empty secret is an error naming every place that was tried.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr

__all__ = ["CREDENTIALS_ENV", "SecretError", "read_secret", "resolve_secret"]

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


class SecretError(Exception):
    """A configured secret could not be read; ``key`` is its setting, ``tried`` what was looked at."""

    def __init__(self, key: str, tried: list[tuple[str, str]]) -> None:
        self.key = key
        self.tried = tried
        places = "; ".join(f"{place}: {why}" for place, why in tried)
        super().__init__(f"cannot read {key}: {places}")


def _places(path: Path) -> list[tuple[str, Path | None]]:
    """Where to look, in order, each with how to name it in an error."""
    creds = os.environ.get(CREDENTIALS_ENV)
    if not creds:
        return [(f"${CREDENTIALS_ENV}/{path.name}", None), (str(path), path)]
    inside = Path(creds) / path.name
    return [(f"${CREDENTIALS_ENV}/{path.name} ({inside})", inside), (str(path), path)]


def read_secret(key: str, path: Path) -> str:
    """The secret configured as ``key`` = ``path``; SecretError when no place holds a readable one."""
    tried: list[tuple[str, str]] = []
    for name, place in _places(path):
        if place is None:
            tried.append((name, f"${CREDENTIALS_ENV} is not set"))
            continue
        try:
            value = place.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            tried.append((name, "no such file"))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            tried.append((name, why))
            continue
        if not value:
            tried.append((name, "empty"))
            continue
        return value
    raise SecretError(key, tried)


def resolve_secret(key: str, inline: SecretStr | None, path: Path | None) -> str | None:
    """An inline value (``token``) wins, else the file (``token_file``, read now), else None."""
    if inline is not None:
        return inline.get_secret_value()
    if path is None:
        return None
    return read_secret(key, path)
