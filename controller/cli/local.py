"""The `canary` commands that run on this machine, without a cluster.

    canary demo [--scenario ...]                      the local demo (demo.canary.run_demo)
    canary run -f release.yaml --local [...]          any release on the local platform (demo.canary.run_local)
    canary stack up [--versions v1,v2] [...]          the search stack behind the mesh router until Ctrl-C
    canary analyze --replay FILE...                   judge recorded intervals (analysis.replay)
    canary analyze --experiment --replay FILE...      judge an A/B experiment's looks (analysis.experiment_replay)
    canary get|status|history --workdir DIR           a local release's live view or revisions
    canary pause|resume|promote|...  --workdir DIR    the operator's commands on a local release's spec

`controller.cli.main` parses the command line and calls these. The modules behind them (the demo, the
local platform, the statistics) load inside the commands, so `canary --help` and the cluster commands
do not pay for them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from controller.adapters.local.state import StateDir
from controller.cli import flags
from controller.cli import outgoing as notifications

if TYPE_CHECKING:
    from controller.adapters.local.stack import LocalStack
    from controller.core.spec.release import ReleaseSpec
    from controller.core.status import ReleaseStatus


class CheckedState(StateDir):
    """A local release's state directory whose unreadable files are a ValueError naming the file (the command
    line prints it and exits 2), not a traceback."""

    def load_release(self) -> dict[str, Any]:
        try:
            return super().load_release()
        except (OSError, ValueError) as exc:
            raise ValueError(_unreadable(self.release_path, "release", exc)) from None

    def load_status(self) -> ReleaseStatus:
        try:
            return super().load_status()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(_unreadable(self.status_path, "release status", exc)) from None


def _unreadable(path: Path, what: str, exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"{path}: cannot be read: {exc.strerror or exc}"
    reason = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc).removeprefix(f"{path}: ")
    return f"{path}: not a {what} a local run wrote: {reason}"


def require_mesh() -> None:
    """Stop a local command before it starts anything when this platform has no Envoy, the local mesh (ValueError:
    the command line prints it and exits 2)."""
    from localmesh.envoy.process import EnvoyUnavailable, envoy_binary

    try:
        envoy_binary()
    except EnvoyUnavailable as exc:
        raise ValueError(f"the local mesh is real Envoy, and there is {exc}") from None


def demo(args: argparse.Namespace) -> int:
    """`canary demo`: the chosen scenario end to end; the exit code says whether it reached a final phase."""
    from demo.canary import run_demo

    _checked_state(args.workdir)
    require_mesh()

    outgoing = notifications.from_args(args)
    try:
        result = run_demo(args.scenario, rps=args.rps, interval=args.interval, summary_path=args.summary,
                          workdir=args.workdir, metrics=args.metrics, max_seconds=args.max_seconds,
                          outgoing=outgoing, shadow=args.shadow)
    finally:
        outgoing.close()
    return _exit_code(result)


def run(args: argparse.Namespace) -> int:
    """`canary run --local`: a release file on the local platform, resumed when its work directory holds it."""
    if not args.local:
        raise ValueError("only --local is supported by `canary run`; in a cluster, apply the StackRelease "
                         "resource and let `canary controller` run it")
    from controller.core.spec.release import parse_release
    from demo.canary import run_local

    # Every input is checked before anything starts: the file, the spec, the faults, a work directory's state.
    release = _resumed_release(args.workdir, _load_release(args.file))
    spec = parse_release(release)
    faults = _parse_faults(args.fault, spec)
    require_mesh()

    outgoing = notifications.from_args(args)
    try:
        result = run_local(release, faults, rps=args.rps,
                           summary_path=args.summary, workdir=args.workdir, metrics=args.metrics,
                           max_seconds=args.max_seconds, label=str(args.file), outgoing=outgoing)
    finally:
        outgoing.close()
    if not result.get("interrupted") and not _finished(result):
        print(_gave_up(result, args), file=sys.stderr)
    return _exit_code(result)


def _exit_code(result: dict[str, Any]) -> int:
    if result.get("interrupted"):
        return 130
    return 0 if _finished(result) else 1


def _finished(result: dict[str, Any]) -> bool:
    from controller.core.status import Phase

    return Phase(result["phase"]).final


def _gave_up(result: dict[str, Any], args: argparse.Namespace) -> str:
    """What a run that stopped at --max-seconds left behind, and the commands that go on from there."""
    workdir = Path(result["state_dir"]).parent
    return "\n".join([
        f"canary run: gave up after {args.max_seconds:g} seconds (--max-seconds) with the release still "
        f"{result['phase']}. The release is left as it is: its spec and status stay in {workdir / 'state'}, and "
        "the stack's processes are stopped until a run resumes it.",
        f"  go on where it stopped:  canary run --local -f {args.file} --workdir {workdir} [--max-seconds N]",
        f"  look at it:              canary get --workdir {workdir}",
        f"  or roll it back:         canary abort --workdir {workdir}, then the run above",
    ])


def _load_release(path: Path) -> dict[str, Any]:
    """The one release object of a YAML (or JSON) file; ValueError naming the file and what is wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory; give the release file") from None
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file (byte {exc.start}: {exc.reason} in UTF-8)") from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.MarkedYAMLError as exc:
        raise ValueError(f"{path}: {_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML: {exc}") from None
    if len(documents) != 1:
        raise ValueError(f"{path}: holds {len(documents) or 'no'} YAML documents; a release file holds one, "
                         "the StackRelease")
    if not isinstance(documents[0], dict):
        raise ValueError(f"{path}: holds a {type(documents[0]).__name__}, not a release object "
                         "(apiVersion, kind, metadata and spec)")
    return documents[0]


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """`line L column C: problem (context)`, one line, from a YAML error (the marks count from 0)."""
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    problem = exc.problem or exc.context or "not YAML"
    if exc.problem and exc.context:
        problem += f" ({exc.context})"
    if isinstance(exc, yaml.constructor.ConstructorError):
        return f"{where}{problem}; a release file is plain YAML, without language-specific tags"
    return f"not valid YAML: {where}{problem}"


