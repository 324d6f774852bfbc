"""The platform's operators: the staff who register institutions, create subsidy funds and
roadshows, file window demands and override roadshow selections.

Each operator has a key, sent in the gRPC metadata ``x-operator-key``. A service knows only the
keys' SHA-256 digests, from its setting ``OPERATOR_KEYS``: comma-separated ``operator_id=digest``
pairs. With none configured, every operator call is refused. A new key and its setting entry:

    python -m meshkit.operators new OPERATOR_ID
"""

from __future__ import annotations

import hmac
import sys

import grpc

from meshkit import apikeys
from meshkit.errors import PermissionDenied
from meshkit.grpcserver import metadata

HEADER = "x-operator-key"
PREFIX = "fmo_"


def new() -> str:
    return PREFIX + apikeys.new()[len(apikeys.PREFIX):]


def entry(operator_id: str, key: str) -> str:
    """The ``OPERATOR_KEYS`` entry of ``operator_id`` with ``key``."""
    return f"{operator_id}={apikeys.digest(key)}"


def parse(spec: str) -> dict[str, str]:
    """``operator_id=sha256hex`` pairs, comma-separated, as a map of digest to operator id; raises
    ValueError naming a malformed entry."""
    out: dict[str, str] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        operator_id, sep, digest = item.partition("=")
        operator_id, digest = operator_id.strip(), digest.strip().lower()
        if not sep or not operator_id or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"OPERATOR_KEYS entry {item[:80]!r} is not operator_id=<SHA-256 of the key, in hex>")
        out[digest] = operator_id
    return out


class Operators:
    """Checks an operator's key against the configured digests."""

    def __init__(self, spec: str) -> None:
        self.by_digest = parse(spec)

    def identify(self, key: str) -> str | None:
        """The operator whose key ``key`` is, or None."""
        if not key:
            return None
        got = apikeys.digest(key)
        for known, operator_id in self.by_digest.items():
            if hmac.compare_digest(got, known):
                return operator_id
        return None

    def optional(self, context: grpc.aio.ServicerContext) -> str | None:
        """The operator calling, or None for a call without an operator key; :class:`PermissionDenied`
        for a key that is no operator's."""
        return self.authenticate(context) if metadata(context, HEADER) else None

    def authenticate(self, context: grpc.aio.ServicerContext, operator_id: str = "") -> str:
        """The operator calling, by the key in its metadata; :class:`PermissionDenied` if there is
        none, it is no operator's, or the request names another operator (``operator_id``)."""
        key = metadata(context, HEADER)
        if not key:
            raise PermissionDenied(f"this is an operator's call: it needs an operator key in the metadata {HEADER}")
        if not self.by_digest:
            raise PermissionDenied("no operator is configured on this service (OPERATOR_KEYS): operator calls are "
                                   "refused")
        who = self.identify(key)
        if who is None:
            raise PermissionDenied(f"{HEADER} is not the key of any operator of this platform")
        if operator_id and operator_id != who:
            raise PermissionDenied(f"operator_id {operator_id!r} is not the operator of {HEADER} ({who!r})")
        return who


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "new" and argv[1].strip() and "=" not in argv[1] and "," not in argv[1]:
        key = new()
        print(f"key (give it to the operator; it is not kept):  {key}")
        print(f"OPERATOR_KEYS entry (for every service):      {entry(argv[1].strip(), key)}")
        return 0
    sys.stderr.write("usage: python -m meshkit.operators new OPERATOR_ID\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
