"""The Redis cache skips an unreadable stored row (counted) and scans the rest, like the disk."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from .redis_server import RedisServer, require_redis_package

require_redis_package()

from fallbackchain._config import CacheConfig  # noqa: E402
from fallbackchain._redis_link import RedisLink  # noqa: E402
from fallbackchain.cache._redis_cache import RedisResponseCache  # noqa: E402

from .test_cache import T0, FakeClock, body, completion, real_key  # noqa: E402


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


def test_a_redis_row_with_a_400_digit_stored_at_is_skipped_and_the_rest_exported(
    redis_server: RedisServer,
) -> None:
    namespace = f"t-{uuid.uuid4().hex[:12]}"
    link = RedisLink(redis_server.url)
    config = CacheConfig(ttl=100.0, memory_items=0, backend="redis", redis_url=redis_server.url)
    cache = RedisResponseCache(config, namespace=namespace, clock=FakeClock(T0), link=link)
    try:
        for n in range(5):
            assert cache.put(real_key(n), completion(f"answer {n}"))
        bad = '{"format":1,"stored_at":' + "1" * 400 + ',"completion":' + json.dumps(body()) + "}"
        with redis_server.client() as client:
            client.set(f"{namespace}:cache:{real_key(5)}", bad)
        exported = sorted(row.key for row in cache.export_rows())
        assert exported == sorted(real_key(n) for n in range(5))
        assert cache.stats().skipped == 1
        assert cache.get(real_key(5)) is None
    finally:
        cache.close()
        link.close()
