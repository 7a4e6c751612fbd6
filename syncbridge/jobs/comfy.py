"""ComfyUI's HTTP API as a serverless worker uses it, and a job's input images put in place.

:class:`ComfyClient` speaks the endpoints ComfyUI has had for years: ``POST /prompt`` (queue a
workflow in the API format; a refused one comes back 400 with ``node_errors``), ``GET
/history/{prompt_id}`` (empty until the prompt is done, then its ``outputs`` per node and its
``status``), ``GET /view`` (an output's bytes), ``GET /object_info`` (the node classes installed),
``POST /interrupt``. Every failure is a :class:`~syncbridge.errors.JobError` in the caller's terms.

:func:`fetch_image` fetches an input image URL: https only (http with the private-address setting),
the address checked before connecting and pinned for the connection (a private, loopback or
link-local address is refused unless ``SYNCBRIDGE_JOB_IMAGE_PRIVATE`` allows it), no redirects,
the size capped.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Iterator, Mapping

import attrs

from ..errors import JobError

__all__ = ["ComfyClient", "HistoryFile", "PromptResult", "fetch_image", "output_files"]

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0


@attrs.frozen
class HistoryFile:
    """One file a prompt's ``/history`` reports: where it is and which node made it."""

    node: str  # node id in the workflow
    node_type: str  # its class_type ("" when the workflow does not say)
    kind: str  # the history's list it came in: images, gifs, videos, audio, latents, 3d, ...
    filename: str
    subfolder: str
    type: str  # output, temp, input

    @property
    def rel(self) -> str:
        """Its path relative to ComfyUI's folder of that type."""
        return f"{self.subfolder.strip('/')}/{self.filename}" if self.subfolder.strip("/") else self.filename


@attrs.frozen
class PromptResult:
    prompt_id: str
    files: tuple[HistoryFile, ...]
    status: str


def output_files(entry: Mapping[str, Any], workflow: Mapping[str, Any]) -> list[HistoryFile]:
    """Every file of every kind a history entry lists (``outputs.{node}.{kind}[] = {filename, subfolder,
    type}``): images, gifs (VideoHelperSuite), videos, audio, latents, 3D, and whatever a custom node
    reports in that shape."""
    files: list[HistoryFile] = []
    for node, out in (entry.get("outputs") or {}).items():
        if not isinstance(out, Mapping):
            continue
        node_type = str((workflow.get(str(node)) or {}).get("class_type") or "") if isinstance(workflow, Mapping) else ""
        for kind, items in out.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, Mapping) and isinstance(item.get("filename"), str):
                    files.append(HistoryFile(str(node), node_type, str(kind), item["filename"],
                                             str(item.get("subfolder") or ""), str(item.get("type") or "output")))
    return files


def _node_errors_text(node_errors: Any, workflow: Mapping[str, Any]) -> str:
    parts = []
    if isinstance(node_errors, Mapping):
        for node, info in node_errors.items():
            kind = (info or {}).get("class_type") or (workflow.get(str(node)) or {}).get("class_type") or "?"
            reasons = []
            for err in (info or {}).get("errors") or []:
                if isinstance(err, Mapping):
                    detail = err.get("details") or ""
                    reasons.append(f"{err.get('message') or 'error'}{f' ({detail})' if detail else ''}")
            parts.append(f"node #{node} ({kind}): {'; '.join(reasons) or 'refused'}")
    return "; ".join(parts)


