"""The `canary` command line.

    canary demo [--scenario healthy|slow|errors|tail|ab|abn] [--rps N] [--interval S] [--summary FILE]
    canary run -f release.yaml --local [--rps N] [--fault SERVICE:KNOB=VALUE ...] [--workdir DIR]
    canary stack up [--versions v1,v2] [--weight W] [--rps N]
    canary analyze --replay FILE... [--judge sequential|kayenta|threshold] [--alpha A]
    canary controller | start NAME --image SERVICE=IMAGE...                         (Kubernetes)
    canary get|status NAME [-n NS] [--watch] | list [-n NS | -A] | history NAME     (or --workdir DIR)
    canary pause|resume|promote [--full]|abort|retry|undo|approve NAME [-n NS]     (or --workdir DIR)
    kubectl canary ...   the same commands as a kubectl plugin (the `kubectl-canary` executable)

Exit codes: 0 when the command did its job (a demo or run reached a final phase, whatever it was),
1 when it could not (an internal failure, a timeout, an unreachable API, a missing release), 2 for bad
input or an operator command that does not apply to the release's phase (a message says which).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from controller.cli import outgoing as notifications
from controller.core.spec.release import InvalidSpec

log = logging.getLogger("canary")


def _setup_logging(level: str, fmt: str = "text") -> None:
    from controller.logs import configure_logging

    configure_logging(level, json=fmt == "json")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canary", description="Canary releases and A/B experiments for a "
                                "whole multi-service stack, judged by anytime-valid statistics.")
    p.add_argument("--log-level", default="warning", help="debug, info, warning (default), error")
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="json: one object per line with release, namespace, phase and step")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="a real canary release of the search stack on this machine")
    demo.add_argument("--scenario", default="healthy", choices=["healthy", "slow", "errors", "tail", "ab", "abn"],
                      help="what is wrong with v2 (default: healthy, which promotes)")
    demo.add_argument("--rps", type=float, default=40.0, help="searches per second of load (default 40)")
    demo.add_argument("--interval", type=float, default=10.0, help="analysis interval in seconds (default 10)")
    demo.add_argument("--summary", type=Path, help="write the outcome as JSON to this file")
    demo.add_argument("--workdir", type=Path, help="where state and logs go (default: a new temp dir)")
    demo.add_argument("--metrics", default="auto", choices=["auto", "prometheus", "direct"],
                      help="auto: a real Prometheus when the binary is installed, else scrape the router")
    demo.add_argument("--max-seconds", type=float, default=600.0, help="give up after this long")
    notifications.add_arguments(demo)

    run = sub.add_parser("run", help="run a release spec")
    run.add_argument("-f", "--file", type=Path, required=True, help="release YAML/JSON")
    run.add_argument("--local", action="store_true", help="against the local platform (the only one yet "
                     "for `run`; the Kubernetes controller is `canary controller`)")
    run.add_argument("--rps", type=float, default=20.0, help="load to drive through the stack (0: none)")
    run.add_argument("--fault", action="append", default=[], metavar="SERVICE:KNOB=VALUE",
                     help="fault injection for the new version, e.g. ml-search:latency_ms=25")
    run.add_argument("--workdir", type=Path, help="state and logs; an existing one is resumed")
    run.add_argument("--summary", type=Path)
    run.add_argument("--metrics", default="auto", choices=["auto", "prometheus", "direct"])
    run.add_argument("--max-seconds", type=float, default=1800.0)
    notifications.add_arguments(run)

    stack = sub.add_parser("stack", help="the local search stack")
    stack_sub = stack.add_subparsers(dest="stack_command", required=True)
    up = stack_sub.add_parser("up", help="start versions of the stack behind the mesh router until Ctrl-C")
    up.add_argument("--versions", default="v1", help="comma-separated, first is stable (default v1)")
    up.add_argument("--weight", type=int, default=50, help="canary-lane share for the second version")
    up.add_argument("--rps", type=float, default=0.0, help="also send this much load (default none)")
    up.add_argument("--workdir", type=Path)

    analyze = sub.add_parser("analyze", help="judge recorded intervals (replay files)", add_help=False)
    analyze.add_argument("rest", nargs=argparse.REMAINDER)
    for name, text in (("report", "write a release's self-contained HTML report: canary report NAME [-n NS] "
                                  "-o FILE, or --workdir DIR for a local one"),
                       ("controller", "run the Kubernetes controller (in the cluster or with a kubeconfig)"),
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
PASSTHROUGH = ("analyze", "controller", "start", "report", *OPERATOR_COMMANDS)


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
        match args.command:
            case "demo":
                return _demo(args)
            case "run":
                return _run(args)
            case "stack":
                return _stack_up(args)
            case "analyze":
                from analysis.replay import main as replay_main
                return replay_main(list(args.rest))
            case "controller":
                from controller.cli.cluster import controller_main
                return controller_main(list(args.rest))
            case "start":
                from controller.cli.cluster import start_main
                return start_main(list(args.rest))
            case "report":
                return _report(list(args.rest))
            case "get" | "status" | "list" | "history" as command:
                return _read(command, list(args.rest))
            case command if command in OPERATE:
                return _operate(command, list(args.rest))
    except InvalidSpec as exc:
        for problem in exc.problems:
            print(f"invalid release: {problem}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"canary {args.command}: {exc}", file=sys.stderr)
        return 2
    return 1


def _demo(args: argparse.Namespace) -> int:
    from demo.canary import run_demo

    outgoing = notifications.from_args(args)
    try:
        result = run_demo(args.scenario, rps=args.rps, interval=args.interval, summary_path=args.summary,
                          workdir=args.workdir, metrics=args.metrics, max_seconds=args.max_seconds,
                          outgoing=outgoing)
    finally:
        outgoing.close()
    return _exit_code(result)


def _exit_code(result: dict[str, Any]) -> int:
    if result.get("interrupted"):
        return 130
    return 0 if result["phase"] in ("Succeeded", "RolledBack", "Failed", "Aborted") else 1


def _load_release(path: Path) -> dict[str, Any]:
    text = path.read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a release object")
    return data


def _parse_faults(items: list[str], version: str) -> dict[str, dict[str, dict[str, float]]]:
    faults: dict[str, dict[str, float]] = {}
    for item in items:
        service, _, knob = item.partition(":")
        name, _, value = knob.partition("=")
        if not (service and name and value):
            raise ValueError(f"--fault {item!r}: expected SERVICE:KNOB=VALUE, e.g. ml-search:latency_ms=25")
        try:
            faults.setdefault(service, {})[name] = float(value)
        except ValueError:
            raise ValueError(f"--fault {item!r}: {value!r} is not a number") from None
    return {version: faults} if faults else {}


def _resumed_release(workdir: Path | None, release: dict[str, Any]) -> dict[str, Any]:
    """A work directory that already holds this release: its spec, as the operator's commands left it."""
    from controller.adapters.local.state import StateDir

    state = StateDir(workdir / "state") if workdir is not None else None
    if state is None or not state.exists():
        return release
    held = state.load_release()
    same = held.get("metadata", {}).get("name") == release.get("metadata", {}).get("name")
    return held if same else release


