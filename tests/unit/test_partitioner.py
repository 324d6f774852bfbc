"""Our producers place records exactly where aiokafka's default partitioner (and Java clients) would."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from meshkit.kafka import partition_of

DEFAULT = DefaultPartitioner()


@given(key=st.binary(min_size=0, max_size=80), partitions=st.integers(min_value=1, max_value=64))
def test_a_keyed_record_goes_to_the_partition_of_its_key_hash(key: bytes, partitions: int) -> None:
    everyone = list(range(partitions))
    assert partition_of(key, everyone, everyone) == DEFAULT(key, everyone, everyone)


def test_a_topic_of_one_partition_takes_every_record_even_without_a_key() -> None:
    assert {partition_of(k, [0], [0]) for k in (None, b"", b"lead-1", b"x" * 100)} == {0}
    assert partition_of(b"k", [0], []) == 0  # its leader unknown for a moment: still the only partition
