"""The notifier's pure rules: SLA resolution, the clock's ticks, backoff, signatures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.notifier import domain
from services.notifier.domain import LeadChange, Policy, RetryPolicy

AT = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def test_the_most_specific_sla_wins() -> None:
    assert domain.resolve_sla(None, None, 0) == (72, "default", "")
    assert domain.resolve_sla(None, None, 24)[:2] == (24, "institution")
    inst = Policy("b", "", 48, "desk@b")
    assert domain.resolve_sla(None, inst, 24) == (48, "institution policy", "desk@b")
    assert domain.resolve_sla(Policy("b", "p", 12), inst, 24) == (12, "product policy", "desk@b")


def test_reminder_at_two_thirds_then_breach_and_a_late_notifier_breaches_without_reminding() -> None:
    c = domain.start_clock(LeadChange("l", "d", "b", "p", "DELIVERED", 2, "", AT), 72, "default", "")
    assert c.remind_at == AT + timedelta(hours=48) and c.due_at == AT + timedelta(hours=72)
    assert domain.tick(c, AT + timedelta(hours=47)) == domain.Tick(False, False, c.remind_at)
    assert domain.tick(c, AT + timedelta(hours=49)) == domain.Tick(True, False, c.due_at)
    assert domain.tick(c, AT + timedelta(hours=80)) == domain.Tick(False, True, None)


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    p = RetryPolicy(base_seconds=2, cap_seconds=60)
    assert [p.delay(n, 0.999999) for n in (1, 2, 3)] == [pytest_approx(2), pytest_approx(4), pytest_approx(8)]
    assert p.delay(1, 0.0) == 1.0 and p.delay(20, 0.0) == 30.0


def test_the_default_retries_span_hours_not_minutes() -> None:
    p = RetryPolicy()
    assert p.span(0.0) >= 2 * 3600  # the shortest draw of jitter still keeps trying for two hours
    assert p.span(0.999999) <= 4.1 * 3600
    assert max(p.delay(n, 0.999999) for n in range(1, p.max_attempts)) <= p.cap_seconds


def pytest_approx(x: float):  # noqa: ANN201
    import pytest
    return pytest.approx(x, rel=1e-5)


def test_signatures_verify_and_refuse_replays_and_tampering() -> None:
    body = b'{"a": 1}'
    sig = domain.sign("s3cret", body, 1_000)
    assert domain.verify("s3cret", body, "1000", sig, now=1_100)
    assert not domain.verify("s3cret", body, "1000", sig, now=1_000 + 301)  # too old: a replay
    assert not domain.verify("s3cret", b'{"a": 2}', "1000", sig, now=1_100)
    assert not domain.verify("other", body, "1000", sig, now=1_100)
