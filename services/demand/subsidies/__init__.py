"""Interest subsidy funds of the demand service (the Xiamen model), granted without application
from the leads' outcomes: the pure core (:mod:`.domain`), storage (:mod:`.store`), the use cases
(:mod:`.service`) and the gRPC edge (:mod:`.api`)."""