def _parse_faults(items: list[str], spec: ReleaseSpec) -> dict[str, dict[str, dict[str, float]]]:
    """--fault SERVICE:KNOB=VALUE options as the new version's faults; ValueError naming the bad part and the
    valid ones: a service of the stack that the release changes, a knob of searchstack.faults, a value in range."""
    from pydantic import ValidationError

    from searchstack.faults import FAULT_ENV, Faults

    faults: dict[str, dict[str, float]] = {}
    for item in items:
        service, name, value = _one_fault(item, spec, tuple(FAULT_ENV))
        faults.setdefault(service, {})[name] = value
        try:
            Faults(**{name: value})
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"]
            raise ValueError(f"--fault {item!r}: {value:g} is out of range for {name} ({reason[:1].lower()}"
                             f"{reason[1:]})") from None
    return {spec.canary.version: faults} if faults else {}


def _one_fault(item: str, spec: ReleaseSpec, knobs: tuple[str, ...]) -> tuple[str, str, float]:
    service, _, knob = item.partition(":")
    name, _, value = knob.partition("=")
    if not (service and name and value):
        raise ValueError(f"--fault {item!r}: expected SERVICE:KNOB=VALUE, e.g. ml-search:latency_ms=25")
    if service not in spec.stack.services:
        raise ValueError(f"--fault {item!r}: {service!r} is not a service of the stack; the services are "
                         f"{', '.join(spec.stack.services)}")
    if service not in spec.changed:
        raise ValueError(f"--fault {item!r}: the release does not change {service}; a fault goes into the new "
                         f"version {spec.canary.version}, which runs {', '.join(spec.changed)}")
    if name not in knobs:
        raise ValueError(f"--fault {item!r}: {name!r} is not a fault knob; the knobs are {', '.join(knobs)}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"--fault {item!r}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"--fault {item!r}: {value!r} is not a finite number")
    return service, name, number


def _checked_state(workdir: Path | None) -> CheckedState | None:
    """A work directory's state when it holds a release, both files read once here, before anything starts, so
    that a damaged one is told now (ValueError naming the file); None when there is none yet."""
    if workdir is None:
        return None
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {workdir}: is not a directory")
    state = CheckedState(workdir / "state")
    if not state.exists():
        return None
    state.load_release()
    state.load_status()
    return state


def _resumed_release(workdir: Path | None, release: dict[str, Any]) -> dict[str, Any]:
    """A work directory that already holds this release: its spec, as the operator's commands left it."""
    state = _checked_state(workdir)
    if state is None:
        return release
    held = state.load_release()
    return held if _name_of(held) == _name_of(release) else release


def _name_of(release: dict[str, Any]) -> Any:
    meta = release.get("metadata")
    return meta.get("name") if isinstance(meta, dict) else None


def stack_up(args: argparse.Namespace) -> int:
    """`canary stack up`: versions of the search stack behind the mesh router (and load) until a signal."""
    import signal
    import tempfile

    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    if not versions or len(versions) > 2:
        raise ValueError("--versions takes one or two versions, e.g. v1,v2")
    if not 0 <= args.weight <= 100:
        raise ValueError(f"--weight {args.weight}: the canary lane's share is a percentage, from 0 to 100")
    require_mesh()

    from controller.adapters.local.platform import LocalRouter
    from controller.adapters.local.stack import LocalStack

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
        _print_stack(stack, Path(workdir))
        _serve_until(lambda: stopping["now"], stack.router_url, args.rps)
    print("stopped every process of the stack")
    return 0


