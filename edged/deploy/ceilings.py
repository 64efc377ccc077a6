"""What an API deploy may grant a function: ``[deploy]``'s ceilings, checked before anything is loaded."""

from __future__ import annotations

from pathlib import Path

from edged.errors import GrantRefused
from edged.settings import DeploySettings, FunctionSettings

__all__ = ["check_grants"]


def _allowed_dir(host: Path, allowed: tuple[Path, ...]) -> bool:
    # Resolved on both sides: neither "..", nor a symlink inside an allowed directory, leads out of it.
    real = host.resolve()
    return any(real.is_relative_to(root.resolve()) for root in allowed)


def check_grants(name: str, fn: FunctionSettings, ceilings: DeploySettings) -> None:
    """Raise GrantRefused naming the first grant of ``fn`` beyond ``ceilings``."""
    def refuse(grant: str, why: str) -> GrantRefused:
        return GrantRefused(f"functions.{name}.{grant}: {why}")

    if fn.memory_mb > ceilings.max_memory_mb:
        raise refuse("memory_mb", f"{fn.memory_mb} is over deploy.max_memory_mb = {ceilings.max_memory_mb}")
    if fn.timeout_ms > ceilings.max_timeout_ms:
        raise refuse("timeout_ms", f"{fn.timeout_ms} is over deploy.max_timeout_ms = {ceilings.max_timeout_ms}")
    if fn.max_output_bytes > ceilings.max_output_bytes:
        raise refuse("max_output_bytes", f"{fn.max_output_bytes} is over deploy.max_output_bytes = "
                                         f"{ceilings.max_output_bytes}")
    for i, pre in enumerate(fn.preopens):
        if not _allowed_dir(pre.host, ceilings.preopens):
            raise refuse(f"preopens.{i}.host", f"{pre.host} is not under one of deploy.preopens")
        if pre.writable and not ceilings.writable_preopens:
            raise refuse(f"preopens.{i}.writable", "deploy.writable_preopens is false")
    for host in fn.allowed_hosts:
        if host not in ceilings.allowed_hosts:
            raise refuse("allowed_hosts", f"{host} is not in deploy.allowed_hosts")
    for host in fn.private_hosts:
        if host not in ceilings.private_hosts:
            raise refuse("private_hosts", f"{host} is not in deploy.private_hosts")
    for model in fn.models:
        if model not in ceilings.models:
            raise refuse("models", f"{model!r} is not in deploy.models")
    if fn.allow_model_bytes and not ceilings.allow_model_bytes:
        raise refuse("allow_model_bytes", "deploy.allow_model_bytes is false")
