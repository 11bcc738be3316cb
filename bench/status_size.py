"""Benchmark: how big a release's status gets, and what keeping it under etcd's limit costs per decision.

For each number of analysed services: one decision record of the real sequential judge, its JSON bytes whole and
compacted (`DecisionRecord.compact`), the JSON bytes per byte of its `marshal` encoding (what
`DecisionRecord.stored_size` estimates from), and, after `--looks` decisions, how many the status keeps and how many
of those whole (`controller.core.status.bounded_history`), the JSON bytes of the decisions and of the whole status,
and the median time of one more decision (`ReleaseStatus.with_decision`).

    python -m bench.status_size [--services 1,5,20] [--looks 300] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import marshal
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.support.decisions import judged, looked

FIELDS = ("services", "record_bytes", "compact_bytes", "json_per_marshal", "kept", "whole", "history_bytes",
          "status_bytes", "decision_ms")


def _json(value: Any) -> int:
    return len(json.dumps(value, default=str))


def measure(services: int, looks: int) -> dict[str, Any]:
    record, _ = judged(services)
    status, made = looked(services, looks)
    ratios = [_json(r.for_storage()) / len(marshal.dumps(r.for_storage())) for r in (record, record.compact())]
    one_more = replace(made[-1], at=made[-1].at + 60)
    times = []
    for _ in range(21):
        started = time.perf_counter()
        status.with_decision(one_more)
        times.append(time.perf_counter() - started)
    return {"services": services, "record_bytes": _json(record.for_storage()),
            "compact_bytes": _json(record.compact().for_storage()),
            "json_per_marshal": f"{min(ratios):.2f}-{max(ratios):.2f}", "kept": len(status.history),
            "whole": sum(1 for r in status.history if r.checks and "estimates" in r.checks[0]),
            "history_bytes": _json([r.for_storage() for r in status.history]),
            "status_bytes": _json(status.for_storage()), "decision_ms": round(1000 * statistics.median(times), 2)}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [" | ".join(FIELDS), " | ".join("---" for _ in FIELDS)]
    return "\n".join(lines + [" | ".join(str(row[f]) for f in FIELDS) for row in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", default="1,5,20", help="numbers of analysed services, comma-separated")
    parser.add_argument("--looks", type=int, default=300, help="decisions recorded before the sizes are read")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        services = [int(s) for s in args.services.split(",")]
    except ValueError:
        parser.error(f"--services: {args.services!r} is not a comma-separated list of whole numbers")
    if min(services) < 1 or args.looks < 1:
        parser.error("--services and --looks must be at least 1")
    rows = [measure(n, args.looks) for n in services]
    print(table(rows))
    if args.out is not None:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
