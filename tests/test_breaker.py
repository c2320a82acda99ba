"""The breaker gate: permission before, outcome after, one half-open probe, injected clock."""

from __future__ import annotations

import asyncio
import threading
import time

import pybreaker
import pytest

from fallbackchain.breaker import BUSY, BreakerGate, MemoryGateStore
from fallbackchain.breaker._stores import Decision


def gate(clock, fail_max=3, reset_timeout=30.0, **kw):
    return BreakerGate("stream", fail_max=fail_max, reset_timeout=reset_timeout, clock=clock, **kw)


def fail(g, times):
    for _ in range(times):
        g.acquire().failure()


def test_closed_breaker_grants_permits(clock):
    g = gate(clock)
    assert g.acquire() is not None
    assert g.state == "closed"


def test_opens_after_fail_max_consecutive_failures(clock):
    g = gate(clock)
    fail(g, 2)
    assert g.state == "closed"
    fail(g, 1)
    assert g.state == "open"
    assert g.acquire() is None


def test_a_success_resets_the_consecutive_count(clock):
    g = gate(clock)
    fail(g, 2)
    g.acquire().success()
    fail(g, 2)
    assert g.state == "closed"


def test_open_breaker_refuses_until_reset_timeout_passes(clock):
    g = gate(clock)
    fail(g, 3)
    clock.advance(29.9)
    assert g.acquire() is None
    clock.advance(0.2)
    permit = g.acquire()
    assert permit is not None and permit.probe
    assert g.state == "half-open"


def test_half_open_lets_exactly_one_probe_through(clock):
    g = gate(clock)
    fail(g, 3)
    clock.advance(31)
    probe = g.acquire()
    assert probe is not None
    assert [g.acquire() for _ in range(10)] == [None] * 10


def test_successful_probe_closes_the_breaker(clock):
    g = gate(clock)
    fail(g, 3)
    clock.advance(31)
    g.acquire().success()
    assert g.state == "closed"
    assert g.fail_counter == 0


def test_failed_probe_reopens_for_another_full_timeout(clock):
    g = gate(clock)
    fail(g, 3)
    clock.advance(31)
    g.acquire().failure()
    assert g.state == "open"
    clock.advance(29)
    assert g.acquire() is None


def test_released_probe_is_neutral_and_frees_the_probe_slot(clock):
    g = gate(clock)
    fail(g, 3)
    clock.advance(31)
    g.acquire().release()
    assert g.state == "half-open"
    assert g.acquire() is not None


def test_release_in_closed_state_counts_nothing(clock):
    g = gate(clock)
    fail(g, 2)
    for _ in range(5):
        g.acquire().release()
    assert g.fail_counter == 2
    assert g.state == "closed"


def test_a_probe_whose_holder_vanished_expires_after_its_lease(clock):
    g = gate(clock, probe_lease=10.0)
    fail(g, 3)
    clock.advance(31)
    assert g.acquire() is not None  # never settled
    clock.advance(9)
    assert g.acquire() is None
    clock.advance(2)
    assert g.acquire() is not None


def test_permit_settles_only_once(clock):
    g = gate(clock)
    p = g.acquire()
    p.failure()
    p.failure()
    p.success()
    assert g.fail_counter == 1


def test_straggler_success_does_not_close_an_open_breaker(clock):
    g = gate(clock)
    g.acquire().success()  # proven: any number of attempts may be in flight
    early = g.acquire()
    fail(g, 3)
    early.success()
    assert g.state == "open"


def test_state_changes_are_reported_and_a_failing_listener_is_contained(clock, caplog):
    seen = []

    def listener(name, old, new):
        seen.append((name, old, new))
        raise RuntimeError("listener bug")

    g = gate(clock, on_state_change=listener)
    fail(g, 3)
    clock.advance(31)
    g.acquire().success()
    assert seen == [
        ("stream", "closed", "open"),
        ("stream", "open", "half-open"),
        ("stream", "half-open", "closed"),
    ]
    assert "listener failed" in caplog.text


