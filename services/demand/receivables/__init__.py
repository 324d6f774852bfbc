"""The receivable registry of the demand service (supply-chain receivables financing): the pure
core (:mod:`.domain`), its storage (:mod:`.store`), the use cases (:mod:`.service`) and the gRPC
edge (:mod:`.api`)."""
