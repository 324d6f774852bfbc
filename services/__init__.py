"""The four services of the mesh. Each is a package with the same shape:

- ``domain.py`` — the pure core (no I/O, no protobuf),
- ``mapping.py`` — protobuf ⇄ domain, in one place,
- ``store.py`` — its PostgreSQL schema's queries,
- ``api.py`` — gRPC servicers (thin: translate and delegate),
- ``consumers.py`` — Kafka handlers (thin, idempotent),
- ``app.py`` — the composition root (``build``), and ``__main__.py`` to run it,
- ``migrations/`` — ordered SQL for its own schema.
"""