def test_gate_does_not_serialise_callers(clock):
    """Unlike pybreaker's call(), no lock is held while the protected work runs."""
    g = gate(clock)
    g.acquire().success()  # proven: unproven, at most fail_max would be let in
    inside = threading.Barrier(8, timeout=5)

    def worker():
        permit = g.acquire()
        inside.wait()  # all 8 must be inside their "call" at the same time
        permit.success()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert not inside.broken


def test_concurrent_half_open_callers_get_one_probe(clock):
    g = gate(clock)
    fail(g, 3)
    clock.advance(31)
    start = threading.Barrier(16, timeout=5)
    granted = []

    def worker():
        start.wait()
        granted.append(g.acquire())

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sum(p is not None for p in granted) == 1


@pytest.mark.slow
def test_pybreaker_call_serialises_callers_which_is_why_the_gate_exists():
    """Documents the hazard: pybreaker's call() runs the protected call under its lock."""
    import pybreaker

    cb = pybreaker.CircuitBreaker()
    concurrently = threading.Barrier(2, timeout=0.5)

    def protected():
        concurrently.wait()

    errors = []

    def worker():
        try:
            cb.call(protected)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    if not errors:
        pytest.fail("pybreaker no longer serialises calls; revisit the gate's rationale")
    assert any(isinstance(e, threading.BrokenBarrierError) for e in errors)


def test_pybreaker_call_counts_cancellation_as_a_failure_which_a_released_permit_does_not(clock):
    """Why the gate never uses call(): a cancelled consumer says nothing about the upstream."""
    cb = pybreaker.CircuitBreaker(fail_max=5)

    def cancelled():
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        cb.call(cancelled)
    assert cb.fail_counter == 1
    g = gate(clock)
    g.acquire().release()
    assert g.fail_counter == 0


def test_pybreaker_is_the_state_machine_and_its_storage_holds_the_counts(clock):
    store = MemoryGateStore()
    g = gate(clock, store=store)
    fail(g, 2)
    assert (store.breaker.fail_counter, store.breaker.current_state) == (2, "closed")
    fail(g, 1)
    assert store.breaker.current_state == "open"
    assert store.breaker.fail_max == 3 and store.breaker.reset_timeout == 30.0
    storage = store.breaker._state_storage
    assert storage.counter == g.fail_counter == 3  # the one source of the count
    assert storage.opened_at.timestamp() == pytest.approx(clock())  # on the gate's clock
    clock.advance(31)
    g.acquire().success()
    assert (store.breaker.current_state, storage.counter) == ("closed", 0)


class Heard(pybreaker.CircuitBreakerListener):
    def __init__(self):
        self.changes = []

    def state_change(self, cb, old_state, new_state):
        self.changes.append((cb.name, old_state.name, new_state.name))


def test_a_pybreaker_listener_hears_every_transition(clock):
    store = MemoryGateStore()
    heard = Heard()
    store.breaker.add_listener(heard)
    store.breaker.name = "stream"
    g = gate(clock, store=store)
    fail(g, 3)
    clock.advance(31)
    probe = g.acquire()
    probe.failure()
    clock.advance(31)
    g.acquire().success()
    assert heard.changes == [
        ("stream", "closed", "open"),
        ("stream", "open", "half-open"),
        ("stream", "half-open", "open"),
        ("stream", "open", "half-open"),
        ("stream", "half-open", "closed"),
    ]


def test_a_restore_continues_from_a_state_seen_elsewhere_without_a_transition(clock):
    """What a Redis store's local fallback does when Redis goes away (seeded, O(1))."""
    seen = []
    store = MemoryGateStore()
    g = gate(clock, store=store, on_state_change=lambda *a: seen.append(a))
    g.acquire().success()  # proven, so the restore below must take that back too
    store.restore("open", 10**6, clock() - 20.0, proven=False)
    assert (g.state, g.fail_counter) == ("open", 10**6)
    assert g.acquire() is None
    clock.advance(10.1)
    assert g.acquire().probe  # opened 30 s ago on the gate's clock
    store.restore("closed", 2, None, proven=False)
    assert (g.state, g.fail_counter) == ("closed", 2)  # pybreaker's closing kept the count
    assert g.acquire().limited and g.acquire() is BUSY  # 2 failures + 1 slot = fail_max
    assert seen == [("stream", "open", "half-open")]  # the restores were not transitions


