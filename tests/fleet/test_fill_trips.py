"""Round trips of a cold model pull with write-back: the fill lease only for models worth it, and no
second look at the cache right after creating a lease nobody held before.

moto enforces conditional writes (the lease is on there); the fault proxy in front of it records
every request, so the test reads which keys were asked for and how.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from syncbridge.config import load_config
from syncbridge.models import pull_models

from ..conftest import new_bucket, server_env, wait_for
from ..faultproxy import FaultProxy
from .fleet_pod import Upstream


def _pull(moto_s3, tmp_path: Path, *, threshold: str, data: bytes, name: str):
    bucket = new_bucket(moto_s3)
    with Upstream({f"/{name}": data}) as up, FaultProxy(moto_s3.endpoint) as proxy:
        manifest = tmp_path / f"{name}.toml"
        manifest.write_text("\n".join([
            "[settings]", 'cache_prefix = "models"', "write_back = true", "",
            "[[model]]", f'name = "{name}"', f'path = "loras/{name}"',
            f'sha256 = "{hashlib.sha256(data).hexdigest()}"', f"size = {len(data)}", f'url = "{up.url}/{name}"', ""]))
        env = {**server_env(moto_s3, bucket, tmp_path), "R2_ENDPOINT": proxy.endpoint,
               "SYNCBRIDGE_MODELS": str(manifest), "SYNCBRIDGE_MODELS_DIR": str(tmp_path / f"models-{name}"),
               "SYNCBRIDGE_FILL_LEASE_MIN_BYTES": threshold}
        report = pull_models(load_config(env), environ={}, tier="datacenter")
        assert report.ok, report.table()
        time.sleep(0.1)
        seen = wait_for(lambda: [s for s in proxy.seen() if s.path.startswith(f"/{bucket}/")] or None, 5)
        served = up.bytes_served[f"/{name}"]
    entry = [s.method for s in seen if s.path == f"/{bucket}/models/loras/{name}"]
    leases = [s.method for s in seen if "/leases/" in s.path]
    return entry, leases, served


def test_a_model_below_the_threshold_is_filled_without_the_lease(moto_s3, tmp_path):
    data = os.urandom(300_000)
    entry, leases, served = _pull(moto_s3, tmp_path, threshold=str(len(data) + 1), data=data, name="small.bin")
    assert served == len(data)
    assert leases == []  # no lease written, no probe of the store for it
    assert entry == ["HEAD", "HEAD", "PUT"]  # the plan's look, the write-back's look, the write-back


def test_a_model_at_the_threshold_is_leased_and_the_new_lease_is_not_followed_by_another_look(moto_s3, tmp_path):
    data = os.urandom(300_000)
    entry, leases, served = _pull(moto_s3, tmp_path, threshold=str(len(data)), data=data, name="big.bin")
    assert served == len(data)
    assert leases == ["PUT", "PUT"]  # created, then released with its outcome
    # the plan's look, one more before taking the lease (the plan may be old), none after creating it,
    # the write-back's look, the write-back
    assert entry == ["HEAD", "HEAD", "HEAD", "PUT"]


@pytest.mark.parametrize("threshold", ["0"])
def test_zero_leases_every_model(moto_s3, tmp_path, threshold):
    data = os.urandom(1000)
    _, leases, _ = _pull(moto_s3, tmp_path, threshold=threshold, data=data, name="tiny.bin")
    assert leases == ["PUT", "PUT"]
