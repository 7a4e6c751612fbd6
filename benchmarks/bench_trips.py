"""Requests per model over an emulated wide-area link: a cache hit, a cold pull with write-back, a
fill-lease wait, and a warm start, before and after, side by side in one run.

The bucket is moto (it enforces If-None-Match, as R2 does, so the fleet's fill lease is on) behind
the test suite's fault proxy (keep-alive on the client side, as R2; it counts every request by
method), behind ``benchmarks/wanproxy.py`` adding ``--rtt-ms`` (half each way). The models come
from a loopback HTTP server (the ``url`` source) that is not delayed. Each tree (this checkout,
and ``--before REV``) runs the whole command ``python -m syncbridge models pull -q MANIFEST`` with
its own bucket, folders and state:

* ``cold``: empty cache, empty folder, ``write_back = true``: upstream, then into the cache;
* ``hit``: a second pod (empty folder and state) pulls the same models from the cache;
* ``warm``: the second pod again, with its models present and verified (no request expected);
* ``two pods at once``: two pods pull new models at once; the upstream server is slowed so that one pod
  fills (under the lease) while the other waits and then copies from the cache.

``python benchmarks/bench_trips.py --rtt-ms 50 [--models 4] [--size-kb 512] [--before REV]``
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from revision import Tree, announce, before_tree, current_tree  # noqa: E402
from wanproxy import WanProxy  # noqa: E402

from tests.faultproxy import FaultProxy  # noqa: E402
from tests.servers import serve_moto  # noqa: E402

SLOW = {"seconds": 0.0}  # the upstream's pause before each answer (the lease-wait scenario)


def start_upstream(root: Path) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            path = root / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            time.sleep(SLOW["seconds"])
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(data)

        def do_HEAD(self) -> None:  # noqa: N802
            path = root / self.path.lstrip("/")
            self.send_response(200 if path.is_file() else 404)
            self.send_header("Content-Length", str(path.stat().st_size if path.is_file() else 0))
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def make_models(root: Path, tag: str, count: int, size: int) -> list[tuple[str, str, int]]:
    out = []
    for i in range(count):
        data = os.urandom(size)
        name = f"{tag}_{i}.safetensors"
        (root / name).write_bytes(data)
        out.append((name, hashlib.sha256(data).hexdigest(), size))
    return out


def manifest(path: Path, models_dir: Path, models: list[tuple[str, str, int]], upstream: str) -> Path:
    lines = ["[settings]", f'models_dir = "{models_dir}"', "write_back = true", "parallel = 4", ""]
    for name, sha, size in models:
        lines += ["[[model]]", f'name = "{name}"', f'path = "loras/{name}"', f'sha256 = "{sha}"', f"size = {size}",
                  f'url = "{upstream}/{name}"', ""]
    path.write_text("\n".join(lines))
    return path


class Pod:
    """One pod's folders and environment for one tree."""

    def __init__(self, tree: Tree, work: Path, name: str, endpoint: str, server, bucket: str) -> None:
        self.tree = tree
        self.dir = work / tree.label / name
        self.models = self.dir / "models"
        self.models.mkdir(parents=True)
        self.env = {"PATH": os.environ.get("PATH", ""), "HOME": str(self.dir / "home"),
                    "SYNCBRIDGE_STATE_DIR": str(self.dir / "state"), "SYNCBRIDGE_WORKSPACE": str(self.dir),
                    "SYNCBRIDGE_POD_ID": f"{tree.label}-{name}", "SYNCBRIDGE_LOG_LEVEL": "warning",
                    **server.environ(bucket), "R2_ENDPOINT": endpoint}

    def pull(self, manifest_path: Path) -> subprocess.Popen:
        return subprocess.Popen(self.tree.argv("models", "pull", "-q", str(manifest_path)), env=self.tree.env(self.env),
                                cwd=self.tree.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, what: str) -> None:
    out, _ = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}):\n{out[-3000:]}")


