"""The replaced design's per-file uploader: a new Python process and a new boto3 client per file, key = basename.

Started by ``bench_watch.py`` as
``inotifywait -m -r -e close_write --format %w%f DIR | while read f; do python upload_one.py "$f" & done``.
Kept only to measure what syncbridge replaces; do not use it.
"""

import os
import sys

import boto3
from botocore.config import Config

path = sys.argv[1]
client = boto3.client("s3", endpoint_url=os.environ["BENCH_ENDPOINT"], aws_access_key_id=os.environ["BENCH_KEY"],
                      aws_secret_access_key=os.environ["BENCH_SECRET"], region_name="us-east-1",
                      config=Config(request_checksum_calculation="when_required",
                                    response_checksum_validation="when_required", s3={"addressing_style": "path"}))
client.upload_file(path, os.environ["BENCH_BUCKET"], os.path.basename(path))
