"""meshkit — the shared runtime every finmesh service is built on.

One place for what all services need: typed settings (:mod:`settings`), the topic
registry (:mod:`topics`), the protobuf codec and event headers (:mod:`codec`), Kafka
producers, consumers and dead-lettering (:mod:`kafka`), PostgreSQL pools and migrations
(:mod:`db`), the transactional outbox and its relay (:mod:`outbox`), the inbox for
idempotent consumers (:mod:`inbox`), gRPC servers with health and reflection
(:mod:`grpcserver`), Prometheus metrics (:mod:`metrics`) and the service life cycle with
graceful shutdown (:mod:`lifecycle`).

Nothing here connects at import time.
"""