def _run(args: argparse.Namespace) -> int:
    if not args.local:
        raise ValueError("only --local is supported by `canary run`; in a cluster, apply the StackRelease "
                         "resource and let `canary controller` run it")
    from controller.core.spec.release import parse_release
    from demo.canary import run_local

    release = _resumed_release(args.workdir, _load_release(args.file))
    spec = parse_release(release)
    outgoing = notifications.from_args(args)
    try:
        result = run_local(release, _parse_faults(args.fault, spec.canary.version), rps=args.rps,
                           summary_path=args.summary, workdir=args.workdir, metrics=args.metrics,
                           max_seconds=args.max_seconds, label=str(args.file), outgoing=outgoing)
    finally:
        outgoing.close()
    return _exit_code(result)


def _stack_up(args: argparse.Namespace) -> int:
    import signal
    import tempfile

    from controller.adapters.local.platform import LocalRouter
    from controller.adapters.local.stack import LocalStack
    from demo.loadgen import LoadRunner

    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    if not versions or len(versions) > 2:
        raise ValueError("--versions takes one or two versions, e.g. v1,v2")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="canary-stack-"))
    stopping = {"now": False}

    def stop(signum: int, frame: object) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with LocalStack(Path(workdir)) as stack:
        for v in versions:
            stack.start_version(v)
        canary = versions[1] if len(versions) > 1 else None
        assert stack.admin is not None
        LocalRouter(stack.admin).apply(stack.baseline_plan(versions[0], canary, args.weight))
        print(f"mesh router:  {stack.router_url}   (send Host: master-search)")
        print(f"router admin: {stack.admin_url}/config  /endpoints  /metrics")
        for (service, version), w in sorted(stack.workloads.items()):
            print(f"  {service}@{version}: http://{w.address}  (docs: http://{w.address}/docs)")
        print(f"try: curl -s -H 'Host: master-search' -H 'content-type: application/json' "
              f"-d '{{\"text\": \"graph neural networks\", \"n_results\": 5, \"random_seed\": 42}}' "
              f"-D - {stack.router_url}/master-service/search")
        print(f"logs: {workdir}/logs    Ctrl-C stops everything", flush=True)
        load = None
        if args.rps > 0:
            load = LoadRunner(url=f"{stack.router_url}/master-service/search", rate=args.rps,
                              duration=24 * 3600, max_requests=int(args.rps * 24 * 3600), host="master-search")
            load.start()
        while not stopping["now"]:
            time.sleep(0.2)
        if load is not None:
            print(load.stop().summary())
    print("stopped every process of the stack")
    return 0


