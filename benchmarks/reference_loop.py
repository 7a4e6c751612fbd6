"""A minimal reference loop: inotify_simple + one reused boto3 client (what the machine allows).

Usage: reference_loop.py DIR (endpoint, keys and bucket from BENCH_* variables). No journal,
no collision check, no retries: the floor syncbridge's latency and throughput are compared with.
"""

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config
from inotify_simple import INotify, flags

root = os.path.abspath(sys.argv[1])
client = boto3.client("s3", endpoint_url=os.environ["BENCH_ENDPOINT"], aws_access_key_id=os.environ["BENCH_KEY"],
                      aws_secret_access_key=os.environ["BENCH_SECRET"], region_name="us-east-1",
                      config=Config(request_checksum_calculation="when_required", max_pool_connections=8,
                                    response_checksum_validation="when_required", s3={"addressing_style": "path"}))
pool = ThreadPoolExecutor(8)
inotify = INotify()
paths = {}
MASK = flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE


def upload(path):
    with open(path, "rb") as fh:
        client.put_object(Bucket=os.environ["BENCH_BUCKET"], Key="outputs/" + os.path.relpath(path, root), Body=fh)


def watch(folder):
    paths[inotify.add_watch(folder, MASK)] = folder
    for entry in os.scandir(folder):  # files made before the watch existed
        if entry.is_dir(follow_symlinks=False):
            watch(entry.path)
        elif entry.is_file(follow_symlinks=False):
            pool.submit(upload, entry.path)


watch(root)
print("ready", flush=True)
while True:
    for event in inotify.read():
        path = os.path.join(paths[event.wd], event.name)
        if event.mask & flags.ISDIR and event.mask & flags.CREATE:
            watch(path)
        elif event.mask & (flags.CLOSE_WRITE | flags.MOVED_TO) and not event.mask & flags.ISDIR:
            pool.submit(upload, path)
