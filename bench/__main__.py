"""`make bench`: every benchmark, one after the other; figures in bench/results/."""

import asyncio

from rich.console import Console

from bench import pipeline


def main() -> None:
    console = Console()
    console.rule("demand → lead latency, 1,500 demands at 100/s")
    asyncio.run(pipeline.measure(console, demands=1500, minutes=None, rate=100.0, name="demand_to_lead_latency"))


if __name__ == "__main__":
    main()
