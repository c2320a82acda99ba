"""One call's own options (#15): deadline, max_attempts, cache use and fallbacks, never sent."""

from __future__ import annotations

from typing import Any

import pytest

from fallbackchain import AllTiersFailedError, FallbackConfig
from fallbackchain.testing import Fault

BACKUP = FallbackConfig(name="backup", model="backup-model", base_url="http://127.0.0.1:1/v1")


@pytest.fixture
def chain(harness_factory: Any, backup: Any) -> Any:
    return harness_factory(fallbacks=(BACKUP,), fallback_servers={"backup": backup})


def test_fallbacks_false_keeps_a_call_on_the_primary(chain, server, backup):
    server.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError):
        chain.ask("hello", fallbacks=False)
    assert backup.counts["total"] == 0
    _, response = chain.ask("hello", fallbacks=["backup"])
    assert response.source == "backup"
    assert "fallbacks" not in backup.requests[-1].body


def test_an_unknown_fallback_name_is_refused_before_anything_is_sent(chain, server):
    with pytest.raises(
        ValueError, match=r"unknown fallback\(s\) \['nope'\]; configured: \['backup'\]"
    ):
        chain.ask("hello", fallbacks=["nope"])
    assert server.counts["total"] == 0


def test_max_attempts_sets_every_routes_budget_for_this_call(chain, server, backup):
    server.default = Fault.status(503)
    _, response = chain.ask("hello", max_attempts=1)
    assert [a.tier for a in response.attempts] == ["stream", "backup"]
    assert "max_attempts" not in server.requests[-1].body


def test_a_call_deadline_bounds_its_waits(chain, server, backup, clock):
    server.default = Fault.status(429, retry_after=2)
    _, response = chain.ask("hello", deadline=1.0)  # waiting 2 s would cross it
    assert response.source == "backup"
    assert clock.sleeps == []
    assert (server.counts["stream"], server.counts["completion"]) == (1, 0)


def test_cache_off_neither_reads_nor_writes(chain, server, backup):
    chain.ask("kept")  # stored
    server.default = backup.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError):
        chain.ask("kept", cache="off")  # not read
    server.default = backup.default = Fault.ok()
    chain.ask("never stored", cache="off")
    server.default = backup.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError):
        chain.ask("never stored")  # it was not written


def test_cache_refresh_answers_live_and_stores(chain, server, backup):
    chain.ask("kept")
    server.default = Fault.status(503)
    backup.default = Fault.ok()
    _, response = chain.ask("kept", cache="refresh")  # live: the backup, not the cache
    assert response.source == "backup"
    server.default = backup.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError):
        chain.ask("kept", cache="refresh")  # never answers from the cache
    _, cached = chain.ask("kept")
    assert cached.source == "cache" and cached.text == response.text  # the refreshed answer


@pytest.mark.parametrize(
    ("option", "error"),
    [
        ({"deadline": 0}, ValueError),
        ({"deadline": "5"}, ValueError),
        ({"max_attempts": 0}, ValueError),
        ({"max_attempts": True}, ValueError),
        ({"cache": "sometimes"}, ValueError),
        ({"fallbacks": "backup"}, TypeError),
    ],
)
def test_bad_call_options_are_refused_before_anything_is_sent(chain, server, option, error):
    with pytest.raises(error):
        chain.ask("hello", **option)
    assert server.counts["total"] == 0
