"""rclone, used for bulk copies and two-way sync.

* :mod:`.argv` (pure): the command lines, the remote as environment variables, rclone's JSON
  log lines and exit codes read into data;
* :mod:`.runner`: the one place that starts an rclone process.
"""

from __future__ import annotations

from .runner import MIN_VERSION, Rclone, RunResult, find_rclone

__all__ = ["Rclone", "RunResult", "find_rclone", "MIN_VERSION"]
