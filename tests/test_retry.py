"""The one retry table (syncbridge.retry): every row, the backoff, and the store reading it."""

from __future__ import annotations

import random

import pytest

from syncbridge import retry
from syncbridge.retry import (ATTEMPTS, BODY_CODES, RETRYABLE_CODES, UNREACHABLE_CODES, backoff_delay, pause,
                              retry_by_hand, retryable, retryable_code, retryable_status, unreachable)


@pytest.mark.parametrize("status", [408, 429, 500, 501, 502, 503, 504, 507, 520, 599])
def test_retryable_statuses(status: int) -> None:
    assert retryable_status(status) and retryable(status=status) and retryable_code(str(status))


@pytest.mark.parametrize("status", [None, 200, 206, 301, 400, 401, 403, 404, 405, 409, 410, 412, 416, 422])
def test_final_statuses(status: int | None) -> None:
    assert not retryable_status(status)
    assert not retryable(status=status)
    if status is not None:
        assert not retryable_code(str(status))


def test_408_is_retryable_everywhere() -> None:
    """Decided once: the server gave up waiting for the request; a new request cures it."""
    assert retryable_status(408) and "408" in RETRYABLE_CODES and retryable(code="RequestTimeout", status=400)


@pytest.mark.parametrize("code", sorted(RETRYABLE_CODES))
def test_retryable_codes(code: str) -> None:
    assert retryable_code(code) and retryable(code=code)
    assert not unreachable(code=code)  # an answer, however unhappy
    assert not retry_by_hand(code=code)  # the client (botocore) retried the request already


@pytest.mark.parametrize("code", sorted(UNREACHABLE_CODES))
def test_a_stall_or_a_lost_connection_mid_body_is_retried_by_hand(code: str) -> None:
    assert retry_by_hand(code=code, mid_body=True)  # botocore never retries a body it was reading
    assert not retry_by_hand(code=code)  # before the answer: botocore retried the request itself


@pytest.mark.parametrize("code", sorted(UNREACHABLE_CODES))
def test_unreachable_codes(code: str) -> None:
    assert retryable_code(code)
    assert unreachable(code=code)
    assert not unreachable(code=code, status=503)  # with a status, somebody answered
    assert not retry_by_hand(code=code)


@pytest.mark.parametrize("code", sorted(BODY_CODES))
def test_body_codes_are_the_only_ones_retried_by_hand(code: str) -> None:
    assert retryable_code(code) and retry_by_hand(code=code) and not unreachable(code=code)


@pytest.mark.parametrize("code", ["", "NoSuchKey", "NoSuchBucket", "AccessDenied", "InvalidAccessKeyId",
                                  "SignatureDoesNotMatch", "PreconditionFailed", "NotImplemented", "ETagChanged",
                                  "CertificateUntrusted", "OSError", "ENOSPC"])
def test_final_codes(code: str) -> None:
    assert not retryable_code(code) and not retry_by_hand(code=code) and not unreachable(code=code)


def test_the_store_reads_the_same_table() -> None:
    from botocore.exceptions import ClientError

    from syncbridge import store as store_package
    from syncbridge.store import s3 as store

    assert store_package.RETRYABLE_CODES is retry.RETRYABLE_CODES

    def error(code: str, status: int):
        return store._store_error(ClientError({"Error": {"Code": code, "Message": "m"},
                                               "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"),
                                  key="k", action="get")

    assert error("SlowDown", 503).retryable
    assert error("", 408).retryable  # was not, before the one table
    assert error("", 429).retryable
    assert not error("NoSuchKey", 404).retryable
    assert not error("AccessDenied", 403).retryable


def test_backoff_is_exponential_capped_and_jittered() -> None:
    assert backoff_delay(1, rand=lambda: 0.0) == pytest.approx(0.1)
    assert backoff_delay(1, rand=lambda: 0.999) < 0.2
    assert backoff_delay(3, rand=lambda: 0.0) == pytest.approx(0.4)
    assert backoff_delay(30, rand=lambda: 1.0) == pytest.approx(5.0)
    rng = random.Random(7)
    delays = [backoff_delay(n, rand=rng.random) for n in range(1, 10)]
    assert all(d > 0 for d in delays) and max(delays) <= 5.0


def test_pause_sleeps_the_backoff_or_stops_on_cancel() -> None:
    slept: list[float] = []
    assert pause(2, rand=lambda: 0.0, sleep=slept.append) is True
    assert slept == [pytest.approx(0.2)]

    class Cancelled:
        def wait(self, seconds: float) -> bool:
            slept.append(seconds)
            return True

    assert pause(1, cancel=Cancelled(), rand=lambda: 0.0) is False
    assert ATTEMPTS == 3
