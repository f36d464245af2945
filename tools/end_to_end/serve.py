"""The client side of `thinkv-sim serve-policy`: one child process per generation, driven over
pipes with the binary protocol of docs/end-to-end.md ("Closed loop"). Little-endian int32 and
float32 throughout.
"""

import ctypes
import json
import signal
import struct
import subprocess

import numpy as np

MAGIC = b"TKVSERV1"
PREFILL, STEP, END = 1, 2, 3
TENSORS = {0: "key", 1: "value", 2: "key_per_token"}


class ServeError(Exception):
    pass


def _die_with_parent():
    """In the child, before exec: SIGKILL when the process that started it ends (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the child still ends at end of input


class PolicyServer:
    """`thinkv-sim serve-policy --policy NAME ARGS...` for one generation."""

    def __init__(self, binary, policy, args, shape, prompt_len, max_tokens, scale):
        layers, q_heads, kv_heads, head_dim = shape
        self.shape = shape
        self.prompt_len = prompt_len
        self.proc = subprocess.Popen([binary, "serve-policy", "--policy", policy, *args, "--progress", "none"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=_die_with_parent, bufsize=0)
        self.out, self.inp = self.proc.stdin, self.proc.stdout
        self._send(MAGIC + struct.pack("<6i", layers, q_heads, kv_heads, head_dim, prompt_len, max_tokens)
                   + struct.pack("<f", scale or 0.0))
        self._expect(0)

    # Low level ---------------------------------------------------------------------------------

    def _failure(self, what):
        """The child's one-line error, after it exited."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            err = self.proc.stderr.read().decode("utf-8", "replace").strip()
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            err, code = "", "killed"
        line = err.splitlines()[0] if err else f"thinkv-sim serve-policy exited with {code} ({what})"
        return ServeError(line)

    def _send(self, data):
        try:
            self.out.write(data)
        except (BrokenPipeError, OSError):
            raise self._failure("while writing")

    def _read(self, n):
        chunks, got = [], 0
        while got < n:
            b = self.inp.read(n - got)
            if not b:
                raise self._failure("while reading")
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    def _ints(self, n):
        return struct.unpack(f"<{n}i", self._read(4 * n))

    def _expect(self, *values):
        got = self._ints(len(values))
        if got != values:
            raise ServeError(f"serve-policy answered {got}, expected {values}")

    @staticmethod
    def _f32(a):
        return np.ascontiguousarray(a, dtype="<f4").tobytes()

    # Frames ------------------------------------------------------------------------------------

    def prefill(self, layer, q, k, v):
        """q [P, Hq, D], k and v [P, Hkv, D] (numpy float32)."""
        self._send(struct.pack("<2i", PREFILL, layer) + self._f32(q) + self._f32(k) + self._f32(v))
        self._expect(PREFILL, layer)

    def step(self, layer, step, q, k, v):
        """q [Hq, D], k and v [Hkv, D] of position P + step. Returns (attended, groups): per kv head
        the positions the query attends (int64 arrays), and the quantizations that take effect now
        as dicts {kv_head, tensor, quantizer, channel_group, positions[, channel_scale]} (the
        timeline's form)."""
        self._send(struct.pack("<3i", STEP, layer, step) + self._f32(q) + self._f32(k) + self._f32(v))
        self._expect(STEP, layer, step)
        attended = []
        for _ in range(self.shape[2]):
            (n,) = self._ints(1)
            attended.append(np.frombuffer(self._read(4 * n), dtype="<i4").astype(np.int64))
        (count,) = self._ints(1)
        groups = []
        for _ in range(count):
            head, tensor, channel_group = self._ints(3)
            name = self._read(8).rstrip(b"\0").decode("ascii")
            (n,) = self._ints(1)
            positions = np.frombuffer(self._read(4 * n), dtype="<i4").astype(np.int64).tolist()
            group = {"kv_head": head, "tensor": TENSORS.get(tensor, str(tensor)), "quantizer": name,
                     "channel_group": channel_group, "positions": positions, "step": step}
            if tensor == 2:   # keys per token carry their channel scale (m floats; m = 0: none)
                (m,) = self._ints(1)
                if m:
                    group["channel_scale"] = np.frombuffer(self._read(4 * m), dtype="<f4").copy()
            groups.append(group)
        return attended, groups

    def end(self):
        """The run's summary (KV memory, attention metrics), and the child's exit."""
        self._send(struct.pack("<i", END))
        kind, length = self._ints(2)
        if kind != END:
            raise ServeError(f"serve-policy answered frame kind {kind} to the end frame")
        summary = json.loads(self._read(length).decode("utf-8"))
        self.out.close()
        code = self.proc.wait(timeout=30)
        self.proc.stderr.close()
        self.inp.close()
        if code != 0:
            raise ServeError(f"thinkv-sim serve-policy exited with {code}")
        return summary

    def close(self):
        """Ends the child if it is still running (after an error or an interruption)."""
        if self.proc.poll() is None:
            try:
                self.out.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f and not f.closed:
                f.close()
