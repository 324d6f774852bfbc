"""``python -m deploy.demo``: the demo against a mesh that is already running."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from rich.console import Console

from deploy.demo import dataset, runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.demo",
                                     description="Load demo data into a running finmesh and watch leads flow. "
                                                 "Registering its institutions and creating its fund are operators' "
                                                 "calls: set OPERATOR_KEY to an operator's key (make run's is in "
                                                 "its data folder's operator.key).")
    parser.add_argument("--rate", type=float, default=None,
                        help=f"demands per second (default $DEMO_RATE or {runner.DEFAULT_RATE:g})")
    parser.add_argument("--demand-addr", default=runner.DEFAULT_ADDRESSES["demand"])
    parser.add_argument("--matcher-addr", default=runner.DEFAULT_ADDRESSES["matcher"])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
                        help="Kafka bootstrap servers (default $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)")
    parser.add_argument("--seed", type=int, default=dataset.DEFAULT_SEED)
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--keys-file", type=Path, default=runner.DEFAULT_KEYS_FILE,
                        help="where the demo institutions' API keys are kept between runs "
                             f"(default {runner.DEFAULT_KEYS_FILE})")
    args = parser.parse_args(argv)
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    target = runner.Target(args.demand_addr, args.matcher_addr, args.bootstrap, Console(), keys_file=args.keys_file,
                           operator_key=os.environ.get("OPERATOR_KEY", ""))
    try:
        asyncio.run(runner.run(target, rate=args.rate, seed=args.seed, duration=args.duration))
    except KeyboardInterrupt:
        target.console.print("demo stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
