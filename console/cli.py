"""The `redline` command. With no arguments it opens the console; subcommands work headless."""

from __future__ import annotations

import argparse
import sys

from console.errors import RedlineError, UsageError


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as UsageError (exit 2, no traceback)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        raise UsageError(message)


def _engine():
    from console.sandbox.docker_engine import DockerEngine

    return DockerEngine().connect()


def cmd_doctor(args) -> int:
    from console.doctor import run_doctor

    return run_doctor(verbose=not args.json, as_json=args.json)


def cmd_kill(args) -> int:
    import os

    from console.sandbox.killswitch import KillSwitch
    from console.store import Store

    if not args.all and not args.session:
        raise UsageError("kill: say what to kill: --all, or --session ID")
    who = f"`redline kill {'--all' if args.all else '--session'}` (pid {os.getpid()})"

    with Store() as store:  # the trials' runners read the note when their sandboxes die
        switch = KillSwitch(on_killed=lambda trial: store.note_kill(trial, who))
        report = switch.kill_all() if args.all else switch.kill_session(args.session)
    for c in report.containers:
        state = f"dead after {c.confirmed_ms:.0f} ms" if c.confirmed_ms is not None else f"NOT CONFIRMED: {c.error}"
        print(f"  {c.name}: {state}{' (host pids killed directly)' if c.escalated else ''}")
    print(f"killed {report.count} Redline container(s) in {report.total_ms:.0f} ms")
    return 0 if report.all_confirmed else 1


def cmd_images(args) -> int:
    from console.sandbox.images import IMAGES, ImageBuilder

    if args.action == "list":
        engine = _engine()
        for info in IMAGES.values():
            have = "present" if engine.image_exists(info.ref()) else "missing"
            print(f"{info.name:10} {info.ref():32} {have:8} {info.description}")
        return 0
    names = args.names or [n for n, i in IMAGES.items() if i.default]
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        raise UsageError(f"images build: unknown image(s) {', '.join(unknown)}; known: {', '.join(IMAGES)}")
    builder = ImageBuilder(_engine(), progress=lambda line: print(line, flush=True))
    for name in names:
        print(f"{name}: ready as {builder.ensure(name)}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="redline", description=__doc__)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("doctor", help="check the engine, images, GPUs and containment")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("kill", help="SIGKILL Redline sandboxes from any terminal")
    p.add_argument("--all", action="store_true", help="every Redline container on this engine")
    p.add_argument("--session", help="only the containers of this console session")
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser("images", help="list or build sandbox images")
    p.add_argument("action", choices=["list", "build"])
    p.add_argument("names", nargs="*", help="image names (default: base and cpu; `vllm` only when named)")
    p.set_defaults(func=cmd_images)

    from console import commands  # trials, models, scenarios, run, report

    commands.add_subcommands(sub)
    return parser


def _has_display() -> bool:
    import os

    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                or os.environ.get("QT_QPA_PLATFORM"))


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each new thread its own malloc arena and rarely gives their memory back: a console
    that runs trial after trial (each with a few threads) grew 20 MB in 30 trials that way, flat with
    two arenas (benchmarks/console_memory.py). Must run before the first threads start."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def main(argv: list[str] | None = None) -> int:
    from console import logs

    limit_malloc_arenas()
    argv = sys.argv[1:] if argv is None else argv
    log = logs.setup("cli")
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            if not _has_display():
                print("redline: no display (DISPLAY/WAYLAND_DISPLAY unset): running one headless trial of "
                      "the embedded default instead; see `redline --help`", file=sys.stderr)
                run_args = build_parser().parse_args(["run"])
                return run_args.func(run_args)
            from console.ui.app import run_console

            return run_console()
        return args.func(args)
    except RedlineError as exc:
        print(f"redline: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("redline: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug or an engine failure: one line here, the traceback in the log
        log.exception("unexpected failure")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
