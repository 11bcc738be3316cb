"""`canary comparator`: the shadow phase's comparator as a process (controller/adapters/shadow/comparator.py),
beside the stack on a cluster (manifests/shadow) and started by the local platform.

    canary comparator --entry URL [--entry-host HOST] [--header H] [--k 10] [--workers 4] [--queue 256]
                      [--listen 0.0.0.0] [--port 8000 | --fd N]

Exit code: 0 when stopped (SIGINT), 2 for a bad flag or an address it cannot serve on (one line naming it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from controller.adapters.shadow.comparator import Settings, log, serve
from controller.cli import flags
from controller.core.plan import DEFAULT_SHADOW_HEADER


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canary comparator",
                                     description="Pairs the stable and new versions' rankings of mirrored searches.")
    parser.add_argument("--entry", required=True, type=flags.http_url,
                        help="the stack's entry through the mesh, e.g. http://master-search:8000")
    parser.add_argument("--entry-host", default="", help="Host header of the entry requests (default: the URL's)")
    parser.add_argument("--header", type=flags.header_name, default=DEFAULT_SHADOW_HEADER,
                        help="the header naming the version to ask")
    parser.add_argument("--k", type=flags.whole(1), default=10, help="document ids compared per answer (default 10)")
    parser.add_argument("--workers", type=flags.whole(1, 256), default=4,
                        help="mirrored searches paired at once, each asking the stack three times (default 4)")
    parser.add_argument("--queue", type=flags.whole(1), default=256,
                        help="mirrored searches waiting at most; more are dropped and counted (default 256)")
    parser.add_argument("--listen", default="0.0.0.0", help="the address to serve on (default 0.0.0.0: all)")
    parser.add_argument("--port", type=flags.whole(0, 65535, "a port number (0 to 65535)"), default=8000,
                        help="the port to serve on (default 8000; 0: any free)")
    parser.add_argument("--fd", type=flags.whole(0, None, "a file descriptor's number (0 or more)"), default=None,
                        help="serve on this inherited, already bound socket instead of binding --listen/--port")
    return parser


def _serving_problem(exc: OSError, opts: argparse.Namespace) -> str:
    """`FLAG VALUE: reason` of a comparator that could not serve: the socket of --fd, else the address of
    --listen (no such name, not this machine's) or the port (in use, privileged)."""
    if opts.fd is not None:
        reason = exc.strerror or str(exc)
        return f"--fd {opts.fd}: {reason[:1].lower()}{reason[1:]}"
    return flags.bind_problem(exc, f"--listen {opts.listen}", f"--port {opts.port}")


def main(argv: Sequence[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server, service = serve(Settings(opts.entry, opts.entry_host, opts.header, opts.k, opts.workers, opts.queue),
                                opts.listen, opts.port, opts.fd)
    except OSError as exc:  # the port in use, no such address, a --fd that is not an open socket
        print(f"canary comparator: {_serving_problem(exc, opts)}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    log.info("comparator on %s:%d asking %s (epoch %s)", host, port, opts.entry, service.log.epoch)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        service.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
