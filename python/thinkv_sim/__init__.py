"""Python entry point to thinkv-sim: replays, sweeps and traces as pandas and numpy.

Every function runs the `thinkv-sim` binary and reads what it writes; see `runner` for how the
binary is found.
"""

from .runner import ThinKVSimError, binary, run
from .replay import replay, replay_steps
from .sweep import sweep
from .trace import Trace, read_trace

__all__ = ["ThinKVSimError", "Trace", "binary", "read_trace", "replay", "replay_steps", "run", "sweep"]
