"""Kafka's default partitioner: murmur2 of the key bytes, so a key always maps to the
same partition (and to the partition Kafka's Java client would choose)."""

from __future__ import annotations

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (seed 0x9747b28c), as a signed 32-bit int."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    n4 = length & ~3
    for i in range(0, n4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[n4 + 2] << 16
    if rest >= 2:
        h ^= data[n4 + 1] << 8
    if rest >= 1:
        h ^= data[n4]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, partitions: int) -> int:
    """``toPositive(murmur2(key)) % partitions``, as Kafka does."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class KeyPartitioner:
    """Caches key -> partition (keys repeat; murmur2 in Python costs microseconds)."""

    MAX_CACHE = 100_000

    def __init__(self) -> None:
        self._cache: dict[tuple[bytes, int], int] = {}

    def __call__(self, key: bytes, partitions: int) -> int:
        ck = (key, partitions)
        p = self._cache.get(ck)
        if p is None:
            if len(self._cache) >= self.MAX_CACHE:
                self._cache.clear()
            p = self._cache[ck] = partition_for_key(key, partitions)
        return p