def test_two_gates_sharing_a_store_share_one_breaker(clock):
    store = MemoryGateStore()
    a, b = gate(clock, store=store), gate(clock, store=store)
    fail(a, 2)
    fail(b, 1)
    assert a.state == b.state == "open"


def test_async_permits_follow_the_same_rules(clock):
    import asyncio

    g = gate(clock)

    async def go():
        for _ in range(3):
            permit = await g.aacquire()
            await permit.afailure()
        assert await g.aacquire() is None
        clock.advance(31)
        probe = await g.aacquire()
        assert probe.probe
        assert await g.aacquire() is None
        await probe.asuccess()

    asyncio.run(go())
    assert g.state == "closed"


def test_end_takes_the_outcome_and_says_whether_the_breaker_opened(clock):
    g = gate(clock, fail_max=2)
    assert g.acquire().end("failure") is False
    assert g.acquire().end("failure") is True
    assert g.state == "open"
    clock.advance(31)
    assert g.acquire().end("release") is False
    assert g.state == "half-open"
    assert asyncio.run(g.acquire().aend("success")) is False
    assert g.state == "closed"


def test_only_the_in_process_store_ends_permits_in_place(clock):
    """An async chain ends such a permit in place (no task); any store that may wait, not."""

    class WaitingStore(MemoryGateStore):
        async def aapply(self, step):
            await asyncio.sleep(0)
            return self.apply(step)

    assert gate(clock).acquire().in_place
    waiting = gate(clock, store=WaitingStore())
    assert not waiting.acquire().in_place
    waiting._store = MemoryGateStore()  # a swapped store is seen at once
    assert waiting.acquire().in_place


def test_a_busy_caller_waits_until_an_attempt_settles_not_the_whole_timeout(clock):
    g = gate(clock)
    held = [g.acquire() for _ in range(3)]
    assert g.acquire() is BUSY
    threading.Timer(0.05, held[0].release).start()
    started = time.monotonic()
    g.wait(30.0)
    assert time.monotonic() - started < 10.0  # woken by the release, long before 30 s
    assert g.acquire().limited


def test_a_busy_task_is_woken_from_another_thread_and_the_loop_keeps_running(clock):
    g = gate(clock)
    held = [g.acquire() for _ in range(3)]

    async def go() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick = asyncio.create_task(ticker())
        threading.Timer(0.2, held[0].success).start()
        started = time.monotonic()
        await g.await_change(30.0)
        assert time.monotonic() - started < 10.0
        tick.cancel()
        return ticks

    assert asyncio.run(go()) > 3  # the loop ran while the task waited
    assert g.acquire() is not BUSY


def test_a_wait_with_nothing_settling_ends_after_its_seconds(clock):
    g = gate(clock)
    started = time.monotonic()
    g.wait(0.05)
    assert 0.04 < time.monotonic() - started < 5.0


def test_a_settle_between_busy_and_wait_is_not_missed(clock):
    g = gate(clock)
    held = [g.acquire() for _ in range(3)]
    since = g.generation
    assert g.acquire() is BUSY
    held[0].release()  # lands before the caller starts waiting
    started = time.monotonic()
    g.wait(30.0, since=since)
    assert time.monotonic() - started < 1.0
    assert g.acquire().limited


def test_an_async_settle_between_busy_and_wait_is_not_missed(clock):
    g = gate(clock)
    held = [g.acquire() for _ in range(3)]

    async def go() -> float:
        since = g.generation
        assert await g.aacquire() is BUSY
        await held[0].arelease()
        started = time.monotonic()
        await g.await_change(30.0, since=since)
        return time.monotonic() - started

    assert asyncio.run(go()) < 1.0


