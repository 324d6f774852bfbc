"""The demo: a realistic data set loaded into a running mesh, demands fed at a gentle rate, and
the leads shown live as a bank's system receives them.

* :mod:`deploy.demo.dataset` — the deterministic data set and demand generator (pure)
* :mod:`deploy.demo.runner` — loading, feeding, the lead watcher and the live view
* ``python -m deploy.demo [--rate N] [--demand-addr ..] [--matcher-addr ..] [--bootstrap ..]``

``make run`` calls :func:`run` with the embedded mesh's ``MeshInfo`` once every service is healthy.
"""

from __future__ import annotations

from typing import Any

from deploy.demo.runner import Stats, Target


async def run(mesh: Any, *, rate: float | None = None, duration: float | None = None) -> Stats:
    """Load the data set into ``mesh`` and show leads flowing until cancelled (Ctrl-C).

    ``mesh`` is ``deploy.embedded``'s ``MeshInfo``, a :class:`Target`, or any object with
    ``demand_addr``, ``matcher_addr``, ``bootstrap_servers`` and ``console``; ``rate`` is demands
    per second (default ``$DEMO_RATE`` or 5).
    """
    from deploy.demo import runner

    return await runner.run(mesh, rate=rate, duration=duration)


__all__ = ["Stats", "Target", "run"]
