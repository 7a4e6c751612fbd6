"""``syncbridge start``: a container's start-up and shutdown as one supervised run.

:mod:`.starter` runs the steps (see its docstring for the order and the spot-pod budget);
:mod:`.result` holds the options, the steps' records and the lines they print.
"""

from __future__ import annotations

from .result import START_PID_ENV, Step, StartOptions, StartResult, exit_status, models_line, outer_start_pid
from .starter import Starter, forward_signals, run_start

__all__ = ["Step", "StartOptions", "StartResult", "Starter", "forward_signals", "run_start", "exit_status",
           "models_line", "outer_start_pid", "START_PID_ENV"]