# -- backoff sleeps end when the breaker opens ------------------------------------------------


def sleeps_whole(g: BreakerGate) -> bool:
    """A 50-ms backoff sleep on ``g`` runs its course: nothing cut it short."""
    started = time.monotonic()
    left = g.sleep_unless_open(0.05)
    return left == 0.0 and time.monotonic() - started > 0.04


def test_a_backoff_sleep_ends_when_another_attempt_opens_the_breaker(clock):
    g = gate(clock)
    held = [g.acquire() for _ in range(3)]
    threading.Timer(0.05, lambda: [p.failure() for p in held]).start()
    started = time.monotonic()
    left = g.sleep_unless_open(30.0)
    assert time.monotonic() - started < 10.0  # woken by the opening, long before 30 s
    assert 20.0 < left < 30.0  # what was left of the wait: the caller decides about it
    assert g.state == "open"


def test_a_backoff_sleep_is_not_cut_short_by_other_attempts_ending(clock):
    g = gate(clock)
    held = [g.acquire() for _ in range(2)]
    threading.Timer(0.01, held[0].success).start()
    threading.Timer(0.02, held[1].failure).start()  # a failure, but the breaker stays closed
    started = time.monotonic()
    assert g.sleep_unless_open(0.2) == 0.0  # slept it all
    assert 0.19 < time.monotonic() - started < 5.0


def test_a_backoff_sleep_on_a_breaker_seen_open_returns_at_once(clock):
    g = gate(clock)
    fail(g, 3)
    started = time.monotonic()
    assert g.sleep_unless_open(30.0) > 29.0  # all of it left
    assert time.monotonic() - started < 1.0
    clock.advance(30.0)
    probe = g.acquire()  # half-open: a permit again, so sleeps are whole again
    assert probe is not None and probe.probe
    assert sleeps_whole(g)


def test_a_probe_that_closes_the_breaker_makes_sleeps_whole_again(clock):
    g = gate(clock)
    fail(g, 3)
    clock.advance(30.0)
    probe = g.acquire()
    assert probe is not None and probe.probe
    assert g.acquire() is None  # refused while the probe runs: seen open
    probe.success()
    assert g.state == "closed"
    assert sleeps_whole(g)  # not skipped: the breaker closed


def test_an_opening_seen_elsewhere_leaves_sleeps_whole(clock):
    """Opened through another gate object on the store (another process): no wake-up here.

    A refusal here would not say for how long: the breaker may be half-open, its probe about
    to close it. Sleeping the whole backoff is the old behaviour, never a retry without one.
    """
    store = MemoryGateStore()
    here, elsewhere = gate(clock, store=store), gate(clock, store=store)
    here.acquire().release()
    fail(elsewhere, 3)
    assert here.acquire() is None  # refused
    assert sleeps_whole(here)


def test_an_opening_seen_longer_ago_than_reset_timeout_no_longer_counts(clock):
    g = gate(clock)
    fail(g, 3)
    clock.advance(30.0)  # half-open by now, for whoever asks: perhaps closed elsewhere
    assert sleeps_whole(g)


def test_a_permit_granted_after_an_opening_makes_sleeps_whole_again(clock):
    """A shared store's state restored after its outage (Redis back): no transition is seen,
    but a granted permit says the breaker is not open."""
    g = gate(clock)
    fail(g, 3)  # seen open
    g._store = MemoryGateStore()  # the state the shared store had all along: closed
    g.acquire().release()
    assert sleeps_whole(g)


def test_an_opening_wakes_a_sleeper_even_if_a_grant_clears_it_at_once(clock):
    """A permit decided just before the opening may clear the flag just after it is set: the
    sleeper was woken by the opening itself, and stays woken."""
    g = gate(clock)
    held = [g.acquire() for _ in range(3)]

    def open_then_grant() -> None:
        for permit in held:
            permit.failure()
        g._answer(g._ask(), Decision("normal", None))  # the late grant

    threading.Timer(0.05, open_then_grant).start()
    started = time.monotonic()
    g.sleep_unless_open(30.0)
    assert time.monotonic() - started < 10.0


