"""Typed errors that cross a boundary (HTTP, MQTT error results, the CLI).

Each carries a stable ``code`` (the JSON ``error`` field), a human ``detail`` and the HTTP status it maps
to; the HTTP layer renders every one of them as ``{"error": code, "detail": text}``.
"""

from __future__ import annotations

__all__ = [
    "BadBody",
    "BadImage",
    "BadModule",
    "BadOutput",
    "BadRequest",
    "BodyTimeout",
    "BodyTooLarge",
    "DecodeCancelled",
    "DecodeTimeout",
    "DeployConflict",
    "DeployError",
    "DigestMismatch",
    "EdgedError",
    "FunctionError",
    "FunctionFailed",
    "FunctionTimeout",
    "FunctionTrap",
    "GrantRefused",
    "ImageError",
    "ImageTooComplex",
    "InvalidSpec",
    "MemoryLimit",
    "ModuleStoreFull",
    "OutboxFull",
    "Overloaded",
    "Quarantined",
    "ReadOnlyFunction",
    "TooManyPixels",
    "UnknownFunction",
    "UnknownModule",
    "UnsupportedEncoding",
    "UnsupportedFormat",
]


class EdgedError(Exception):
    """Base of every error edged reports to a client."""

    code = "internal"
    http_status = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def as_dict(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


class ImageError(EdgedError):
    """The payload is not an acceptable image (raised while decoding on ingest)."""


class BadImage(ImageError):
    code = "bad_image"
    http_status = 400


class UnsupportedFormat(ImageError):
    code = "unsupported_format"
    http_status = 415


class TooManyPixels(ImageError):
    code = "too_many_pixels"
    http_status = 422


class BodyTooLarge(ImageError):
    code = "too_large"
    http_status = 413


class ImageTooComplex(ImageError):
    """Decoding would cost too much for its size (a progressive-JPEG scan bomb, a flood of chunks)."""

    code = "too_complex"
    http_status = 422


class DecodeTimeout(ImageError):
    """Decoding ran past the call's deadline: the same ``timeout`` a client sees when the function does."""

    code = "timeout"
    http_status = 504


class DecodeCancelled(ImageError):
    """A decode was stopped because edged is shutting down; the image itself may be fine (retry later)."""

    code = "shutting_down"
    http_status = 503
    retry_after = 1


class BadRequest(EdgedError):
    """A request edged cannot take as sent: a malformed header, say. Checked before any function runs."""

    code = "bad_request"
    http_status = 400


class BadBody(BadRequest):
    """The body could not be read as sent: it fails its Content-Encoding, or its chunked framing."""

    code = "bad_body"


class BodyTimeout(BadRequest):
    """The client stopped sending the body (``http.body_idle_timeout``)."""

    code = "body_timeout"
    http_status = 408


class UnsupportedEncoding(BadRequest):
    """A Content-Encoding other than identity, gzip or deflate."""

    code = "unsupported_encoding"
    http_status = 415


class Quarantined(ImageError):
    """An MQTT frame whose processing was cut short by a crash ``mqtt.max_attempts`` times: set aside, not run."""

    code = "quarantined"
    http_status = 422


class UnknownFunction(EdgedError):
    code = "unknown_function"
    http_status = 404


class Overloaded(EdgedError):
    """Every worker is busy and the queue is full; the client should retry later."""

    code = "overloaded"
    http_status = 503
    retry_after = 1


class OutboxFull(EdgedError):
    """The outbox is at its disk cap and ``outbox.on_full = "reject_new"``: nothing was stored."""

    code = "outbox_full"
    http_status = 503
    retry_after = 30


class FunctionError(EdgedError):
    """One call of a function failed; the daemon and other calls go on."""


class FunctionTrap(FunctionError):
    code = "trap"


class FunctionTimeout(FunctionError):
    code = "timeout"
    http_status = 504


class MemoryLimit(FunctionError):
    code = "memory_limit"


class BadOutput(FunctionError):
    code = "bad_output"


class FunctionFailed(FunctionError):
    code = "function_error"


class DeployError(EdgedError):
    """A deploy request (``PUT /v1/modules``, ``PUT /v1/functions``, rollback, delete) that was refused."""


class DigestMismatch(DeployError):
    """An uploaded module's sha256 is not the digest its URL names."""

    code = "digest_mismatch"
    http_status = 400


class BadModule(DeployError):
    """An uploaded module does not validate or compile, or does not speak the ABI its function names."""

    code = "bad_module"
    http_status = 422


class UnknownModule(DeployError):
    """A function spec names a module digest that was never uploaded."""

    code = "unknown_module"
    http_status = 422


class InvalidSpec(DeployError):
    """A function spec that is not JSON, or that the config's own function rules refuse."""

    code = "invalid_spec"
    http_status = 422


class GrantRefused(DeployError):
    """A function spec grants more than ``[deploy]``'s ceilings allow an API deploy."""

    code = "grant_refused"
    http_status = 403


class ReadOnlyFunction(DeployError):
    """A function from the config file: the API may not change or delete it."""

    code = "read_only"
    http_status = 409


class ModuleStoreFull(DeployError):
    """An upload would take the module store past ``deploy.max_modules_bytes``, even with every module that
    may go removed (unreferenced, older than ``deploy.module_grace``)."""

    code = "store_full"
    http_status = 507


class DeployConflict(DeployError):
    """The function has no earlier version to roll back to."""

    code = "no_earlier_version"
    http_status = 409
