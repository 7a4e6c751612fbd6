"""Churn (after lsyncd's churn tests): a writer makes thousands of random changes in a watched tree, then
we wait for quiet and compare: every file present at the end is in the bucket under its key with
identical bytes. The bucket may hold more (the watcher pushes; it never deletes).

Duration: ``SYNCBRIDGE_CHURN_SECONDS`` (default 20 in CI); the soak variant runs 60 s
(``SYNCBRIDGE_SOAK=1 pytest -m soak``), with a few injected 503s on top.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

watch = pytest.importorskip("syncbridge.watch")

from ..faultproxy import FaultProxy, Rule  # noqa: E402
from .test_faults import PREFIX, Rig  # noqa: E402

CI_SECONDS = float(os.environ.get("SYNCBRIDGE_CHURN_SECONDS", "20"))
SOAK = os.environ.get("SYNCBRIDGE_SOAK") == "1"

# adversarial names: spaces, non-ASCII, a newline, shell syntax, quotes, a leading dash
NAMES = ["img", "img 01", "ünï cødé", "new\nline", "$(touch PWNED)", "a'b\"c", "-rf", "日本語", "x" * 100]
EXTS = [".png", ".jpg", ".mp4", ".json", ".txt"]


class Writer:
    """Random changes: create, append-and-close, rewrite, rename across folders, temp-then-rename, delete,
    new nested folders, folder renames."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.counts: dict[str, int] = {}
        self.serial = 0
        self.dirs = [root]

    def _files(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith(".")]

    def _name(self) -> str:
        self.serial += 1
        return f"{self.rng.choice(NAMES)}_{self.serial:05d}_{self.rng.choice(EXTS)}"

    def _data(self) -> bytes:
        return self.rng.randbytes(self.rng.choice([0, 10, 500, 4000, 30_000, 200_000]))

    def _dir(self) -> Path:
        live = [d for d in self.dirs if d.is_dir()]
        self.dirs = live or [self.root]
        return self.rng.choice(self.dirs)

    def step(self) -> None:
        op = self.rng.choices(["create", "append", "rewrite", "rename", "temp_rename", "delete", "mkdir",
                               "dir_rename"], weights=[30, 12, 12, 12, 15, 8, 6, 2])[0]
        files = self._files() if op in ("append", "rewrite", "rename", "delete") else []
        if op in ("append", "rewrite", "rename", "delete") and not files:
            op = "create"
        if op == "create":
            with open(self._dir() / self._name(), "wb") as fh:
                fh.write(self._data())
        elif op == "append":
            with open(self.rng.choice(files), "ab") as fh:
                fh.write(self._data() or b"+")
        elif op == "rewrite":
            with open(self.rng.choice(files), "wb") as fh:
                fh.write(self._data())
        elif op == "rename":
            src = self.rng.choice(files)
            os.replace(src, self._dir() / self._name())
        elif op == "temp_rename":
            final = self._dir() / self._name()
            temp = final.with_name("." + final.name + ".tmp")
            with open(temp, "wb") as fh:
                fh.write(self._data())
            os.replace(temp, final)
        elif op == "delete":
            self.rng.choice(files).unlink()
        elif op == "mkdir":
            new = self._dir().joinpath(*[f"d{self.rng.randint(0, 99)}" for _ in range(self.rng.randint(1, 3))])
            new.mkdir(parents=True, exist_ok=True)
            self.dirs.append(new)
            with open(new / self._name(), "wb") as fh:  # a file right away, before any watch can exist
                fh.write(self._data())
        elif op == "dir_rename":
            candidates = [d for d in self.dirs if d != self.root and d.is_dir()]
            if candidates:
                src = self.rng.choice(candidates)
                dst = self.root / f"moved{self.serial}"
                self.serial += 1
                if not dst.exists():
                    try:
                        os.rename(src, dst)
                        self.dirs.append(dst)
                    except OSError:
                        pass
        self.counts[op] = self.counts.get(op, 0) + 1

    def run(self, seconds: float, *, rate: float = 250.0) -> int:
        deadline = time.monotonic() + seconds
        done = 0
        while time.monotonic() < deadline:
            self.step()
            done += 1
            if done % 25 == 0:
                time.sleep(25 / rate)
        return done


def churn(rig: Rig, seconds: float, capsys, *, seed: int) -> None:
    writer = Writer(rig.out, seed)
    for _ in range(50):  # something there before the watcher starts (catch-up scan)
        writer.step()
    with watch.OutputWatcher(rig.config, directory=rig.out, prefix=PREFIX) as watcher:
        ops = writer.run(seconds)
        quiet_from = time.monotonic()
        assert watcher.wait_idle(180), watcher.stats()
        lag = time.monotonic() - quiet_from
        stats = watcher.stats()
    problems = rig.differences()
    files = rig.expected()
    total = sum(size for _path, size in files.values())
    with capsys.disabled():
        print(f"\n[churn] {seconds:.0f}s, {ops} changes ({', '.join(f'{k} {v}' for k, v in sorted(writer.counts.items()))});"
              f" at the end {len(files)} files, {total / 1e6:.1f} MB; final lag {lag:.2f}s; "
              f"{stats.uploaded} uploads, {stats.retries} retries, p95 latency "
              f"{(stats.p95_latency or 0) * 1000:.0f} ms")
    assert ops > 1000 or seconds < 10, f"only {ops} changes"
    assert len(files) > 50
    assert not problems, f"{len(problems)} differences, e.g. {problems[:10]}"


@pytest.mark.slow
def test_churn(rclone_s3, tmp_path, capsys):
    rig = Rig(rclone_s3, tmp_path, None)
    churn(rig, CI_SECONDS, capsys, seed=1)


@pytest.mark.soak
@pytest.mark.skipif(not SOAK, reason="soak run: set SYNCBRIDGE_SOAK=1")
@pytest.mark.parametrize("server", ["rclone", "moto"])
def test_churn_soak_with_flaky_server(request, tmp_path, capsys, server):
    s3 = request.getfixturevalue(f"{server}_s3")
    with FaultProxy(s3.endpoint) as proxy:
        proxy.add(Rule("error", method="PUT", path=f"/{PREFIX}/", status=503, code="SlowDown", probability=0.05),
                  Rule("reset", method="PUT", path=f"/{PREFIX}/", phase="request", probability=0.02))
        rig = Rig(s3, tmp_path, proxy)
        churn(rig, 60.0, capsys, seed=2)