def test_an_async_backoff_sleep_ends_when_a_thread_opens_the_breaker(clock):
    g = gate(clock)
    held = [g.acquire() for _ in range(3)]

    async def go() -> float:
        threading.Timer(0.05, lambda: [p.failure() for p in held]).start()
        started = time.monotonic()
        left = await g.asleep_unless_open(30.0)
        assert 20.0 < left < 30.0
        return time.monotonic() - started

    assert asyncio.run(go()) < 10.0


def test_an_async_backoff_sleep_runs_its_course_while_the_breaker_stays_closed(clock):
    g = gate(clock)

    async def go() -> float:
        started = time.monotonic()
        assert await g.asleep_unless_open(0.05) == 0.0
        return time.monotonic() - started

    assert 0.04 < asyncio.run(go()) < 5.0


# Each script is a sequence of steps; the sync permit methods and their async twins share one
# core, so the same script must leave the same trace through either.
SCRIPTS = {
    "failures open it, a probe closes it": [
        "fail",
        "fail",
        "fail",
        "acquire",
        ("advance", 31),
        "succeed",
        "acquire",
    ],
    "a released probe frees the probe slot": [
        "fail",
        "fail",
        "fail",
        ("advance", 31),
        "release",
        "acquire",
        "fail",
        "acquire",
    ],
    "first content frees the limited slot, a later failure still counts": [
        "content-then-fail",
        "acquire",
        "fail",
        "fail",
        "acquire",
    ],
    "a permit settles once": ["fail-twice", "succeed-twice", "release-twice", "acquire"],
    "a success resets the count": ["fail", "fail", "succeed", "fail", "fail", "acquire"],
}


def _kind(permit):
    if permit is None:
        return "refused"
    if permit is BUSY:
        return "busy"
    return "probe" if permit.probe else ("limited" if permit.limited else "normal")


def _run_script_sync(g, clock, script):
    trace = []
    for step in script:
        if isinstance(step, tuple):
            clock.advance(step[1])
            continue
        permit = g.acquire()
        trace.append(_kind(permit))
        if permit is None or permit is BUSY:
            continue
        if step.startswith("content"):
            permit.first_content()
            permit.first_content()
        if step.endswith("fail") or step == "fail-twice":
            trace.append(permit.failure())
        if step == "fail-twice":
            trace.append(permit.failure())
        if step.startswith("succeed"):
            permit.success()
            permit.success()
        if step.startswith("release"):
            permit.release()
            permit.release()
        trace.append((g.state, g.fail_counter, g.generation))
    return trace


async def _run_script_async(g, clock, script):
    trace = []
    for step in script:
        if isinstance(step, tuple):
            clock.advance(step[1])
            continue
        permit = await g.aacquire()
        trace.append(_kind(permit))
        if permit is None or permit is BUSY:
            continue
        if step.startswith("content"):
            await permit.afirst_content()
            await permit.afirst_content()
        if step.endswith("fail") or step == "fail-twice":
            trace.append(await permit.afailure())
        if step == "fail-twice":
            trace.append(await permit.afailure())
        if step.startswith("succeed"):
            await permit.asuccess()
            await permit.asuccess()
        if step.startswith("release"):
            await permit.arelease()
            await permit.arelease()
        trace.append((g.state, g.fail_counter, g.generation))
    return trace


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_sync_and_async_permits_take_the_same_steps(name):
    from .conftest import FakeClock

    script = SCRIPTS[name]
    traces, changes = [], []
    for run in ("sync", "async"):
        clock = FakeClock()
        seen: list[tuple[str, str]] = []
        g = gate(clock, on_state_change=lambda _name, old, new, seen=seen: seen.append((old, new)))
        if run == "sync":
            traces.append(_run_script_sync(g, clock, script))
        else:
            traces.append(asyncio.run(_run_script_async(g, clock, script)))
        changes.append(seen)
    assert traces[0] == traces[1]
    assert changes[0] == changes[1]
    assert traces[0], "the script ran no step"