def _report(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="canary report", description="Write a release's report: one "
                                "self-contained HTML file (charts and the decision log; no network to view).")
    p.add_argument("release", nargs="?", help="a StackRelease in the cluster (omit with --workdir)")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--workdir", type=Path, help="a local release's work directory instead")
    p.add_argument("-o", "--output", type=Path, default=Path("report.html"))
    p.add_argument("--kubeconfig")
    p.add_argument("--context")
    args = p.parse_args(argv)
    from controller.present.report import render_report

    if args.workdir is not None:
        from controller.adapters.local.state import StateDir

        state = StateDir(args.workdir / "state")
        if not state.exists():
            raise FileNotFoundError(f"no release in {args.workdir}")
        html = render_report(state.load_release(), state.load_status().for_storage())
    elif args.release:
        from controller.adapters.kubernetes.client import RELEASES, KubeApi
        from controller.ports import PortError

        try:
            obj = KubeApi.connect(args.kubeconfig, args.context).get_or_none(RELEASES, args.namespace, args.release)
        except PortError as exc:
            print(f"canary report: {exc.reason}", file=sys.stderr)
            return 1
        if obj is None:
            raise FileNotFoundError(f"no StackRelease {args.namespace}/{args.release}")
        html = render_report(obj, obj.get("status") or {})
    else:
        raise ValueError("name a release, or give --workdir DIR for a local one")
    args.output.write_text(html)
    print(f"wrote {args.output}")
    return 0


def _is_local(argv: list[str]) -> bool:
    return any(a == "--workdir" or a.startswith("--workdir=") for a in argv)


def _quiet_http_retries() -> None:
    """An unreachable API server is one clear message from the command, not a warning per retry."""
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def _read(command: str, argv: list[str]) -> int:
    """get | status | list | history: a local release with --workdir DIR, else a StackRelease."""
    if _is_local(argv):
        if command == "list":
            raise ValueError("list shows the StackReleases of a cluster; for a local release: canary get --workdir DIR")
        return _local_history(argv) if command == "history" else _local_get(command, argv)
    _quiet_http_retries()
    from controller.cli import cluster as kube

    match command:
        case "list":
            return kube.list_main(argv)
        case "history":
            return kube.history_main(argv)
        case _:
            return kube.get_main(argv, prog=f"canary {command}")


