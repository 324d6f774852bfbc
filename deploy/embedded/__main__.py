"""``python -m deploy.embedded run [--demo/--no-demo] [--data-dir .stack]``: the whole mesh.

Starts embedded PostgreSQL and Kafka (unless ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS`` are
set), creates the topics, starts the four services, waits for their health checks, optionally
runs the demo, then supervises until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from rich.console import Console

from deploy.embedded.supervisor import DEFAULT_DATA_DIR, DEFAULT_SERVICES, Mesh, run_demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.embedded", description="Run the finmesh mesh on one machine."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start and supervise the whole mesh")
    run.add_argument(
        "--demo",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="call deploy.demo.run(mesh_info) once the mesh is healthy",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"where PostgreSQL, Kafka and the logs live (default {DEFAULT_DATA_DIR})",
    )
    run.add_argument("--services", default=",".join(DEFAULT_SERVICES), help="comma-separated services to run")
    run.add_argument("--health-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    return run_mesh(
        args.data_dir,
        demo=args.demo,
        health_timeout=args.health_timeout,
        services=[s for s in args.services.split(",") if s],
    )


def run_mesh(data_dir: Path, *, demo: bool, health_timeout: float, services: list[str]) -> int:
    """Run the mesh until Ctrl-C / SIGTERM; returns the process exit code."""
    console = Console()
    for sig in (signal.SIGTERM, signal.SIGHUP):  # SIGTERM, or the terminal closing, stops us as Ctrl-C does
        signal.signal(sig, signal.default_int_handler)
    mesh = Mesh.from_env(data_dir, services=services, console=console)
    code = 0
    began = time.monotonic()
    try:
        mesh.start()
        mesh.wait_healthy(health_timeout)
        console.print(f"[bold green]mesh healthy[/] in {time.monotonic() - began:.1f} s")
        mesh.print_table()
        if demo:
            try:
                run_demo(mesh.info)
            except Exception:  # noqa: BLE001 - a failed demo must not take the mesh down
                console.print_exception()
        console.print("supervising — Ctrl-C to stop")
        threading.Event().wait()
    except KeyboardInterrupt:
        console.print("stopping …")
    except Exception:  # noqa: BLE001 - report, then clean up below
        console.print_exception()
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        mesh.stop()
        console.print("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
