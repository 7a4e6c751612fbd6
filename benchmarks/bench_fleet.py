"""Fleet cache-fill benchmark: N pods start at the same moment, all missing the same models.

Not part of the test suite. One moto S3 server (it enforces conditional writes, as R2 does)
and one loopback HTTP "upstream" (standing in for Hugging Face / CivitAI, throttled to
``--upstream-mbps`` per connection) that counts every byte it serves. Each pod is its own
process (tests/fleet/fleet_pod.py ``models``) with its own state and models folders, running
``pull_models`` with ``write_back = true``. Side by side, each on a fresh bucket:

* **fleet**: pull_models' default coordinator: one pod per model takes the fill lease and
  downloads upstream; the others wait for its cache entry and copy it from the bucket;
* **alone**: no coordination (each pod goes upstream; the conditional put still keeps the
  cache entry intact: losers verify and move on).

Printed per run: upstream bytes per model as a multiple of its size (target 1.0x for the
fleet, against N x alone), seconds until the last pod had every model, and corrupt entries
(cache objects or local files whose sha256 does not match: must be 0).

Usage::

    python benchmarks/bench_fleet.py [--pods 8] [--models 2] [--mb 32] [--upstream-mbps 40]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from syncbridge.config import load_config  # noqa: E402
from tests.servers import serve_moto  # noqa: E402
from syncbridge.store import open_store  # noqa: E402
from tests.fleet.fleet_pod import Upstream  # noqa: E402


def run(mode: str, server, tmp: Path, blobs: dict[str, bytes], *, pods: int, upstream_mbps: float) -> dict:
    bucket = f"bench-fleet-{mode}-{os.getpid()}"
    server.create_bucket(bucket)
    chunk = 256 * 1024
    delay = chunk / (upstream_mbps * 1e6) if upstream_mbps > 0 else 0.0
    work = tmp / mode
    with Upstream(blobs, chunk=chunk, chunk_delay=delay) as up:
        manifest = work / "models.toml"
        manifest.parent.mkdir(parents=True)
        lines = ["[settings]", 'cache_prefix = "models"', "write_back = true", "parallel = 4", ""]
        for path, blob in blobs.items():
            lines += ["[[model]]", f'name = "{path.strip("/").split(".")[0]}"', f'path = "checkpoints{path}"',
                      f'sha256 = "{hashlib.sha256(blob).hexdigest()}"', f'url = "{up.url}{path}"', ""]
        manifest.write_text("\n".join(lines))
        start_at = time.time() + 5.0
        procs = []
        for i in range(pods):
            pod = work / f"pod-{i}"
            env = {"PATH": os.environ.get("PATH", ""), "HOME": str(pod), **server.environ(bucket),
                   "SYNCBRIDGE_POD_ID": f"pod-{i}", "SYNCBRIDGE_STATE_DIR": str(pod / "state"),
                   "SYNCBRIDGE_WORKSPACE": str(pod), "SYNCBRIDGE_MODELS": str(manifest),
                   "SYNCBRIDGE_MODELS_DIR": str(pod / "models"), "SYNCBRIDGE_LEASE_SECONDS": "30",
                   "FLEET_START_AT": str(start_at), "PYTHONPATH": str(ROOT)}
            argv = [sys.executable, str(ROOT / "tests" / "fleet_pod.py"), "models"] + (["--alone"] if mode == "alone"
                                                                                       else [])
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=1800)
            if proc.returncode != 0:
                raise SystemExit(f"a pod failed ({mode}):\n{err[-3000:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        served = dict(up.bytes_served)
    config = load_config({**server.environ(bucket), "SYNCBRIDGE_STATE_DIR": str(work / "check"),
                          "SYNCBRIDGE_POD_ID": "check"})
    store = open_store(config.remote, state_dir=config.state_dir)
    corrupt = 0
    for path, blob in blobs.items():
        want = hashlib.sha256(blob).hexdigest()
        data, info = store.get_bytes(f"models/checkpoints{path}")
        if hashlib.sha256(data).hexdigest() != want or info.metadata.get("sha256") != want:
            corrupt += 1
        for i in range(pods):
            local = work / f"pod-{i}" / "models" / f"checkpoints{path}"
            if not local.exists() or hashlib.sha256(local.read_bytes()).hexdigest() != want:
                corrupt += 1
    store.close()
    wall = max(r["finished"] for r in reports) - start_at
    sources: dict[str, int] = {}
    for r in reports:
        for m in r["models"]:
            sources[m["source"]] = sources.get(m["source"], 0) + 1
    return {"mode": mode, "ok": all(r["ok"] for r in reports),
            "upstream_x": {p: served[p] / len(b) for p, b in blobs.items()}, "wall": wall, "corrupt": corrupt,
            "sources": sources}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=8)
    ap.add_argument("--models", type=int, default=2)
    ap.add_argument("--mb", type=float, default=32, help="size of each model in MB")
    ap.add_argument("--upstream-mbps", type=float, default=40, help="upstream speed per connection, MB/s (0: unthrottled)")
    args = ap.parse_args()
    blobs = {f"/model{i}.safetensors": os.urandom(int(args.mb * 1e6)) for i in range(args.models)}
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, serve_moto() as server:
        for mode in ("fleet", "alone"):
            results.append(run(mode, server, Path(tmp), blobs, pods=args.pods, upstream_mbps=args.upstream_mbps))
    print(f"{args.pods} pods start at once, {args.models} models x {args.mb:.0f} MB, upstream "
          f"{args.upstream_mbps:.0f} MB/s per connection, write_back = true, moto on loopback\n")
    print(f"{'mode':<7} {'upstream bytes per model':<28} {'all pods ready':>15} {'corrupt':>8}  sources")
    for r in results:
        ups = ", ".join(f"{x:.2f}x" for x in r["upstream_x"].values())
        src = ", ".join(f"{k} {v}" for k, v in sorted(r["sources"].items()))
        print(f"{r['mode']:<7} {ups:<28} {r['wall']:>14.1f}s {r['corrupt']:>8}  {src}")
    fleet, alone = results
    total_fleet = sum(fleet["upstream_x"].values()) / len(blobs)
    total_alone = sum(alone["upstream_x"].values()) / len(blobs)
    print(f"\nupstream traffic: fleet {total_fleet:.2f}x per model (target 1x), alone {total_alone:.2f}x "
          f"({total_alone / total_fleet:.1f}x more); wall time fleet/alone = {fleet['wall'] / alone['wall']:.2f}")
    bad = fleet["corrupt"] or alone["corrupt"] or not fleet["ok"] or not alone["ok"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
