"""End-to-end fidelity: what each cache policy does to a model's next-token distribution.

thinkv-sim replays a trace recorded over every layer and writes each policy's cache timeline
(`replay --cache-timeline`); this package runs the model teacher-forced on the recorded tokens
with exactly that cache (forward.py), quantized with bit-exact copies of the simulator's
quantizers (quantizers.py), and compares the next-token distributions (metrics.py). Policies are
never re-implemented here: every keep/evict/quantize decision is the simulator's.
`python tools/end_to_end --help`; docs/end-to-end.md.
"""
