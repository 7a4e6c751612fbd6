"""A stand-in for ComfyUI, used by ``syncbridge demo`` and the tests: writes outputs the way ComfyUI does.

``python -m syncbridge.demo.app [--out DIR] [--events FILE] [--images N] [--interval S]``
(ComfyUI's own flags, such as ``--listen 0.0.0.0 --port 8188``, are accepted and
ignored, so it can stand in for ``python main.py``). It writes, ``interval``
seconds apart:

* ``ComfyUI_<n>_.png`` images (real PNGs) in place, like SaveImage;
* the same base name in a subfolder (``portraits/``), and a nested one;
* a workflow ``.json`` sidecar;
* ``upscaled/ComfyUI_00001_.png`` written to a hidden temp name and renamed;
* ``video/AnimateDiff_00001.mp4`` written, then rewritten with new content
  (ffmpeg's second pass: a second close_write), plus its metadata ``.png``;
* ``temp/ComfyUI_temp_00001_.png``, a preview, which must never be pushed.

Each finished file is appended to ``--events`` as a JSON line (path, close
time, size, md5, whether it should be pushed); then ``{"done": ...}``; then it
idles like a server. On SIGTERM it writes one last image (work finishing as
the pod stops), records it and exits 0 (``--on-term die`` keeps Python's
default: killed by the signal).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

__all__ = ["png_bytes", "main"]


def png_bytes(width: int, height: int, *, seed: int) -> bytes:
    """A valid RGB PNG of noise over a gradient (noise keeps it from compressing to nothing)."""
    rng = random.Random(seed)
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        for x in range(width):
            rows += bytes(((x * 255 // max(width - 1, 1)) ^ rng.randrange(64),
                           (y * 255 // max(height - 1, 1)) ^ rng.randrange(64),
                           (seed * 37) & 0xFF))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(rows), 6)) + \
        chunk(b"IEND", b"")


def _video_bytes(size: int, *, seed: int) -> bytes:
    rng = random.Random(seed)
    body = rng.randbytes(max(size - 32, 0))
    return struct.pack(">I", 32) + b"ftypisom" + b"\0" * 20 + body


class _Writer:
    def __init__(self, out: Path, events: Path | None) -> None:
        self.out = out
        self.events = open(events, "a", encoding="utf-8") if events else None  # noqa: SIM115 - lives as long as we do
        self.count = 0

    def event(self, record: dict[str, Any]) -> None:
        if self.events:
            self.events.write(json.dumps(record) + "\n")
            self.events.flush()

    def write(self, rel: str, data: bytes, *, push: bool = True, via_rename: bool = False) -> None:
        target = self.out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if via_rename:
            temp = target.with_name(f".{target.name}.tmp")
            temp.write_bytes(data)
            os.replace(temp, target)
        else:
            with open(target, "wb") as fh:
                fh.write(data)
        self.count += 1
        self.event({"path": rel, "closed": time.time(), "size": len(data), "md5": hashlib.md5(data).hexdigest(),
                    "push": push})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m syncbridge.demo.app", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--out", default=os.environ.get("COMFYUI_OUTPUT_DIR"),
                        help="output folder (default: $COMFYUI_OUTPUT_DIR)")
    parser.add_argument("--events", default=os.environ.get("SYNCBRIDGE_DEMO_EVENTS"),
                        help="JSON-lines record of each finished file (default: $SYNCBRIDGE_DEMO_EVENTS)")
    parser.add_argument("--images", type=int, default=int(os.environ.get("SYNCBRIDGE_DEMO_IMAGES", "4")))
    parser.add_argument("--interval", type=float, default=float(os.environ.get("SYNCBRIDGE_DEMO_INTERVAL", "0.2")))
    parser.add_argument("--on-term", choices=("finish", "die"), default="finish")
    parser.add_argument("--exit-after", action="store_true", help="exit 0 after the outputs instead of idling")
    args, _ignored = parser.parse_known_args(argv)
    if not args.out:
        parser.error("--out (or COMFYUI_OUTPUT_DIR) is required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out, Path(args.events) if args.events else None)
    writer.event({"pid": os.getpid()})

    def on_term(signum: int, _frame: Any) -> None:
        writer.write("ComfyUI_final_.png", png_bytes(96, 96, seed=9999))
        writer.event({"exit": 0, "signal": signum})
        sys.exit(0)

    if args.on_term == "finish":
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
    print(f"demo app: writing outputs to {out}", flush=True)

    def pause() -> None:
        if args.interval:
            time.sleep(args.interval)

    for n in range(1, args.images + 1):
        writer.write(f"ComfyUI_{n:05d}_.png", png_bytes(128, 96, seed=n))
        pause()
    writer.write("ComfyUI_00001_.json", json.dumps({"prompt": {"3": {"class_type": "KSampler"}}}).encode())
    writer.write("portraits/ComfyUI_00001_.png", png_bytes(96, 128, seed=101))  # same base name, other folder
    pause()
    writer.write("batch/2026/run-a/grid_00001_.png", png_bytes(64, 64, seed=202))
    writer.write("upscaled/ComfyUI_00001_.png", png_bytes(160, 120, seed=303), via_rename=True)
    pause()
    writer.write("temp/ComfyUI_temp_00001_.png", png_bytes(32, 32, seed=404), push=False)
    writer.write("video/AnimateDiff_00001.mp4", _video_bytes(300_000, seed=505))
    pause()
    # ffmpeg's metadata pass rewrites the same path: the bucket must end with this version.
    writer.write("video/AnimateDiff_00001.mp4", _video_bytes(310_000, seed=506))
    writer.write("video/AnimateDiff_00001.png", png_bytes(64, 48, seed=507))
    writer.event({"done": True, "files": writer.count})
    print(f"demo app: {writer.count} outputs written; idling like a server until SIGTERM", flush=True)
    if args.exit_after:
        return 0
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