class ComfyClient:
    """ComfyUI at ``base_url`` (``COMFYUI_URL``)."""

    def __init__(self, base_url: str, *, timeout: float = REQUEST_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _open(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            why = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
            raise JobError(f"ComfyUI is not reachable at {self.base_url} (COMFYUI_URL): {why}",
                           kind="unreachable") from None

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        status, raw = self._open(method, path, body)
        if status >= 400:
            raise JobError(f"ComfyUI answered {status} to {method} {path.split('?')[0]}", kind="unreachable",
                           details={"status": status})
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise JobError(f"ComfyUI's answer to {method} {path.split('?')[0]} is not JSON", kind="unreachable") \
                from None

    def wait_ready(self, timeout: float) -> None:
        """Wait until ComfyUI answers (a worker starts it with the container)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._json("GET", "/system_stats")
                return
            except JobError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.2)

    def object_info(self) -> Mapping[str, Any]:
        return self._json("GET", "/object_info") or {}

    def queue(self, workflow: Mapping[str, Any]) -> str:
        """Queue ``workflow``; its prompt id.

        Raises:
            JobError: (``refused``) ComfyUI refused it: ``details`` holds its ``node_errors``.
        """
        status, raw = self._open("POST", "/prompt", {"prompt": workflow, "client_id": self.client_id})
        try:
            answer = json.loads(raw or b"{}")
        except ValueError:
            answer = {}
        if status == 200 and isinstance(answer, Mapping) and answer.get("prompt_id"):
            if answer.get("node_errors"):
                log.info("ComfyUI queued the prompt with node errors: %s",
                         _node_errors_text(answer["node_errors"], workflow), extra={"event": "job.node_errors"})
            return str(answer["prompt_id"])
        error = answer.get("error") if isinstance(answer, Mapping) else None
        node_errors = answer.get("node_errors") if isinstance(answer, Mapping) else None
        message = error.get("message") if isinstance(error, Mapping) else (error if isinstance(error, str) else "")
        detail = error.get("details") if isinstance(error, Mapping) else ""
        nodes = _node_errors_text(node_errors, workflow)
        text = "; ".join(t for t in (message, detail, nodes) if t) or f"HTTP {status}"
        raise JobError(f"ComfyUI refused the workflow: {text}", kind="refused",
                       details={"error": error, "node_errors": node_errors})

    def history(self, prompt_id: str) -> Mapping[str, Any] | None:
        """The prompt's history entry, or None while it is queued or running."""
        answer = self._json("GET", f"/history/{urllib.parse.quote(prompt_id)}")
        entry = answer.get(prompt_id) if isinstance(answer, Mapping) else None
        return entry if isinstance(entry, Mapping) else None

    def poll(self, prompt_id: str, workflow: Mapping[str, Any], *, timeout: float,
             interval: float = 0.1) -> Iterator[PromptResult | None]:
        """Yield None while the prompt runs (a caller may do other work between polls), then its result.

        Raises:
            JobError: (``execution``) ComfyUI reports an error, naming the node; (``timeout``) not done
                within ``timeout`` seconds (the prompt is interrupted).
        """
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("status_str") == "error":
                    raise self._execution_error(status, workflow)
                if status.get("completed", True) or status.get("status_str") == "success":
                    yield PromptResult(prompt_id, tuple(output_files(entry, workflow)), "success")
                    return
            if time.monotonic() >= deadline:
                self.interrupt()
                raise JobError(f"the prompt did not finish within {timeout:g}s (SYNCBRIDGE_JOB_TIMEOUT); it was "
                               "interrupted", kind="timeout")
            yield None
            time.sleep(interval)

    @staticmethod
    def _execution_error(status: Mapping[str, Any], workflow: Mapping[str, Any]) -> JobError:
        for message in status.get("messages") or []:
            if isinstance(message, list) and len(message) == 2 and message[0] == "execution_error":
                info = message[1] if isinstance(message[1], Mapping) else {}
                node = info.get("node_id", "?")
                kind = info.get("node_type") or (workflow.get(str(node)) or {}).get("class_type") or "?"
                what = f"{info.get('exception_type') or 'error'}: {info.get('exception_message') or ''}".strip(": ")
                return JobError(f"ComfyUI failed at node #{node} ({kind}): {what}", kind="execution",
                                details={"node": str(node), "node_type": kind,
                                         "exception_message": info.get("exception_message")})
            if isinstance(message, list) and message and message[0] == "execution_interrupted":
                info = message[1] if len(message) > 1 and isinstance(message[1], Mapping) else {}
                node = info.get("node_id")
                return JobError(f"the prompt was interrupted in ComfyUI{f' at node #{node}' if node else ''}",
                                kind="execution", details={"node": node})
        return JobError("ComfyUI reports the prompt failed (no error message given)", kind="execution")

    def interrupt(self) -> None:
        try:
            self._open("POST", "/interrupt", {})
        except JobError:
            pass

    def view(self, file: HistoryFile, sink: Any, *, chunk: int = 1 << 20) -> int:
        """Copy an output's bytes through ``/view`` into ``sink`` (a binary file); how many."""
        query = urllib.parse.urlencode({"filename": file.filename, "subfolder": file.subfolder, "type": file.type})
        try:
            with self._opener.open(f"{self.base_url}/view?{query}", timeout=self.timeout) as response:
                total = 0
                while True:
                    data = response.read(chunk)
                    if not data:
                        return total
                    sink.write(data)
                    total += len(data)
        except (OSError, http.client.HTTPException) as exc:
            raise JobError(f"cannot fetch {file.rel} from ComfyUI: {exc}", kind="unreachable") from None


def _check_address(host: str, port: int, *, allow_private: bool) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise JobError(f"input image host {host!r} cannot be resolved: {exc.strerror or exc}", kind="input") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if allow_private or ip.is_global:
            return str(ip)
    raise JobError(f"input image host {host!r} is a private, loopback or link-local address: refused "
                   "(SYNCBRIDGE_JOB_IMAGE_PRIVATE=true allows it)", kind="input")


class _Pinned(http.client.HTTPSConnection):
    """An https connection to an address checked beforehand (the certificate is checked for the host name)."""

    def __init__(self, host: str, ip: str, port: int, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, ip: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


def fetch_image(url: str, *, max_bytes: int, allow_private: bool, field: str, timeout: float = 30.0,
                ca_file: str | None = None) -> bytes:
    """An input image's bytes from ``url`` (see the module's doc for what is refused).

    Raises:
        JobError: (``input``) naming ``field``: refused address, an answer other than 200, too large.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    try:
        ip = _check_address(host, port, allow_private=allow_private)
    except JobError as exc:
        raise JobError(f"{field}: {exc}", kind="input") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if https:
        conn = _Pinned(host, ip, port, timeout, ssl.create_default_context(cafile=ca_file))
    else:
        conn = _PinnedHTTP(host, ip, port, timeout)
    try:
        conn.request("GET", target, headers={"User-Agent": "syncbridge-worker", "Host": parts.netloc.rsplit("@", 1)[-1]})
        response = conn.getresponse()
        if response.status != 200:
            raise JobError(f"{field}: {host} answered HTTP {response.status} (redirects are not followed)",
                           kind="input")
        length = response.getheader("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise JobError(f"{field}: the image is larger than the {max_bytes / 1e6:g} MB allowed "
                           "(SYNCBRIDGE_JOB_IMAGE_MAX_MB)", kind="input")
        data = response.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise JobError(f"{field}: the image is larger than the {max_bytes / 1e6:g} MB allowed "
                           "(SYNCBRIDGE_JOB_IMAGE_MAX_MB)", kind="input")
        return data
    except (OSError, http.client.HTTPException) as exc:
        raise JobError(f"{field}: cannot fetch the image from {host}: {exc}", kind="input") from None
    finally:
        conn.close()
