import os
import sys

# `python tools/end_to_end ...` runs this file as a script: make the package importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from end_to_end.cli import main  # noqa: E402

sys.exit(main())
