"""The `canary` command line.

    canary demo [--scenario healthy|slow|errors|tail|ab] [--rps N] [--interval S] [--summary FILE]
    canary run -f release.yaml --local [--rps N] [--fault SERVICE:KNOB=VALUE ...] [--workdir DIR]
    canary stack up [--versions v1,v2] [--weight W] [--rps N]
    canary analyze --replay FILE... [--judge sequential|kayenta|threshold] [--alpha A]
    canary status|pause|resume|abort|approve --workdir DIR        (local releases)
    canary controller | start NAME --image SERVICE=IMAGE... | status NAME [--watch]   (Kubernetes)

Exit codes: 0 when the command did its job (a demo or run reached a final phase, whatever it was),
1 when it could not (an internal failure or a timeout), 2 for bad input (a message says which).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from controller.spec import InvalidSpec

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
    demo.add_argument("--scenario", default="healthy", choices=["healthy", "slow", "errors", "tail", "ab"],
                      help="what is wrong with v2 (default: healthy, which promotes)")
    demo.add_argument("--rps", type=float, default=40.0, help="searches per second of load (default 40)")
    demo.add_argument("--interval", type=float, default=10.0, help="analysis interval in seconds (default 10)")
    demo.add_argument("--summary", type=Path, help="write the outcome as JSON to this file")
    demo.add_argument("--workdir", type=Path, help="where state and logs go (default: a new temp dir)")
    demo.add_argument("--metrics", default="auto", choices=["auto", "prometheus", "direct"],
                      help="auto: a real Prometheus when the binary is installed, else scrape the router")
    demo.add_argument("--max-seconds", type=float, default=600.0, help="give up after this long")

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
                       ("status", "show a release: canary status NAME [-n NS] [--watch], or --workdir DIR "
                                  "for a local one")):
        passthrough = sub.add_parser(name, help=text, add_help=False)
        passthrough.add_argument("rest", nargs=argparse.REMAINDER)

    for name, text in (("pause", "pause a local release"),
                       ("resume", "resume a paused local release"), ("abort", "abort: roll back now"),
                       ("approve", "approve promotion at a manual gate")):
        c = sub.add_parser(name, help=text)
        c.add_argument("--workdir", type=Path, required=True, help="the release's work directory")
    return p


PASSTHROUGH = ("analyze", "controller", "start", "status", "report")


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
                from controller.kubernetes.cli import controller_main
                return controller_main(list(args.rest))
            case "start":
                from controller.kubernetes.cli import start_main
                return start_main(list(args.rest))
            case "report":
                return _report(list(args.rest))
            case "status":
                if "--workdir" in args.rest:
                    return _local_status(list(args.rest))
                from controller.kubernetes.cli import status_main
                return status_main(list(args.rest))
            case "pause" | "resume" | "abort" | "approve":
                return _operate(args)
    except InvalidSpec as exc:
        for problem in exc.problems:
            print(f"invalid release: {problem}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"canary {args.command}: {exc}", file=sys.stderr)
        return 2
    return 1


def _demo(args: argparse.Namespace) -> int:
    from controller.local.demo import run_demo

    result = run_demo(args.scenario, rps=args.rps, interval=args.interval, summary_path=args.summary,
                      workdir=args.workdir, metrics=args.metrics, max_seconds=args.max_seconds)
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


def _run(args: argparse.Namespace) -> int:
    if not args.local:
        raise ValueError("only --local is supported by `canary run`; in a cluster, apply the StackRelease "
                         "resource and let `canary controller` run it")
    from controller.local.demo import run_local
    from controller.spec import parse_release

    release = _load_release(args.file)
    spec = parse_release(release)
    result = run_local(release, _parse_faults(args.fault, spec.canary.version), rps=args.rps,
                       summary_path=args.summary, workdir=args.workdir, metrics=args.metrics,
                       max_seconds=args.max_seconds, label=str(args.file))
    return _exit_code(result)


def _stack_up(args: argparse.Namespace) -> int:
    import signal
    import tempfile

    from controller.local.loadgen import LoadRunner
    from controller.local.platform import LocalRouter
    from controller.local.stack import LocalStack

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
    from controller.report import render_report

    if args.workdir is not None:
        from controller.local.state import StateDir

        state = StateDir(args.workdir / "state")
        if not state.exists():
            raise FileNotFoundError(f"no release in {args.workdir}")
        html = render_report(state.load_release(), state.load_status().for_storage())
    elif args.release:
        from controller.kubernetes.client import RELEASES, KubeApi
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


def _local_status(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="canary status", description="show a local release")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from controller import view
    from controller.local.state import StateDir
    from controller.machine import summary
    from controller.spec import parse_release

    state = StateDir(args.workdir / "state")
    if not state.exists():
        raise FileNotFoundError(f"no release in {args.workdir}")
    status = state.load_status()
    if args.json:
        print(json.dumps(status.for_storage(), indent=1))
        return 0
    spec = parse_release(state.load_release())
    print(view.headline(spec, status, time.time()))
    print(json.dumps(summary(status), indent=1))
    for record in status.history[-5:]:
        for line in view.decision_lines(record, spec.stable.version, spec.canary.version):
            print(line)
    return 0


def _operate(args: argparse.Namespace) -> int:
    from controller.local.state import StateDir

    state = StateDir(args.workdir / "state")
    if not state.exists():
        raise FileNotFoundError(f"no release in {args.workdir}")
    status = state.load_status()
    if status.phase.final:
        print(f"canary {args.command}: the release already ended ({status.phase.value}); nothing to do",
              file=sys.stderr)
        return 2
    fields = {"pause": {"paused": True}, "resume": {"paused": False}, "abort": {"abort": True},
              "approve": {"approvePromotion": True}}[args.command]
    state.update_spec(**fields)
    print(f"{args.command}: recorded; the controller acts on its next tick")
    return 0


if __name__ == "__main__":
    sys.exit(main())
