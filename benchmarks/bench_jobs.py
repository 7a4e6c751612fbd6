"""Benchmark of a serverless job's end: from its last output written to the handler's return.

Side by side in one run, against a loopback ``rclone serve s3`` and the ComfyUI stand-in of
tests/jobs/comfystandin.py (its save nodes write as ComfyUI's do: PNGs in place, the video by
"ffmpeg" over ``--video-seconds``), for a job with one 50 MB video and 8 images:

(a) ``end-of-job``: what worker-comfyui and the other job APIs do: poll ``/history`` until the prompt is
    done, then fetch each output through ``/view`` and upload it (the same store client and key
    scheme as syncbridge, a presigned link each), one after the other;
(b) ``syncbridge``: :class:`syncbridge.jobs.worker.Worker`'s handler: each output is pushed by the
    watcher when ComfyUI closes it, and the handler returns once ``/history`` says done and every
    output is in the bucket.

Jobs alternate between the two (``--jobs`` each, default 20); both poll ``/history`` as often (20 ms). Two
orders of the workflow's nodes: the images after the video (``images-last``) and the video last
(``video-last``: its 50 MB upload can only start when ffmpeg closes it, so it is in the figure).
Printed: p50/p95 of (return - last output closed) per contender and order, and syncbridge/end-of-job.
Target: <= 0.2x.

``python benchmarks/bench_jobs.py [--jobs 20] [--video-mb 50] [--images 8] [--image-mb 1.5] [--link-mbps N]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from syncbridge.config import load_config  # noqa: E402
from syncbridge.demo.localserver import serve_rclone_s3  # noqa: E402
from syncbridge.jobs.comfy import ComfyClient  # noqa: E402
from syncbridge.jobs.worker import POLL_SECONDS, Worker  # noqa: E402
from syncbridge.keys import object_key  # noqa: E402
from syncbridge.store import open_store  # noqa: E402
from tests.jobs.comfystandin import StandIn  # noqa: E402


def workflow(order: str, seed: int, *, video_mb: float, images: int, image_mb: float, seconds: float) -> dict:
    video = {"class_type": "VHS_VideoCombine", "inputs": {"filename_prefix": "video/clip", "seed": seed,
                                                          "size": int(video_mb * 1e6), "seconds": seconds}}
    image = {"class_type": "SaveImage", "inputs": {"filename_prefix": "img/ComfyUI", "seed": seed,
                                                   "count": images, "size": int(image_mb * 1e6)}}
    return {"1": video, "2": image} if order == "images-last" else {"1": image, "2": video}


def end_of_job(comfy: ComfyClient, store, flow: dict, job_id: str, work: Path) -> tuple[str, list[dict]]:
    """worker-comfyui's way: queue, poll, then /view and upload each output (one after the other)."""
    pid = comfy.queue(flow)
    result = None
    for result in comfy.poll(pid, flow, timeout=600, interval=POLL_SECONDS):
        if result is not None:
            break
    outputs = []
    for file in result.files:
        tmp = work / "view.tmp"
        with open(tmp, "wb") as fh:
            comfy.view(file, fh)
        key = object_key(f"outputs/eoj/{job_id}", file.rel)
        store.put_file(tmp, key)
        outputs.append({"key": key, "url": store.presign_get(key, expires=3600)})
        tmp.unlink()
    return pid, outputs


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--video-mb", type=float, default=50)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--image-mb", type=float, default=1.5)
    parser.add_argument("--video-seconds", type=float, default=2.0)
    parser.add_argument("--orders", default="images-last,video-last")
    parser.add_argument("--link-mbps", type=float, default=0,
                        help="limit the bucket server to this many MiB/s (rclone --bwlimit; default: no limit): the "
                             "link from a worker to R2; /view stays on loopback, as ComfyUI is in the same container")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sb-bench-jobs-"))
    try:
        bwlimit = ["--bwlimit", f"{args.link_mbps:g}M"] if args.link_mbps else []
        with serve_rclone_s3(root / "s3", extra_args=bwlimit) as s3:
            s3.create_bucket("bench")
            out = root / "workspace" / "ComfyUI" / "output"
            out.mkdir(parents=True)
            with StandIn(out, root / "models") as stand_in:
                env = {"PATH": os.environ.get("PATH", ""), "HOME": str(root), "SYNCBRIDGE_STATE_DIR": str(root / "state"),
                       "SYNCBRIDGE_WORKSPACE": str(root / "workspace"), "COMFYUI_OUTPUT_DIR": str(out),
                       "COMFYUI_URL": stand_in.url, "SYNCBRIDGE_HEARTBEAT_SECONDS": "0", **s3.environ("bench")}
                config = load_config(env)
                store = open_store(config.remote, state_dir=config.state_dir)
                comfy = ComfyClient(stand_in.url)
                print(f"job: {args.images} images of {args.image_mb:g} MB + one {args.video_mb:g} MB video written over "
                      f"{args.video_seconds:g}s; {args.jobs} jobs per contender and order; rclone serve s3 on loopback"
                      f"{f' limited to {args.link_mbps:g} MiB/s' if args.link_mbps else ''}; "
                      f"{os.cpu_count()} CPUs")
                figures: dict[tuple[str, str], list[float]] = {}
                with Worker(config) as worker:
                    n = 0
                    for order in args.orders.split(","):
                        for i in range(args.jobs):
                            for contender in ("end-of-job", "syncbridge") if i % 2 == 0 else ("syncbridge", "end-of-job"):
                                n += 1
                                flow = workflow(order, n, video_mb=args.video_mb, images=args.images,
                                                image_mb=args.image_mb, seconds=args.video_seconds)
                                job_id = f"bench-{n}"
                                if contender == "syncbridge":
                                    result = worker.handler({"id": job_id, "input": {"workflow": flow}})
                                    done = time.monotonic()
                                    if "error" in result:
                                        raise SystemExit(f"job failed: {result['error']}")
                                    pid = result["prompt_id"]
                                    count = len(result["outputs"])
                                else:
                                    pid, outputs = end_of_job(comfy, store, flow, job_id, root)
                                    done = time.monotonic()
                                    count = len(outputs)
                                assert count == args.images + 2, count  # the video, its metadata png, the images
                                figures.setdefault((order, contender), []).append(done - stand_in.written_at[pid])
                                shutil.rmtree(out)
                                out.mkdir()
                store.close()
        print(f"\n{'order':<12} {'contender':<11} {'p50 s':>8} {'p95 s':>8}")
        for (order, contender), values in figures.items():
            print(f"{order:<12} {contender:<11} {statistics.median(values):8.3f} {pct(values, 0.95):8.3f}")
        print()
        for order in args.orders.split(","):
            a, b = figures[(order, "syncbridge")], figures[(order, "end-of-job")]
            print(f"{order}: syncbridge / end-of-job  p50 {statistics.median(a) / statistics.median(b):.3f}x  "
                  f"p95 {pct(a, 0.95) / pct(b, 0.95):.3f}x  (target <= 0.2x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