def _print_stack(stack: LocalStack, workdir: Path) -> None:
    """Where the router, its admin API and every process of the running stack answer, and a request to try."""
    print(f"mesh router:  {stack.router_url}   (send Host: master-search)")
    print(f"router admin: {stack.admin_url}/config  /endpoints  /metrics")
    for (service, version), w in sorted(stack.workloads.items()):
        print(f"  {service}@{version}: http://{w.address}  (docs: http://{w.address}/docs)")
    print(f"try: curl -s -H 'Host: master-search' -H 'content-type: application/json' "
          f"-d '{{\"text\": \"graph neural networks\", \"n_results\": 5, \"random_seed\": 42}}' "
          f"-D - {stack.router_url}/master-service/search")
    print(f"logs: {workdir}/logs    Ctrl-C stops everything", flush=True)


def _serve_until(stopping: Callable[[], bool], router_url: str, rps: float) -> None:
    """Wait for a signal, sending `rps` searches per second meanwhile (none at 0), then print the load's report."""
    from demo.loadgen import LoadRunner

    load = None
    if rps > 0:
        load = LoadRunner(url=f"{router_url}/master-service/search", rate=rps,
                          duration=24 * 3600, max_requests=int(rps * 24 * 3600), host="master-search")
        load.start()
    while not stopping():
        time.sleep(0.2)
    if load is not None:
        print(load.stop().summary())


def analyze(argv: list[str]) -> int:
    """`canary analyze`: judge recorded intervals (replay files), as the controller would have; with
    `--experiment`, an A/B experiment's recorded looks; with `--shadow`, recorded pairs of answers."""
    # --help first: `--shadow --help` would otherwise be --shadow missing its FILE, not the mode's help.
    wants_help = "-h" in argv or "--help" in argv
    if "--experiment" in argv:
        from analysis.experiment_replay import main as experiment_main

        return experiment_main(["--help"] if wants_help else argv)
    if "--shadow" in argv:
        from analysis.shadow_replay import main as shadow_main

        return shadow_main(["--help"] if wants_help else argv)
    from analysis.replay import main as replay_main

    return replay_main(argv)


def report_html(workdir: Path) -> str:
    """`canary report --workdir DIR`: the local release's self-contained HTML report."""
    from controller.present.report import render_report

    state = CheckedState(workdir / "state")
    if not state.exists():
        raise FileNotFoundError(f"no release in {workdir}")
    return render_report(state.load_release(), state.load_status().for_storage())


def read(command: str, argv: list[str]) -> int:
    """get | status | history --workdir DIR (list is for a cluster's releases)."""
    if command == "list":
        raise ValueError("list shows the StackReleases of a cluster; for a local release: canary get --workdir DIR")
    return _history(argv) if command == "history" else _get(command, argv)


def _local_state(argv: list[str], prog: str, extra: Callable[[argparse.ArgumentParser], object] | None = None
                 ) -> tuple[argparse.Namespace, Any] | None:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("release", nargs="?", help="the release's name, optional (the work directory holds one "
                   "release); another name is refused")
    p.add_argument("--workdir", type=Path, required=True, help="the release's work directory")
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    state = CheckedState(args.workdir / "state")
    if not state.exists():
        print(f"{prog}: no release in {args.workdir}", file=sys.stderr)
        return None
    held = _name_of(state.load_release())
    if args.release is not None and args.release != held:
        print(f"{prog}: no release {args.release} in {args.workdir}: it holds {held}", file=sys.stderr)
        return None
    return args, state


def _get(command: str, argv: list[str]) -> int:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true")
        p.add_argument("-w", "--watch", action="store_true", help="then print each change until it finishes")
        p.add_argument("--max-seconds", type=flags.number(0, above=True), default=24 * 3600.0, help=argparse.SUPPRESS)

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
        _follow(state, status, args.max_seconds)
    return 0


def _follow(state: Any, status: Any, max_seconds: float, poll: float = 0.5) -> None:
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


def _history(argv: list[str]) -> int:
    found = _local_state(argv, "canary history", lambda p: p.add_argument("--json", action="store_true"))
    if found is None:
        return 1
    args, state = found
    from controller.present.view import render_history

    print(render_history(state.load_status(), args.json))
    return 0


def operate(command: str, argv: list[str]) -> int:
    """pause | resume | promote [--full] | approve | abort | retry | undo --workdir DIR: patch the local
    release's spec; exit 0 done, 1 no release there, 2 does not apply to the release's phase."""

    def extra(p: argparse.ArgumentParser) -> None:
        if command == "promote":
            p.add_argument("--full", action="store_true", help="promote now, skipping every remaining step")
        p.add_argument("-w", "--watch", action="store_true", help="then follow the release until it finishes")
        p.add_argument("--max-seconds", type=flags.number(0, above=True), default=24 * 3600.0, help=argparse.SUPPRESS)

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
        _follow(state, status, args.max_seconds)
    return 0
