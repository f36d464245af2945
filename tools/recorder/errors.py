"""The recorder's one error type and the program name its messages carry."""

PROG = "record_trace.py"
RECORDER_VERSION = "1.0"


class RecorderError(Exception):
    """A problem reported to the user as one line, exit status 1."""


def first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
