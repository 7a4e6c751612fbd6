"""A simulated pod, run as its own process by the fleet tests and the benchmark.

Subcommands (JSON on the last stdout line):

* ``race KEY``: wait for the start time in ``FLEET_START_AT`` (wall clock), try once to
  take lease KEY, print ``{"won": bool, "holder": ...}``. Exactly one of N racers wins.
* ``hold KEY SECONDS``: take lease KEY (waiting), print ``{"held": true}``, keep it
  (renewing) for SECONDS or until killed (``kill -9`` leaves it to expire).
* ``fill KEY URL SHA256``: get cache entry KEY once for the fleet: copy it from the bucket
  or, as the single filler, download URL (the loopback "upstream"), verify and publish it.
  ``--to PATH`` is where the model lands locally.
* ``pod SPEC``: the simulation pod: models (``pull_models`` with write-back, or the fleet
  primitives directly when syncbridge.models is missing), outputs (the output watcher, to
  ``watch.prefix``, heartbeats on), bisync of one shared workflows prefix while editing its
  own file. See tests/test_fleet_sim.py.
* ``models [--alone]``: ``pull_models`` once, with the fleet's single-flight (default) or
  without coordination; for benchmarks/bench_fleet.py.

Configuration comes from the environment like any pod (R2_*, SYNCBRIDGE_*).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

from syncbridge.config import load_config
from syncbridge.errors import SyncBridgeError
from syncbridge.fleet import CacheFill
from syncbridge.fsutil import temp_beside
from syncbridge.hashing import HashingWriter, sha256_file
from syncbridge.models import cacheentry
from syncbridge.fleet.lease import Lease, LeaseBusyError, Leases
from syncbridge.store import open_store


class Upstream:
    """A loopback HTTP "upstream" (Hugging Face / CivitAI / a URL) counting what it serves.

    ``files``: path -> bytes. HEAD gives the size; GET serves the file (honouring a
    ``Range: bytes=N-`` request) in chunks, sleeping ``chunk_delay`` between them so
    downloads overlap in time like real ones. ``bytes_served[path]`` and ``gets[path]``
    count what went out. Use as a context manager.
    """

    def __init__(self, files: dict[str, bytes], *, chunk: int = 256 * 1024, chunk_delay: float = 0.0) -> None:
        import http.server
        import threading

        self.files = files
        self.bytes_served: dict[str, int] = {p: 0 for p in files}
        self.gets: dict[str, int] = {p: 0 for p in files}
        self.lock = threading.Lock()
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _lookup(self) -> bytes | None:
                data = upstream.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                return data

            def do_HEAD(self) -> None:
                data = self._lookup()
                if data is not None:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Accept-Ranges", "bytes")
                    self.end_headers()

            def do_GET(self) -> None:
                data = self._lookup()
                if data is None:
                    return
                start = 0
                rng = self.headers.get("Range", "")
                if rng.startswith("bytes=") and rng[6:].split("-")[0].isdigit():
                    start = int(rng[6:].split("-")[0])
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                with upstream.lock:
                    upstream.gets[self.path] += 1
                for i in range(0, len(body), chunk):
                    part = body[i:i + chunk]
                    try:
                        self.wfile.write(part)
                    except OSError:
                        return
                    with upstream.lock:
                        upstream.bytes_served[self.path] += len(part)
                    if chunk_delay:
                        time.sleep(chunk_delay)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Upstream":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait_start() -> None:
    at = float(os.environ.get("FLEET_START_AT", "0") or 0)
    delay = at - time.time()
    if delay > 0:
        time.sleep(delay)


def _say(doc: dict) -> None:
    print(json.dumps(doc), flush=True)


def download(url: str, dest: Path, sha256: str) -> int:
    """Fetch ``url`` to ``dest`` (temp beside, verified, renamed); returns bytes."""
    with temp_beside(dest) as (fd, tmp):
        with urllib.request.urlopen(url, timeout=60) as resp, os.fdopen(os.dup(fd), "wb") as out:
            writer = HashingWriter(out)
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                writer.write(chunk)
        if writer.hexdigest() != sha256:
            raise SyncBridgeError(f"{url}: sha256 mismatch")
        os.replace(tmp, dest)
    return writer.size


def fill_model(config, store, key: str, url: str, sha256: str, dest: Path, *, slow_fill: float = 0.0) -> dict:
    """Single-flight fill of one model through the production cache-entry protocol: returns how it was got."""
    fill = CacheFill.for_config(config, store)

    def from_upstream(held) -> str:
        download(url, dest, sha256)
        if slow_fill:
            time.sleep(slow_fill)
        if held is not None:
            held.check()
        outcome = cacheentry.publish(store, key, dest, sha256)
        if outcome.bad:
            raise SyncBridgeError(f"cache entry {key}: {outcome}")
        return "upstream"

    def try_cache() -> str | None:
        if store.head(key) is None:  # as the cache source's offer: no entry, no copy
            return None
        cacheentry.fetch(store, key, dest, sha256=sha256)
        return "cache"

    result = fill.run(key, fill=from_upstream, try_cache=try_cache)
    return {"key": key, "how": result.how, "waited": round(result.waited_seconds, 2),
            "took_over_from": result.took_over_from, "sha256_ok": sha256_file(dest)[1] == sha256}


def cmd_race(args, config, store) -> int:
    leases = Leases(store, owner=config.pod_id, prefix=config.fleet.prefix)
    leases.check_store()
    _wait_start()
    got = leases.try_acquire(args.key, purpose="race", ttl=config.fleet.lease_seconds)
    if isinstance(got, Lease):
        _say({"won": True, "pod": config.pod_id})
    else:
        _say({"won": False, "pod": config.pod_id, "holder": got.holder})
    return 0


def cmd_hold(args, config, store) -> int:
    leases = Leases(store, owner=config.pod_id, prefix=config.fleet.prefix)
    with leases.hold(args.key, purpose=args.purpose, ttl=config.fleet.lease_seconds, subject=args.key) as held:
        _say({"held": True, "pod": config.pod_id, "stolen_from": held.stolen_from})
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline and not held.lost.is_set():
            time.sleep(0.1)
    _say({"released": True})
    return 0


def cmd_fill(args, config, store) -> int:
    _wait_start()
    doc = fill_model(config, store, args.key, args.url, args.sha256, Path(args.to), slow_fill=args.slow)
    _say(doc)
    return 0


def cmd_pod(args, config, store) -> int:
    """The simulation pod (see tests/test_fleet_sim.py): models, outputs, shared bisync, heartbeats."""
    from syncbridge.bulk import bisync
    from syncbridge.fleet import bisync_lease

    spec = json.loads(Path(args.spec).read_text())
    work = Path(spec["work"])
    out_dir = config.watch.dir
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"pod": config.pod_id, "models": [], "outputs": [], "bisync": [], "last_edit": None}
    _wait_start()
    try:
        import syncbridge.models as models
    except ImportError:  # the models module has not landed: fill through the fleet primitives directly
        models = None
    if models is not None and config.models.manifests:
        result = models.pull_models(config, environ={}, tier="datacenter")
        report["models"] = [{"name": r.name, "source": r.source, "status": r.status, "verified": r.verified}
                            for r in result.results]
        report["models_ok"] = result.ok
    else:
        for model in spec.get("models", []):
            report["models"].append(fill_model(config, store, model["key"], model["url"], model["sha256"],
                                               work / "models" / model["name"]))
        report["models_ok"] = all(m["sha256_ok"] for m in report["models"])
    from syncbridge.watch import OutputWatcher

    watcher = OutputWatcher(config)
    watcher.start()
    wf_local = work / "workflows"
    wf_local.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + spec["seconds"]
    n = 0
    try:
        while True:
            name = f"img_{n:05d}_.png"
            (out_dir / name).write_bytes(f"{config.pod_id} output {n}\n".encode() * 50)
            report["outputs"].append(name)
            wf = wf_local / f"{config.pod_id}.json"
            wf.write_text(json.dumps({"pod": config.pod_id, "edit": n}))
            report["last_edit"] = n
            summary = bisync(config, wf_local, spec["workflows_prefix"])
            report["bisync"].append({"resync": summary.resync, "skipped": summary.held_by})
            n += 1
            if spec.get("die_holding") and n == 1:
                # Take the shared prefix's lease and hang while holding it: the test kills us with -9.
                watcher.wait_idle(30)
                with bisync_lease(config, spec["workflows_prefix"]):
                    print("HOLDING", flush=True)
                    time.sleep(3600)
            # ``until``: a file the test makes once the victim is dead, so the final bisync below always
            # meets its lease (a victim slowed by a loaded machine once took it after everyone was done).
            until = spec.get("until")
            if time.monotonic() >= deadline and n >= spec.get("min_rounds", 1) and (not until or Path(until).exists()):
                break
        # The last edit is in the bucket once a bisync after it has run (the lease serializes them).
        summary = bisync(config, wf_local, spec["workflows_prefix"])
        report["final_bisync"] = not summary.held_by
        report["idle"] = watcher.wait_idle(60)
        report["done"] = True
    finally:
        drain = watcher.stop()
        report["left_pending"] = drain.pending
        _say(report)
    return 0


def cmd_models(args, config, store) -> int:
    """Pull the manifest's models: with the fleet's single-flight (default) or uncoordinated (``--alone``)."""
    import syncbridge.models as models

    _wait_start()
    started = time.time()
    coordinator = models.FillCoordinator() if args.alone else None  # None: pull_models' fleet default
    report = models.pull_models(config, environ={}, tier="datacenter", fill_coordinator=coordinator)
    _say({"pod": config.pod_id, "ok": report.ok, "seconds": time.time() - started, "finished": time.time(),
          "models": [{"name": r.name, "source": r.source, "status": r.status, "write_back": r.write_back}
                     for r in report.results]})
    return 0


def main(argv=None) -> int:
    import logging

    # A program using the library configures logging itself (the library only has a NullHandler):
    # the simulation reads the pods' warnings (a lease taken over) from their stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("race")
    p.add_argument("key")
    p = sub.add_parser("hold")
    p.add_argument("key")
    p.add_argument("seconds", type=float)
    p.add_argument("--purpose", default="hold")
    p = sub.add_parser("fill")
    p.add_argument("key")
    p.add_argument("url")
    p.add_argument("sha256")
    p.add_argument("--to", required=True)
    p.add_argument("--slow", type=float, default=0.0)
    p = sub.add_parser("pod")
    p.add_argument("spec")
    p = sub.add_parser("models")
    p.add_argument("--alone", action="store_true", help="no fleet coordination (the baseline)")
    args = parser.parse_args(argv)
    config = load_config(os.environ)
    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        return {"race": cmd_race, "hold": cmd_hold, "fill": cmd_fill, "pod": cmd_pod,
                "models": cmd_models}[args.cmd](args, config, store)
    except LeaseBusyError as exc:
        _say({"busy": True, "holder": exc.holder})
        return 3
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
