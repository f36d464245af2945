"""Record thinkv-trace v1 files from a causal language model's generations.

For every prompt the model generates a continuation token by token, and the queries, keys and
values that the attention kernel of each chosen layer sees (after rotary embedding and any q/k
normalisation, before grouped-query expansion) are streamed into an HDF5 file that follows
docs/trace-format.md: prompt positions from the prefill forward, then one position per decode
forward. `python tools/record_trace.py --help` runs it; docs/recording.md describes it.

Modules, one concern each: cli (arguments, the run, exit codes), prompts, layers, model (finding
and loading a local model or GGUF), hooks (swapping the attention function in and out), capture
(q, k, v through that hook), writer (the HDF5 file),
tokens (per-token text), sampling, generate (one prompt's generation loop).
"""

import os

# Never reach a model hub: models come from local folders or GGUF files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from .errors import PROG, RECORDER_VERSION, RecorderError  # noqa: E402

__all__ = ["PROG", "RECORDER_VERSION", "RecorderError", "main"]


def main(argv=None):
    from .cli import main as cli_main
    return cli_main(argv)
