"""One connection to the endpoint before anything else: connect, TLS with a trusted certificate, an answer."""

from __future__ import annotations

import contextlib
import os
import socket
import time


from ..errors import StoreError

__all__ = ["check_endpoint"]


def check_endpoint(endpoint: str, *, timeout: float = 5.0, ca_bundle: str | os.PathLike[str] | None = None,
                   answer_timeout: float = 10.0) -> float:
    """Open (and close) one connection to the endpoint, with a TLS handshake for https (verifying
    the certificate against ``ca_bundle``, else the system's CAs), and see that an HTTP answer
    comes to an unsigned ``HEAD /`` (any status: an S3 server refuses it, but answers).

    rclone retries a refused connection for minutes (measured: 7m46s before a push
    to a closed port gave up, with a misleading "is a file not a directory"), an
    untrusted certificate likewise (3m51s, the same message), and waits on a server
    that accepts connections but never answers for longer still (still waiting after
    150 s), so bulk operations check this first and fail fast with a clear message.

    Returns:
        The connect time in seconds.

    Raises:
        StoreError: ``code`` is ``NameResolution``, ``ConnectionRefused``,
            ``ConnectFailed`` or ``NoAnswer`` (retryable: the server may come back),
            or ``CertificateUntrusted`` or ``TLSFailed`` (not retryable).
    """
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StoreError(f"cannot resolve the endpoint's host {host!r} (R2_ENDPOINT={endpoint}): {exc.strerror}",
                         code="NameResolution", retryable=True) from exc
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        with contextlib.closing(socket.socket(family, kind, proto)) as sock:
            sock.settimeout(timeout)
            started = time.monotonic()
            try:
                sock.connect(addr)
                seconds = time.monotonic() - started
            except OSError as exc:
                last = exc
                continue
            where = f"{host}:{port} (R2_ENDPOINT={endpoint})"
            if parts.scheme == "https":
                with _tls(sock, host, where, ca_bundle) as tls:
                    _check_answer(tls, host, where, answer_timeout)
            else:
                _check_answer(sock, host, where, answer_timeout)
            return seconds
    if isinstance(last, ConnectionRefusedError):
        raise StoreError(f"cannot connect to the endpoint {host}:{port} (R2_ENDPOINT={endpoint}): connection refused "
                         f"(is the server running? is the port right?)", code="ConnectionRefused",
                         retryable=True) from last
    reason = "timed out" if isinstance(last, (TimeoutError, socket.timeout)) else str(last)
    raise StoreError(f"cannot connect to the endpoint {host}:{port} (R2_ENDPOINT={endpoint}): {reason}",
                     code="ConnectFailed", retryable=True) from last


def _check_answer(sock: socket.socket, host: str, where: str, timeout: float) -> None:
    """Send ``HEAD /`` and wait for the status line of an answer."""
    sock.settimeout(timeout)
    try:
        sock.sendall(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        first = sock.recv(64)
    except (TimeoutError, socket.timeout) as exc:
        raise StoreError(f"the endpoint {where} accepted a connection but sent no answer in {timeout:g} s "
                         f"(a hung server, or a proxy in between that does not forward?)", code="NoAnswer",
                         retryable=True) from exc
    except OSError as exc:  # reset or hung up on before any answer
        raise StoreError(f"the endpoint {where} closed the connection without an answer ({exc}; is it an S3 "
                         f"endpoint?)", code="NoAnswer", retryable=True) from exc
    if not first.startswith(b"HTTP/"):
        what = "closed the connection" if not first else f"answered {first[:20]!r}, not HTTP,"
        raise StoreError(f"the endpoint {where} {what} (is it an S3 endpoint?)", code="NoAnswer", retryable=True)


@contextlib.contextmanager
def _tls(sock: socket.socket, host: str, where: str, ca_bundle: str | os.PathLike[str] | None):
    import ssl

    context = ssl.create_default_context(cafile=os.fspath(ca_bundle) if ca_bundle else None)
    try:
        tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=True)
    except ssl.SSLCertVerificationError as exc:
        raise StoreError(f"the TLS certificate of the endpoint {where} is not trusted: {exc.verify_message}; "
                         f"for a private CA, set SYNCBRIDGE_CA_BUNDLE to its PEM file", code="CertificateUntrusted",
                         retryable=False) from exc
    except ssl.SSLError as exc:
        raise StoreError(f"no TLS handshake with the endpoint {where}: {exc.reason or exc} (does it speak https?)",
                         code="TLSFailed", retryable=False) from exc
    except OSError as exc:
        raise StoreError(f"TLS handshake with the endpoint {where} failed: {exc}", code="ConnectFailed",
                         retryable=True) from exc
    with tls:
        yield tls


