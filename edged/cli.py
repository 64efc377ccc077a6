"""Command line: ``edged run | check-config | functions | invoke | deploy | rollback``.

Exit status: 0 ok; 1 a call or the daemon failed (a missing input file, a port in use); 2 a usage error
(argparse); 75 (EX_TEMPFAIL) another daemon holds the state directory; 78 (EX_CONFIG) the configuration
is wrong, which the unit's ``RestartPreventExitStatus=78`` does not restart. A user error is one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from edged.errors import EdgedError
from edged.journal import StructuredJournalHandler, under_journald
from edged.logs import RepeatFilter, configure
from edged.preflight import Problem, file_problems, load_problems
from edged.secrets import SecretError, read_secret, resolve_secret
from edged.settings import ConfigError, Settings, load_settings
from edged.startgc import resume
from edged.versions import versions

__all__ = ["EXIT_BUSY", "EXIT_CONFIG", "EXIT_FAILED", "main"]

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/edged/edged.toml")
EXIT_FAILED = 1
EXIT_BUSY = 75
EXIT_CONFIG = 78


def _config_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("EDGED_CONFIG")
    if env:
        return Path(env)
    if DEFAULT_CONFIG.exists():
        return DEFAULT_CONFIG
    raise ConfigError([("(file)", f"no config file: no --config, $EDGED_CONFIG is not set, and {DEFAULT_CONFIG} "
                                  "does not exist")])


def _load(arg: str | None) -> Settings:
    return load_settings(_config_path(arg))


def _with_api_functions(settings: Settings) -> tuple[Settings, int]:
    """``settings`` with the functions deployed over the API (``[deploy] enabled``, ``state_dir``'s registry)
    merged in as the daemon merges them at start, and how many the registry holds. One that cannot run is
    logged (ERROR) and left out, as the daemon does; an unreadable registry is a ConfigError."""
    from edged.deploy import deployed_functions, merge_functions

    kept, live = deployed_functions(settings)
    return (merge_functions(settings, live) if kept else settings), kept


def _print_problems(problems: list[Problem]) -> None:
    for key, message in problems:
        print(f"config error: {key}: {message}", file=sys.stderr)


def _setup_logging(level: str) -> logging.Handler:
    """Plain text on a terminal or a pipe; journald's native protocol (priorities, fields) under systemd.

    Either way control characters are escaped and floods of one error capped (edged.logs).
    """
    if under_journald():
        return configure(level, "%(name)s: %(message)s", handler=StructuredJournalHandler())
    return configure(level, "%(asctime)s %(levelname)s %(name)s: %(message)s")


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _setup_logging("WARNING")
    problems = file_problems(config)
    if not problems:
        # The API's functions are checked as the daemon's start checks them: left out (one ERROR line) when
        # their module is gone or their grants are past today's ceilings; a module that no longer compiles
        # is an error here as it is there.
        settings, kept = _with_api_functions(config)
        problems = load_problems(settings)
    _print_problems(problems)
    if problems:
        return EXIT_CONFIG
    api = len(settings.functions) - len(config.functions)
    deployed = ""
    if kept:
        deployed = f" ({api} deployed over the API" + (f"; {kept - api} more not loaded, said above)"
                                                       if kept > api else ")")
    print(f"config ok: {len(settings.functions)} functions{deployed}, {len(settings.models)} models, "
          f"state in {settings.state_dir}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from edged.app import ListenError, run
    from edged.malloc import pin_mmap_threshold
    from edged.statelock import StateDirBusy, hold_state_dir

    handler = _setup_logging("INFO")  # before the config is read, so its errors are logged as the daemon's are
    try:
        path = _config_path(args.config)
        settings = load_settings(path)
        logging.getLogger().setLevel(settings.log_level)
        problems = file_problems(settings)
        if problems:
            raise ConfigError(problems)
        with hold_state_dir(settings.state_dir):
            pin_mmap_threshold()  # flat RSS under a stream of frames: see edged.malloc
            return asyncio.run(run(settings, path))
    except ConfigError as exc:  # also a module or model that does not load (FunctionLoadError)
        for key, message in exc.problems:
            log.error("config error: %s: %s", key, message)
        return EXIT_CONFIG
    except StateDirBusy as exc:
        log.error("%s", exc)
        return EXIT_BUSY
    except ListenError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    finally:
        for held in handler.filters:
            if isinstance(held, RepeatFilter):
                held.flush()  # the counts of what was held back, before the process goes


def _cmd_functions(args: argparse.Namespace) -> int:
    from edged.wasm.build import build_pool

    _setup_logging("WARNING")
    settings, _ = _with_api_functions(_load(args.config))
    # Listing links the WASI-NN imports but runs nothing: the models need not be loaded.
    with build_pool(settings).pool as pool:
        print(json.dumps(pool.describe(), indent=2))
    return 0


def _fail(code: str, detail: str) -> int:
    print(json.dumps({"error": code, "detail": detail}), file=sys.stderr)
    return EXIT_FAILED


def _cmd_invoke(args: argparse.Namespace) -> int:
    from edged.malloc import pin_mmap_threshold
    from edged.wasm.build import build_pool

    _setup_logging("WARNING")
    settings, _ = _with_api_functions(_load(args.config))
    pin_mmap_threshold()  # allocate as the daemon does, so a one-off call costs what the daemon's calls cost
    if args.name not in settings.functions:
        return _fail("unknown_function", f"no function named {args.name!r}; the functions are: "
                                         f"{', '.join(sorted(settings.functions)) or '(none configured)'}")
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        return _fail("unreadable_input", f"cannot read {args.file}: {exc.strerror or exc}")
    # Only this function and the models it may load, loaded once as the daemon does.
    models, pool = build_pool(settings, only=args.name)
    with models, pool:
        try:
            result = pool.decode_and_call_sync(data, settings.http.max_pixels, args.name)
        except EdgedError as exc:
            print(json.dumps(exc.as_dict()), file=sys.stderr)
            return EXIT_FAILED
    if args.output:
        try:
            Path(args.output).write_bytes(result.body)
        except OSError as exc:
            return _fail("unwritable_output", f"cannot write {args.output}: {exc.strerror or exc}")
        print(json.dumps({"function": args.name, "content_type": result.content_type,
                          "bytes": len(result.body), "output": args.output,
                          "duration_ms": round(result.duration_ms, 3)}))
    elif result.json is not None:
        print(json.dumps(result.json))
    else:
        return _fail("binary_output", f"{result.content_type} result; write it with -o FILE")
    return 0


def _api(args: argparse.Namespace) -> tuple[str, str | None]:
    """The API's base URL and bearer token: --url and --token-file, else the config file's [http]."""
    from edged.deploy.client import api_url

    token = read_secret("--token-file", Path(args.token_file)) if args.token_file else None
    url = args.url.rstrip("/") if args.url else None
    if url is not None and token is not None:
        return url, token
    try:
        path = _config_path(getattr(args, "config", None))
    except ConfigError:
        if url is None:
            raise
        return url, None  # no config file anywhere: --url alone, no token
    http = load_settings(path).http
    if token is None:
        token = resolve_secret("http.token_file", http.token, http.token_file)
    return url or api_url(http.host, http.port), token


def _cmd_deploy(args: argparse.Namespace) -> int:
    from edged.deploy.client import ApiError, deploy

    try:
        wasm = Path(args.module).read_bytes()
        spec = json.loads(Path(args.spec).read_bytes()) if args.spec else {}
    except OSError as exc:
        return _fail("unreadable_input", f"cannot read {exc.filename}: {exc.strerror or exc}")
    except ValueError as exc:
        return _fail("invalid_spec", f"{args.spec} is not JSON: {exc}")
    if not isinstance(spec, dict):
        return _fail("invalid_spec", f"{args.spec} is not a JSON object")
    try:
        url, token = _api(args)
        document = deploy(url, token, args.name, wasm, spec)
    except ApiError as exc:
        return _fail(exc.code, exc.detail)
    except SecretError as exc:
        return _fail("unreadable_token", str(exc))
    print(json.dumps(document))
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from edged.deploy.client import ApiError, rollback

    try:
        url, token = _api(args)
        print(json.dumps(rollback(url, token, args.name)))
    except ApiError as exc:
        return _fail(exc.code, exc.detail)
    except SecretError as exc:
        return _fail("unreadable_token", str(exc))
    return 0


def _api_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the function")
    parser.add_argument("--url", help="the daemon's API (default: from the config's [http] host and port)")
    parser.add_argument("--token-file", help="a file holding the bearer token (default: the config's http.token)")


def _version_text() -> str:
    v = versions()
    return f"edged {v['edged']} (wasmtime {v['wasmtime']}, TFLite runtime {v['tflite']})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edged", description="Edge gateway daemon.")
    config_help = f"TOML config (default: $EDGED_CONFIG, else {DEFAULT_CONFIG})"
    parser.add_argument("--config", "-c", help=config_help)
    parser.add_argument("--version", action="version", version=_version_text(),
                        help="print the versions of edged, wasmtime and the TFLite runtime")
    # --config is accepted after the sub-command too ("edged run --config X"), and shown in its help.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=argparse.SUPPRESS, help=config_help)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="run the daemon in the foreground").set_defaults(func=_cmd_run)
    sub.add_parser("check-config", parents=[common],
                   help="validate the configuration: files, secrets, every module and model loaded").set_defaults(
        func=_cmd_check_config)
    sub.add_parser("functions", parents=[common], help="list functions, limits and grants").set_defaults(
        func=_cmd_functions)
    invoke = sub.add_parser("invoke", parents=[common], help="run one call through the pool")
    invoke.add_argument("name")
    invoke.add_argument("file")
    invoke.add_argument("-o", "--output", help="write the result here")
    invoke.set_defaults(func=_cmd_invoke)
    deploy = sub.add_parser("deploy", parents=[common],
                            help="upload a module and make it a function's new version, through the API")
    _api_arguments(deploy)
    deploy.add_argument("module", help="the .wasm file")
    deploy.add_argument("--spec", help="JSON: abi, input, timeout_ms, memory_mb, grants... (module is set here)")
    deploy.set_defaults(func=_cmd_deploy)
    rollback = sub.add_parser("rollback", parents=[common],
                              help="put back the version a deployed function's current one replaced")
    _api_arguments(rollback)
    rollback.set_defaults(func=_cmd_rollback)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is not _cmd_run:
        resume()  # paused by the entry for start-up (edged.startgc); only the daemon keeps it to ready
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        # The config file, or a module that fails validation when the pool loads it (FunctionLoadError).
        _print_problems(exc.problems)
        return EXIT_CONFIG
    return code


if __name__ == "__main__":
    sys.exit(main())
