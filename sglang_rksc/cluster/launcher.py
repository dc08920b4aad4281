"""`python -m sglang_rksc.launch_cluster`: replicas of the sglang-rksc server behind SGLang's router, until
Ctrl-C or SIGTERM.

    python -m sglang_rksc.launch_cluster --replicas 2 --policy cache_aware --port 30000 -- --model qwen2.5-coder-1.5b

Flags after `--` go to every replica (our launcher's and SGLang's); `--router-args` to the router.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import threading
from collections.abc import Sequence

from sglang_rksc.cluster.cluster import POLICIES, ROUTER_DEFAULTS, LaunchedCluster
from sglang_rksc.runtime.server_process import ServerStartError, exit_on_sigterm

PROG = "python -m sglang_rksc.launch_cluster"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [--replicas N] [--policy P] [--port PORT] [-- SERVER FLAGS]",
        description="Start N replicas of the sglang-rksc server (each with the plugin) and SGLang's router "
        "in front of them. Programs and benchmarks run against the router's URL with --url.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--replicas", type=int, default=2, help="servers behind the router (one per GPU on a GPU host)")
    p.add_argument(
        "--policy",
        choices=POLICIES,
        default="cache_aware",
        help="the router's policy: cache_aware keeps requests that share a prefix on one replica",
    )
    p.add_argument("--host", default="127.0.0.1", help="where the router and the replicas listen")
    p.add_argument("--port", type=int, default=30000, help="the router's port (replicas take free ports)")
    p.add_argument(
        "--router-args",
        default="",
        help="more flags for sglang-router, as one quoted string; ours unless given: "
        + " ".join(f"{k} {v}" for k, v in ROUTER_DEFAULTS.items()),
    )
    p.add_argument("--log-dir", help="where the router's and the replicas' logs go (default: a temporary folder)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, server_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parser().parse_args(own)
    if args.replicas < 1:
        parser().error(f"--replicas must be at least 1, got {args.replicas}")
    exit_on_sigterm()
    cluster = LaunchedCluster(
        args.replicas,
        policy=args.policy,
        server_args=server_args,
        router_args=shlex.split(args.router_args),
        host=args.host,
        port=args.port,
        log_dir=args.log_dir,
    )
    print(f"starting {args.replicas} replicas and the router (logs: {cluster.log_dir}) ...", flush=True)
    try:
        with cluster:
            for i, url in enumerate(cluster.replica_urls):
                print(f"replica {i}: {url}", flush=True)
            print(f"router ({args.policy}) ready at {cluster.url}", flush=True)
            threading.Event().wait()
    except ServerStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
