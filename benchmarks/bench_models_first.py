"""Benchmark: the app first. ``syncbridge start`` with 4 x 512 MB models of which 1 is required, waiting for
all of them (``SYNCBRIDGE_MODELS_WAIT=all``) against waiting for the required one (``required``), side by
side in one run.

The models come from the bucket cache on a loopback ``rclone serve s3`` (as on a warm pod that pulls
from R2). Reported per run, median of ``--rounds``:

* **app exec**: seconds from ``start`` to the app's first line (the app writes a timestamp);
* **all models in**: seconds until the last model is in place, verified (the foreground pull for
  ``all``; the background pull, while the app runs idle, for ``required``);
* **throughput**: MB/s of the models pulled after the app started (``required``) against the same
  models pulled before it (``all``), target >= 0.9x.

    python benchmarks/bench_models_first.py [--mb 512] [--models 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from syncbridge.config import load_config  # noqa: E402
from syncbridge.demo.localserver import serve_rclone_s3  # noqa: E402
from syncbridge.store import open_store  # noqa: E402

APP = r'''
import os, sys, time
from pathlib import Path
Path(sys.argv[1]).write_text(repr(time.time()))
targets = sys.argv[3:]
deadline = time.monotonic() + 600
while time.monotonic() < deadline and not all(os.path.exists(t) for t in targets):
    time.sleep(0.02)
Path(sys.argv[2]).write_text(repr(time.time()))
'''


def _model(path: Path, mb: int, seed: int) -> str:
    block = hashlib.sha256(str(seed).encode()).digest() * 32768  # 1 MiB, different per model
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        for i in range(mb):
            chunk = block[:-8] + i.to_bytes(8, "big")
            fh.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=512, help="size of each model (default 512)")
    parser.add_argument("--models", type=int, default=4, help="models, the first of them required (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each mode, alternating (median; default 3)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sb-bench-first-"))
    try:
        seed_dir = work / "seed"
        seed_dir.mkdir()
        names = [f"m{i}.safetensors" for i in range(args.models)]
        shas = [_model(seed_dir / n, args.mb, i) for i, n in enumerate(names)]
        with serve_rclone_s3(work / "s3") as server:
            server.create_bucket("bench")
            env = {"PATH": os.environ["PATH"], "HOME": str(work / "home"), **server.environ("bench"),
                   "SYNCBRIDGE_WORKSPACE": str(work), "SYNCBRIDGE_LOG_LEVEL": "warning"}
            config = load_config({**env, "SYNCBRIDGE_STATE_DIR": str(work / "seed-state")})
            store = open_store(config.remote, state_dir=config.state_dir)
            try:
                for n, sha in zip(names, shas):
                    store.put_file(seed_dir / n, f"models/checkpoints/{n}", metadata={"sha256": sha})
            finally:
                store.close()
            shutil.rmtree(seed_dir)
            results: dict[str, list[tuple[float, float]]] = {"all": [], "required": []}
            for round_ in range(args.rounds):
                for mode in ("all", "required") if round_ % 2 == 0 else ("required", "all"):
                    run = work / f"{mode}-{round_}"
                    models = run / "models"
                    manifest = run / "m.toml"
                    run.mkdir()
                    lines = [f'[settings]\nmodels_dir = "{models}"\nparallel = 4\n']
                    for i, (n, sha) in enumerate(zip(names, shas)):
                        lines += ["[[model]]", f'name = "{n}"', f'path = "checkpoints/{n}"', f'sha256 = "{sha}"',
                                  f"size = {args.mb * 1024 * 1024}", "required = true" if i == 0 else "", ""]
                    manifest.write_text("\n".join(lines))
                    started, done = run / "started", run / "done"
                    targets = [str(models / "checkpoints" / n) for n in names]
                    t0 = time.time()
                    proc = subprocess.run(
                        [sys.executable, "-m", "syncbridge", "start", "--no-folders", "--", sys.executable, "-c",
                         APP, str(started), str(done), *targets],
                        env={**env, "SYNCBRIDGE_STATE_DIR": str(run / "state"), "SYNCBRIDGE_MODELS": str(manifest),
                             "SYNCBRIDGE_MODELS_WAIT": mode}, cwd=ROOT, capture_output=True, text=True)
                    if proc.returncode != 0:
                        print(proc.stderr[-2000:], file=sys.stderr)
                        return 1
                    results[mode].append((float(started.read_text()) - t0, float(done.read_text()) - t0))
                    shutil.rmtree(run)
        total_mb = args.mb * args.models * 1.048576
        later_mb = args.mb * (args.models - 1) * 1.048576
        med = {m: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
               for m, rs in results.items()}
        print(f"start with {args.models} x {args.mb} MB models from the bucket cache (loopback rclone serve s3), "
              f"1 required; median of {args.rounds}")
        print(f"{'':24}{'app exec (s)':>14}{'all models in (s)':>20}")
        for mode in ("all", "required"):
            print(f"MODELS_WAIT={mode:<12}{med[mode][0]:>14.2f}{med[mode][1]:>20.2f}")
        print(f"app exec: required / all = {med['required'][0] / med['all'][0]:.2f}")
        fg = total_mb / med["all"][0]
        bg = later_mb / max(med["required"][1] - med["required"][0], 1e-6)
        print(f"throughput: foreground {fg:.0f} MB/s (all {args.models}), background {bg:.0f} MB/s "
              f"(the {args.models - 1} after the app started): {bg / fg:.2f}x (target >= 0.9)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
