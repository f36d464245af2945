#!/usr/bin/env python3
"""Record thinkv-trace v1 files from a causal language model's generations (the `recorder` package
next to this file does the work; see docs/recording.md).

Usage: python3 tools/record_trace.py --model DIR_OR_GGUF --prompt TEXT -o trace.h5 [options]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from recorder import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
