"""Operators' keys (pure): the OPERATOR_KEYS setting, and who a call's key belongs to."""

from __future__ import annotations

import pytest

from meshkit import apikeys, operators
from meshkit.errors import PermissionDenied
from meshkit.settings import ServiceSettings


class Call:
    """The part of a gRPC call's context an operator check reads."""

    def __init__(self, *metadata: tuple[str, str]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


def test_each_entry_names_an_operator_and_the_sha256_of_its_key() -> None:
    alice, bob = operators.new(), operators.new()
    ops = operators.Operators(f" {operators.entry('alice', alice)} ,bob={apikeys.digest(bob).upper()},")
    assert alice.startswith("fmo_") and alice != bob
    assert ops.identify(alice) == "alice" and ops.identify(bob) == "bob"  # hex digits in either case
    assert ops.identify(apikeys.new()) is None and ops.identify("") is None
    assert operators.Operators("").by_digest == {}


@pytest.mark.parametrize("spec", ["alice", "alice=", "=" + "a" * 64, "alice=" + "a" * 63, "alice=" + "g" * 64])
def test_a_malformed_entry_is_refused_at_start_naming_it(spec: str) -> None:
    with pytest.raises(ValueError, match="OPERATOR_KEYS entry"):
        operators.parse(spec)
    with pytest.raises(ValueError, match="OPERATOR_KEYS entry"):
        ServiceSettings(service_name="s", kafka_bootstrap_servers="k", database_url="d", grpc_port=0, metrics_port=0,
                        operator_keys=spec)


def test_a_call_is_an_operator_s_only_with_its_key_and_under_its_own_name() -> None:
    key = operators.new()
    ops = operators.Operators(operators.entry("window-7", key))
    assert ops.authenticate(Call((operators.HEADER, key))) == "window-7"
    assert ops.authenticate(Call((operators.HEADER, key)), "window-7") == "window-7"
    for call, named in ((Call(), ""), (Call((operators.HEADER, operators.new())), ""),
                        (Call((apikeys.HEADER, key)), ""), (Call((operators.HEADER, key)), "window-8")):
        with pytest.raises(PermissionDenied):
            ops.authenticate(call, named)
    assert ops.optional(Call()) is None and ops.optional(Call((operators.HEADER, key))) == "window-7"
    with pytest.raises(PermissionDenied):
        ops.optional(Call((operators.HEADER, "fmo_forged")))
    with pytest.raises(PermissionDenied, match="no operator"):
        operators.Operators("").authenticate(Call((operators.HEADER, key)))
