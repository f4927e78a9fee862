"""The idempotency store's bounds: entries, bytes (least recently used first) and the TTL, by a fake clock."""

from endorm_server.http.idempotency import IdempotencyStore, Stored


def _entry(body: bytes, store: IdempotencyStore) -> Stored:
    return Stored(b"fp", 200, [], body, store.clock() + store.ttl_s)


def test_lru_by_entries_and_bytes_and_ttl():
    now = [0.0]
    store = IdempotencyStore(max_entries=2, max_bytes=10, ttl_s=5, clock=lambda: now[0])
    store.put(b"a", _entry(b"1234", store))
    store.put(b"b", _entry(b"1234", store))
    assert store.get(b"a") is not None  # a is now the most recent
    store.put(b"c", _entry(b"12", store))  # 3 entries > 2: b (least recent) goes
    assert store.get(b"b") is None and store.get(b"a") is not None and store.evictions == 1
    store.put(b"d", _entry(b"123456", store))  # 4 + 2 + 6 bytes > 10: c, then a would go until it fits
    assert store.bytes <= 10 and store.get(b"d") is not None and len(store) <= 2
    store.put(b"huge", _entry(b"x" * 11, store))  # larger than the whole store: not kept, nothing evicted for it
    assert store.get(b"huge") is None
    now[0] = 100.0  # everything expired: the next put sweeps it out
    store.put(b"e", _entry(b"1", store))
    assert store.get(b"d") is None and len(store) == 1 and store.bytes == 1