class Counter:
    """Requests the fault proxy saw since the last :meth:`take`, by method."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.mark = 0

    def take(self, trace: str = "") -> collections.Counter:
        time.sleep(0.2)  # the proxy records a request after relaying its answer
        seen = self.proxy.seen()
        new = seen[self.mark:]
        self.mark = len(seen)
        if trace:
            for s in new:
                print(f"  {trace}: {s.method} {s.path}{'?' + s.query if s.query else ''} -> {s.status}",
                      file=sys.stderr)
        return collections.Counter(s.method for s in new)


def run_tree(tree: Tree, work: Path, server, upstream_root: Path, upstream: str, args) -> dict:
    bucket = f"trips-{tree.label}"
    server.create_bucket(bucket)
    results: dict[str, dict] = {}
    with FaultProxy(server.endpoint) as proxy, WanProxy(proxy.endpoint, one_way=args.rtt_ms / 2000) as wan:
        counter = Counter(proxy)
        models = make_models(upstream_root, f"{tree.label}-a", args.models, args.size_kb * 1024)
        first, second = (Pod(tree, work, n, wan.endpoint, server, bucket) for n in ("pod1", "pod2"))
        scenarios = [("cold", first, models), ("hit", second, models), ("warm", second, models)]
        for label, pod, todo in scenarios:
            path = manifest(pod.dir / f"{label}.toml", pod.models, todo, upstream)
            counter.take()
            started = time.monotonic()
            finish(pod.pull(path), f"{tree.label} {label}")
            trace = f"{tree.label} {label}" if args.trace else ""
            results[label] = {"seconds": time.monotonic() - started, "requests": counter.take(trace)}
        # two pods at once on models nobody has cached: one fills, the other waits for the entry
        fresh = make_models(upstream_root, f"{tree.label}-b", args.models, args.size_kb * 1024)
        third, fourth = (Pod(tree, work, n, wan.endpoint, server, bucket) for n in ("pod3", "pod4"))
        paths = [manifest(p.dir / "lease.toml", p.models, fresh, upstream) for p in (third, fourth)]
        counter.take()
        SLOW["seconds"] = args.upstream_pause
        started = time.monotonic()
        procs = [third.pull(paths[0])]
        time.sleep(0.3)  # the first pod takes the leases
        procs.append(fourth.pull(paths[1]))
        for proc in procs:
            finish(proc, f"{tree.label} two pods")
        SLOW["seconds"] = 0.0
        results["two pods at once"] = {"seconds": time.monotonic() - started,
                                             "requests": counter.take(f"{tree.label} lease" if args.trace else "")}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt-ms", type=float, default=50)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--size-kb", type=int, default=512)
    parser.add_argument("--upstream-pause", type=float, default=1.0,
                        help="seconds the upstream waits before each answer in the lease-wait scenario")
    parser.add_argument("--before", metavar="REV")
    parser.add_argument("--trace", action="store_true", help="print every request (method, key, status)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sb-trips-") as tmp:
        work = Path(tmp)
        trees = [current_tree()]
        if args.before:
            trees.append(before_tree(args.before, work))
            announce(trees, args.before)
        upstream_root = work / "upstream"
        upstream_root.mkdir()
        http, upstream = start_upstream(upstream_root)
        results = {}
        with serve_moto(log_file=work / "moto.log") as server:
            for tree in trees:
                results[tree.label] = run_tree(tree, work, server, upstream_root, upstream, args)
        http.shutdown()
    n = args.models
    print(f"\nrequests per model over an emulated {args.rtt_ms:g} ms round trip ({n} models of {args.size_kb} KB, "
          f"moto behind keep-alive; the command's whole run, process start included)")
    print(f"{'':26}" + "".join(f"{t.label + ' req/model':>18}{t.label + ' s':>10}" for t in trees) +
          ("   after/before s" if len(trees) > 1 else ""))
    for label in results["after"]:
        cells = ""
        for t in trees:
            r = results[t.label][label]
            total = sum(r["requests"].values())
            per = total / (2 * n if label.startswith("two pods") else n)
            cells += f"{per:>18.2f}{r['seconds']:>10.2f}"
        if len(trees) > 1:
            cells += f"{results['after'][label]['seconds'] / results['before'][label]['seconds']:>18.2f}"
        print(f"{label:26}{cells}")
    for t in trees:
        print(f"\n{t.label}: requests by method")
        for label, r in results[t.label].items():
            print(f"  {label:26}{dict(sorted(r['requests'].items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
