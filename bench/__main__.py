"""`make bench`: every benchmark, one after the other; figures in bench/results/."""

import asyncio

from rich.console import Console

from bench import intake, matcher, notifier, pipeline


def main() -> None:
    console = Console()
    console.rule("demand → lead latency: 1,200 demands at 20/s, then 1,500 at 50/s, then 1,500 at 100/s")
    phases = [pipeline.Phase(20, 1200), pipeline.Phase(50, 1500), pipeline.Phase(100, 1500)]
    asyncio.run(pipeline.measure(console, phases, name="demand_to_lead_latency"))
    asyncio.run(intake.measure(console))  # gRPC and portal-topic intake against do-nothing baselines
    asyncio.run(matcher.measure(console, matcher.defaults()))  # catalog 30k, throughput, latency, reverse join
    asyncio.run(notifier.measure(console))  # notifications per second, event → webhook latency


if __name__ == "__main__":
    main()