def _local_state(argv: list[str], prog: str, extra: Callable[[argparse.ArgumentParser], object] | None = None
                 ) -> tuple[argparse.Namespace, Any] | None:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("release", nargs="?", help="ignored for a local release (the work directory holds one)")
    p.add_argument("--workdir", type=Path, required=True, help="the release's work directory")
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    from controller.adapters.local.state import StateDir

    state = StateDir(args.workdir / "state")
    if not state.exists():
        print(f"{prog}: no release in {args.workdir}", file=sys.stderr)
        return None
    return args, state


def _local_get(command: str, argv: list[str]) -> int:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true")
        p.add_argument("-w", "--watch", action="store_true", help="then print each change until it finishes")
        p.add_argument("--max-seconds", type=float, default=24 * 3600.0, help=argparse.SUPPRESS)

    found = _local_state(argv, f"canary {command}", extra)
    if found is None:
        return 1
    args, state = found
    from controller.core.spec.release import parse_release
    from controller.present import view

    status = state.load_status()
    if args.json:
        print(json.dumps(status.for_storage(), indent=1))
        return 0
    spec = parse_release(state.load_release())
    print("\n".join(view.panel(spec, status, time.time())), flush=True)
    if args.watch:
        _local_follow(state, status, args.max_seconds)
    return 0


def _local_follow(state: Any, status: Any, max_seconds: float, poll: float = 0.5) -> None:
    """Print each change of a local release (written by the `canary run` driving it) until it finishes."""
    from controller.core.spec.release import parse_release
    from controller.present import view

    deadline = time.monotonic() + max_seconds
    try:
        while time.monotonic() < deadline:
            release = state.load_release()
            pending = release.get("metadata", {}).get("generation", 1) != status.observed_generation
            if status.phase.final and not pending:
                print("\n".join(view.panel(parse_release(release), status, time.time())), flush=True)
                return
            time.sleep(poll)
            new = state.load_status()
            if new != status:
                for line in view.progress_lines(parse_release(release), status, new, time.time()):
                    print(line, flush=True)
                status = new
    except KeyboardInterrupt:
        return


def _local_history(argv: list[str]) -> int:
    found = _local_state(argv, "canary history", lambda p: p.add_argument("--json", action="store_true"))
    if found is None:
        return 1
    args, state = found
    from controller.cli.cluster import render_history

    print(render_history(state.load_status(), args.json))
    return 0


def _operate(command: str, argv: list[str]) -> int:
    """pause | resume | promote [--full] | approve | abort | retry | undo; exit 0 done, 1 could not (missing,
    unreachable), 2 does not apply to the release's phase (the message says why and what does)."""
    if not _is_local(argv):
        _quiet_http_retries()
        from controller.cli.cluster import operate_main

        return operate_main(command, argv)

    def extra(p: argparse.ArgumentParser) -> None:
        if command == "promote":
            p.add_argument("--full", action="store_true", help="promote now, skipping every remaining step")
        p.add_argument("-w", "--watch", action="store_true", help="then follow the release until it finishes")
        p.add_argument("--max-seconds", type=float, default=24 * 3600.0, help=argparse.SUPPRESS)

    found = _local_state(argv, f"canary {command}", extra)
    if found is None:
        return 1
    args, state = found
    from controller.core.operations import Refused, plan

    status = state.load_status()
    outcome = plan(command, state.load_release(), status, getattr(args, "full", False))
    if isinstance(outcome, Refused):
        print(f"canary {command}: {outcome.message}", file=sys.stderr)
        return 2
    if outcome.patch:
        state.patch_spec(outcome.patch)
    print(outcome.message)
    if status.phase.final and outcome.patch:
        print(f"the release restarts when it runs again: canary run --local --workdir {args.workdir} -f RELEASE "
              "(the work directory's spec is used)")
    elif args.watch:
        _local_follow(state, status, args.max_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
