"""Python entry point to thinkv-sim: replays, sweeps and traces as pandas and numpy, figures
with matplotlib.

Every function runs the `thinkv-sim` binary and reads what it writes (found on PATH or at
$THINKV_SIM; see `binary`); no policy or metric is re-implemented in Python. Long runs report
progress while the binary works (`progress=`), errors are typed by cause (`UsageError`,
`TraceError`, `OutputError`, `ConfigError`, all `ThinKVSimError`), and every table follows one
column naming scheme (`thinkv_sim.columns`).

>>> import thinkv_sim as tk
>>> runs = tk.replay("traces/sample-synthetic.h5", ["full", "h2o", "rkv"], budget=64, steps=32)
>>> list(runs.policy)
['full', 'h2o', 'rkv']
>>> tk.policies().query("policy == 'h2o'").keyword.tolist()
['budget', 'recent', 'gqa_reduce', 'score_dtype']
"""

__version__ = "0.5.0"

from .errors import ConfigError, OutputError, ThinKVSimError, TraceError, UsageError
from .progress import Progress
from .runner import binary, run, run_json
from .policies import policies
from .columns import read_results, read_steps
from .replay import replay, replay_steps
from .sweep import sweep
from .trace import Trace, read_trace

__all__ = ["ConfigError", "OutputError", "Progress", "ThinKVSimError", "Trace", "TraceError", "UsageError",
           "__version__", "binary", "policies", "read_results", "read_steps", "read_trace", "replay", "replay_steps",
           "run", "run_json", "sweep"]
