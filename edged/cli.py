"""Command line: ``edged run | check-config | functions | invoke``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from edged.errors import EdgedError
from edged.logs import RepeatFilter, configure
from edged.secrets import SecretError, read_secret
from edged.settings import ConfigError, Settings, load_settings

__all__ = ["main"]

DEFAULT_CONFIG = Path("/etc/edged/edged.toml")
EXIT_CONFIG = 2
EXIT_CALL_FAILED = 1


def _config_path(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    env = os.environ.get("EDGED_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def _load(arg: str | None) -> Settings:
    try:
        return load_settings(_config_path(arg))
    except ConfigError as exc:
        for key, message in exc.problems:
            print(f"config error: {key}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from exc


def _file_problems(settings: Settings) -> list[tuple[str, str]]:
    """Checks that need the filesystem: modules, models, preopened directories and secrets exist."""
    problems: list[tuple[str, str]] = []
    for name, fn in settings.functions.items():
        if not fn.module.is_file():
            problems.append((f"functions.{name}.module", f"no such file: {fn.module}"))
        for i, pre in enumerate(fn.preopens):
            if not pre.host.is_dir():
                problems.append((f"functions.{name}.preopens.{i}.host", f"no such directory: {pre.host}"))
    for name, model in settings.models.items():
        if not model.path.is_file():
            problems.append((f"models.{name}.path", f"no such file: {model.path}"))
        if model.labels is not None and not model.labels.is_file():
            problems.append((f"models.{name}.labels", f"no such file: {model.labels}"))
    secrets = {"http.token_file": settings.http.token_file,
               "mqtt.password_file": settings.mqtt.password_file if settings.mqtt.enabled else None,
               "dapr.token_file": settings.dapr.token_file if settings.dapr.enabled else None}
    for key, path in secrets.items():
        if path is not None:
            try:
                read_secret(key, path)  # read as the daemon will, then forgotten
            except SecretError as exc:
                problems.append((key, "; ".join(f"{place}: {why}" for place, why in exc.tried)))
    return problems


def _setup_logging(level: str) -> logging.Handler:
    # Control characters escaped and floods of one error capped: see edged.logs.
    return configure(
        level,
        "%(asctime)s %(levelname)s %(name)s: %(message)s" if sys.stderr.isatty() or
        not os.environ.get("JOURNAL_STREAM") else "%(levelname)s %(name)s: %(message)s",
    )


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    problems = _file_problems(settings)
    for key, message in problems:
        print(f"config error: {key}: {message}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    print(f"config ok: {len(settings.functions)} functions, {len(settings.models)} models, "
          f"state in {settings.state_dir}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from edged.app import run
    from edged.malloc import pin_mmap_threshold

    settings = _load(args.config)
    handler = _setup_logging(settings.log_level)
    problems = _file_problems(settings)
    for key, message in problems:
        logging.getLogger("edged").error("config error: %s: %s", key, message)
    if problems:
        return EXIT_CONFIG
    pin_mmap_threshold()  # flat RSS under a stream of frames: see edged.malloc
    try:
        return asyncio.run(run(settings))
    finally:
        for held in handler.filters:
            if isinstance(held, RepeatFilter):
                held.flush()  # the counts of what was held back, before the process goes


def _cmd_functions(args: argparse.Namespace) -> int:
    from edged.wasm.build import build_pool

    settings = _load(args.config)
    _setup_logging("WARNING")
    # Listing links the WASI-NN imports but runs nothing: the models need not be loaded.
    with build_pool(settings).pool as pool:
        print(json.dumps(pool.describe(), indent=2))
    return 0


def _cmd_invoke(args: argparse.Namespace) -> int:
    from edged.malloc import pin_mmap_threshold
    from edged.wasm.build import build_pool

    settings = _load(args.config)
    _setup_logging("WARNING")
    pin_mmap_threshold()  # allocate as the daemon does, so a one-off call costs what the daemon's calls cost
    if args.name not in settings.functions:
        print(json.dumps({"error": "unknown_function", "detail": f"no function named {args.name!r}"}),
              file=sys.stderr)
        return EXIT_CALL_FAILED
    data = Path(args.file).read_bytes()
    # Only this function and the models it may load, loaded once as the daemon does.
    models, pool = build_pool(settings, only=args.name)
    try:
        with models, pool:
            try:
                result = pool.decode_and_call_sync(data, settings.http.max_pixels, args.name)
            except EdgedError as exc:
                print(json.dumps(exc.as_dict()), file=sys.stderr)
                return EXIT_CALL_FAILED
    except ConfigError as exc:
        for key, message in exc.problems:
            print(f"config error: {key}: {message}", file=sys.stderr)
        return EXIT_CONFIG
    if args.output:
        Path(args.output).write_bytes(result.body)
        print(json.dumps({"function": args.name, "content_type": result.content_type,
                          "bytes": len(result.body), "output": args.output,
                          "duration_ms": round(result.duration_ms, 3)}))
    elif result.json is not None:
        print(json.dumps(result.json))
    else:
        print(json.dumps({"error": "binary_output",
                          "detail": f"{result.content_type} result; write it with -o FILE"}), file=sys.stderr)
        return EXIT_CALL_FAILED
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edged", description="Edge gateway daemon.")
    parser.add_argument("--config", "-c", help=f"TOML config (default $EDGED_CONFIG or {DEFAULT_CONFIG})")
    # --config is accepted after the sub-command too ("edged run --config X").
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="run the daemon in the foreground").set_defaults(func=_cmd_run)
    sub.add_parser("check-config", parents=[common], help="validate the configuration").set_defaults(
        func=_cmd_check_config)
    sub.add_parser("functions", parents=[common], help="list functions, limits and grants").set_defaults(
        func=_cmd_functions)
    invoke = sub.add_parser("invoke", parents=[common], help="run one call through the pool")
    invoke.add_argument("name")
    invoke.add_argument("file")
    invoke.add_argument("-o", "--output", help="write the result here")
    invoke.set_defaults(func=_cmd_invoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        # E.g. a module that fails validation when the pool loads it (FunctionLoadError).
        for key, message in exc.problems:
            print(f"config error: {key}: {message}", file=sys.stderr)
        return EXIT_CONFIG
    return code


if __name__ == "__main__":
    sys.exit(main())
