"""An https endpoint, as R2 is: boto3, rclone and the model downloads over TLS, trusting a private CA.

The loopback S3 server speaks plain HTTP; the fault proxy terminates TLS in front of it with a
certificate of a CA made here, so every client really verifies a chain (no verify=False anywhere).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from pathlib import Path

import pytest

from syncbridge.config import load_config
from syncbridge.store import open_store

from ..conftest import new_bucket, run_cli, server_env
from ..faultproxy import FaultProxy


def make_tls(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA (its PEM file returned) and a server context for 127.0.0.1 with a certificate it signed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "syncbridge test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tls_endpoint(rclone_s3, tmp_path):
    ca_file, context = make_tls(tmp_path)
    bucket = new_bucket(rclone_s3)
    with FaultProxy(rclone_s3.endpoint, tls=context) as proxy:
        env = {**server_env(rclone_s3, bucket, tmp_path), "R2_ENDPOINT": proxy.endpoint}
        yield proxy, env, ca_file


def test_models_over_https_with_a_private_ca(tls_endpoint, tmp_path):
    proxy, env, ca_file = tls_endpoint
    assert proxy.endpoint.startswith("https://")
    env = {**env, "SYNCBRIDGE_CA_BUNDLE": str(ca_file)}
    config = load_config(env)
    store = open_store(config.remote, state_dir=config.state_dir)  # boto3, verifying against the CA
    big = os.urandom(66 * 1024 * 1024 + 12345)  # from 64 MiB on: ranged GETs of a presigned URL
    small = {f"e{i:02d}.pt": os.urandom(3000) for i in range(20)}  # 16 and more: one rclone batch
    store.put_bytes("models/checkpoints/big.safetensors", big, metadata={"sha256": sha(big)})
    for name, data in small.items():
        store.put_bytes(f"models/embeddings/{name}", data, metadata={"sha256": sha(data)})
    lines = ["[settings]", f'models_dir = "{tmp_path / "models"}"',
             '[[model]]', 'name = "big"', 'path = "checkpoints/big.safetensors"', f'sha256 = "{sha(big)}"']
    for name, data in small.items():
        lines += ['[[model]]', f'name = "{name}"', f'path = "embeddings/{name}"', f'sha256 = "{sha(data)}"']
    manifest = tmp_path / "m.toml"
    manifest.write_text("\n".join(lines) + "\n")

    proc = run_cli(["models", "pull", str(manifest)], env, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "batch copy from the cache failed" not in proc.stderr, proc.stderr  # rclone trusted the CA too
    assert (tmp_path / "models/checkpoints/big.safetensors").read_bytes() == big
    for name, data in small.items():
        assert (tmp_path / "models/embeddings" / name).read_bytes() == data
    gets = proxy.seen(method="GET")
    big_gets = [s for s in gets if s.path.endswith("/models/checkpoints/big.safetensors")]
    # every part came through the presigned URL over TLS (no fall-back to the store's client)
    assert len(big_gets) >= 3 and all("X-Amz-Signature=" in s.query for s in big_gets), big_gets
    # rclone (the batch of small models) verified the chain too: it fetched every one of them
    fetched = {s.path.rsplit("/", 1)[1] for s in gets if "/models/embeddings/" in s.path}
    assert fetched == set(small), sorted(fetched)


def test_an_untrusted_certificate_is_a_clear_error(tls_endpoint, tmp_path):
    proxy, env, _ca_file = tls_endpoint
    manifest = tmp_path / "m.toml"
    manifest.write_text(f'[settings]\nmodels_dir = "{tmp_path / "models"}"\n'
                        '[[model]]\nname = "m"\npath = "m.bin"\nsize = 10\n')
    proc = run_cli(["models", "pull", str(manifest)], env)  # no CA bundle: the public CAs only
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out
    assert "TLS certificate is not trusted" in out and "SYNCBRIDGE_CA_BUNDLE" in out, out
    assert not proxy.seen(method="GET") and not proxy.seen(method="HEAD")  # the handshake failed: no request


def test_a_missing_ca_bundle_is_a_config_error(tls_endpoint, tmp_path):
    _proxy, env, _ca_file = tls_endpoint
    proc = run_cli(["models", "pull", str(tmp_path / "none.toml")],
                   {**env, "SYNCBRIDGE_CA_BUNDLE": str(tmp_path / "nope.pem")})
    assert proc.returncode == 2 and "SYNCBRIDGE_CA_BUNDLE" in proc.stderr and "nope.pem" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bulk_push_and_doctor_fail_fast_on_an_untrusted_certificate(tls_endpoint, tmp_path):
    proxy, env, ca_file = tls_endpoint
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    # rclone alone retried for minutes, then said "is a file not a directory"
    proc = run_cli(["push", str(src), "x"], env, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "certificate of the endpoint" in proc.stderr and "SYNCBRIDGE_CA_BUNDLE" in proc.stderr, proc.stderr
    doctor = run_cli(["doctor"], env, timeout=60)
    assert doctor.returncode != 0 and "not trusted" in doctor.stdout + doctor.stderr
    # with the CA: rclone verifies the chain itself
    proc = run_cli(["push", str(src), "x"], {**env, "SYNCBRIDGE_CA_BUNDLE": str(ca_file)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [s.path for s in proxy.seen(method="PUT") if s.path.endswith("/x/a.txt")]
    doctor = run_cli(["doctor"], {**env, "SYNCBRIDGE_CA_BUNDLE": str(ca_file)}, timeout=60)
    assert "not trusted" not in doctor.stdout + doctor.stderr, doctor.stdout
