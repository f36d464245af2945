"""Tests of tools/end_to_end on a tiny random Llama (as the recorder's tests build it).

The central check: the one-pass teacher-forced forward with a policy's kept sets and rounded
keys/values gives the same next-token distributions as decoding step by step with a real cache
that is pruned and rounded as the timeline says.
"""

import csv
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

TOOLS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOOLS))
from end_to_end import cli, forward, metrics  # noqa: E402
from end_to_end.timeline import HeadTimeline, PolicyTimeline, read_timelines  # noqa: E402
from binaries import required_thinkv_sim as thinkv_sim  # noqa: E402,F401
from test_record_trace import build_model, record  # noqa: E402

NEW_TOKENS = 40


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama and a float32 trace of every layer: (model folder, trace path, model)."""
    folder = tmp_path_factory.mktemp("e2e-llama")
    build_model(folder, "llama", seed=3)
    # Peaked next-token distributions (a random head is nearly uniform over the vocabulary), so
    # that what the cache loses shows in the KL as it would in a trained model.
    sharp = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    sharp.lm_head.weight.data *= 8
    sharp.save_pretrained(folder)
    trace = record(folder, folder / "all.h5", "--layers", "all", "--dtype", "float32", "--max-new-tokens",
                   NEW_TOKENS, "--ignore-eos", "--temperature", 0.8, "--seed", 5)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return folder, trace, model


def trace_ids(trace):
    import h5py
    with h5py.File(trace, "r") as f:
        return f["tokens/ids"][:].astype(np.int64), int(f.attrs["prompt_len"])


def uniform_plans(model, timeline, T, P, steps):
    """The same head timeline on every layer and kv head."""
    cfg = model.config
    policy = PolicyTimeline("hand-made")
    for layer in range(cfg.num_hidden_layers):
        for h in range(cfg.num_key_value_heads):
            policy.heads[(layer, h)] = timeline
    return forward.layer_plans(policy, cfg.num_hidden_layers, cfg.num_key_value_heads, T, P, steps)


def test_end_to_end_full_policy_is_exact_and_h2o_is_not(tiny, tmp_path):
    folder, trace, _ = tiny
    out, steps_csv = tmp_path / "e2e.csv", tmp_path / "steps.csv"
    code = cli.main([str(trace), "--model", str(folder), "--policy", "full,h2o", "--budget", "8", "-o", str(out),
                     "--steps-csv", str(steps_csv), "--thinkv-sim", thinkv_sim(), "--threads", "1"])
    assert code == 0
    rows = {r["policy"]: r for r in csv.DictReader(open(out))}
    full, h2o = rows["full"], rows["h2o"]
    assert float(full["next_token_kl_mean"]) == 0 and float(full["next_token_kl_max"]) == 0
    assert float(full["top1_agreement"]) == 1 and full["diverged"] == "0"
    assert int(full["divergence_step"]) == int(full["steps"]) == NEW_TOKENS
    assert float(h2o["next_token_kl_mean"]) > 1e-4
    assert 0 < float(h2o["kv_percent"]) < 100 and h2o["budget"] == "8"
    assert float(h2o["attention_kl_mean"]) > 0
    per_step = list(csv.DictReader(open(steps_csv)))
    assert len(per_step) == 2 * NEW_TOKENS
    h2o_kl = [float(r["next_token_kl"]) for r in per_step if r["policy"] == "h2o"]
    assert abs(np.mean(h2o_kl) - float(h2o["next_token_kl_mean"])) < 1e-5 * max(1, np.mean(h2o_kl))


def test_end_to_end_last_token_only_is_far_from_full(tiny):
    _, trace, model = tiny
    ids, P = trace_ids(trace)
    T, steps = len(ids), len(ids) - P
    full = forward.next_token_log_probs(model, ids, uniform_plans(model, HeadTimeline([-1] * T, []), T, P, steps), P, steps)
    # Every position leaves the cache one step after it arrives (the prompt before the first step).
    alone = HeadTimeline([0] * P + [t + 1 for t in range(steps)], [])
    last_only = forward.next_token_log_probs(model, ids, uniform_plans(model, alone, T, P, steps), P, steps)
    result = metrics.compare(full, last_only)
    few_gone = HeadTimeline([-1] * T, [])
    few_gone.dropped_at[[10, 20, 30, 40]] = 0  # four prompt positions gone from the first step
    mild = metrics.compare(full, forward.next_token_log_probs(model, ids, uniform_plans(model, few_gone, T, P, steps), P, steps))
    assert result["next_token_kl_mean"] > 0.5
    assert result["next_token_kl_mean"] > 10 * mild["next_token_kl_mean"] > 0
    assert result["top1_agreement"] < 0.5 < mild["top1_agreement"]


def pruned_cache_decode(model, ids, P, steps, timeline):
    """The reference: decode step by step with a real DynamicCache, dropping positions and
    rounding keys/values in place at the steps the (layer- and head-uniform) timeline says."""
    cache = transformers.DynamicCache()
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        model(input_ids=torch.tensor([ids[:P].tolist()]), use_cache=True, **{cache_arg: cache})
    if not all(hasattr(layer, "keys") for layer in getattr(cache, "layers", [None])):
        pytest.skip(f"transformers {transformers.__version__}: DynamicCache has no per-layer keys/values to prune")
    held = list(range(P))
    out = []
    for t in range(steps):
        keep = [i for i, p in enumerate(held) if not (0 <= timeline.dropped_at[p] <= t)]
        index = torch.tensor(keep, dtype=torch.long)
        for layer in cache.layers:
            layer.keys = layer.keys.index_select(2, index)
            layer.values = layer.values.index_select(2, index)
        held = [held[i] for i in keep]
        for g in timeline.groups:
            if g["step"] != t:
                continue
            slots = torch.tensor([held.index(p) for p in g["positions"]], dtype=torch.long)
            for layer in cache.layers:
                tensor = layer.keys if g["tensor"] == "key" else layer.values
                for h in range(tensor.shape[1]):
                    rows = tensor[0, h].index_select(0, slots)
                    if g["tensor"] == "key":
                        rounded = forward.rounded_keys(rows, [dict(g, positions=list(range(len(slots))))])
                    else:
                        rounded = forward.rounded_values(rows, [dict(g, positions=list(range(len(slots))))])
                    tensor[0, h].index_copy_(0, slots, rounded)
        p = P + t
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[int(ids[p])]]), use_cache=True, position_ids=torch.tensor([[p]]),
                           **{cache_arg: cache}).logits[0, -1]
        held.append(p)
        out.append(torch.log_softmax(logits.double(), dim=-1))
    return torch.stack(out)


def test_end_to_end_one_pass_equals_decoding_with_a_pruned_rounded_cache(tiny):
    _, trace, model = tiny
    ids, P = trace_ids(trace)
    T, steps = len(ids), len(ids) - P
    rng = np.random.default_rng(11)
    dropped = np.full(T, -1)
    for p in range(T - 1):
        first = max(0, p - P + 1)  # the first step that could drop it (after it was attended)
        if rng.random() < 0.6 and first < steps:
            dropped[p] = rng.integers(first, steps)
    groups = [
        {"tensor": "key", "step": 0, "quantizer": "int2", "positions": [0, 1, 2, 3, 4, 5]},
        {"tensor": "value", "step": 3, "quantizer": "nvfp4", "channel_group": 8, "positions": [P, P + 1, P + 2]},
        {"tensor": "key", "step": 7, "quantizer": "ternary", "positions": [P + 3, P + 4, P + 5, P + 6]},
        {"tensor": "value", "step": 7, "quantizer": "fp8", "channel_group": 16, "positions": [6, 7, P + 5]},
    ]
    # Rounded positions must still be held when their group takes effect.
    for g in groups:
        for p in g["positions"]:
            dropped[p] = -1
    timeline = HeadTimeline(dropped.tolist(), groups)
    one_pass = forward.next_token_log_probs(model, ids, uniform_plans(model, timeline, T, P, steps), P, steps)
    stepwise = pruned_cache_decode(model, ids, P, steps, timeline)
    assert torch.allclose(one_pass, stepwise, atol=2e-5, rtol=0), (one_pass - stepwise).abs().max()
    exact = forward.next_token_log_probs(model, ids, uniform_plans(model, HeadTimeline([-1] * T, []), T, P, steps), P, steps)
    assert (one_pass - exact).abs().max() > 1e-3  # the kept set and the rounding did change something


def test_end_to_end_equal_memory_and_quantizing_policy(tiny, tmp_path):
    folder, trace, _ = tiny
    out, kept = tmp_path / "eq.csv", tmp_path / "timelines"
    code = cli.main([str(trace), "--model", str(folder), "--policy", "h2o,kivi", "--kv-percent", "40", "-o", str(out),
                     "--thinkv-sim", thinkv_sim(), "--timelines", str(kept), "--threads", "1",
                     "--replay-arg=--group=8", "--replay-arg=--residual=8"])
    assert code == 0
    rows = {r["policy"]: r for r in csv.DictReader(open(out))}
    assert rows["h2o"]["kv_percent"] == "40" and rows["h2o"]["kv_match_status"] == "matched"
    assert rows["kivi"]["kv_match_status"] == ""  # no budget: runs as given
    assert abs(float(rows["h2o"]["achieved_percent"]) - 40) <= 1.0 and int(rows["h2o"]["budget"]) > 0
    assert float(rows["kivi"]["kv_percent"]) == float(rows["kivi"]["achieved_percent"]) < 100  # not matched: measured
    # thinkv-sim plot draws it against KV memory, next-token KL first.
    figures = tmp_path / "figures"
    result = subprocess.run([thinkv_sim(), "plot", str(out), "-o", str(figures), "--format", "svg"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    svg = (figures / "all-traces.fidelity-bytes.svg").read_text()
    assert "Next-token KL" in svg and "Top-1 agreement" in svg and "Attention KL" in svg
    assert float(rows["kivi"]["next_token_kl_mean"]) > 0
    timelines = read_timelines(kept / "kivi.jsonl")
    label = next(k for k in timelines if k.startswith("kivi"))
    assert any(h.groups for h in timelines[label].heads.values())


def test_end_to_end_refuses_a_trace_without_every_layer(tiny, tmp_path, capsys):
    folder, _, _ = tiny
    partial = record(folder, tmp_path / "two.h5", "--layers", "0,1", "--max-new-tokens", 4, "--ignore-eos")
    code = cli.main([str(partial), "--model", str(folder), "--policy", "h2o", "--budget", "8", "--thinkv-sim", thinkv_sim()])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("end_to_end: error: ") and "needs every layer" in err[-1]


@pytest.fixture(scope="module")
def greedy_trace(tiny):
    folder, _, _ = tiny
    return record(folder, folder / "greedy.h5", "--layers", "all", "--dtype", "float32", "--max-new-tokens",
                  NEW_TOKENS, "--ignore-eos", "--temperature", 0)


def test_end_to_end_first_difference_of_two_timelines():
    from end_to_end.free_running import first_difference
    a, b = PolicyTimeline("a"), PolicyTimeline("b")
    a.heads[(0, 0)] = HeadTimeline([-1, 3, 5, -1], [{"tensor": "key", "step": 6, "quantizer": "int2", "positions": [0]}])
    b.heads[(0, 0)] = HeadTimeline([-1, 3, -1, 4], [{"tensor": "key", "step": 6, "quantizer": "int2", "positions": [0]}])
    assert first_difference(a, b) == 4           # position 3 dropped at 4 in b only; position 2 at 5 in a only
    b.heads[(0, 0)] = HeadTimeline([-1, 3, 5, -1], [{"tensor": "key", "step": 2, "quantizer": "int2", "positions": [0]}])
    assert first_difference(a, b) == 2           # the same drops, a group rounded at step 2 instead of 6
    assert first_difference(a, a) is None


def test_end_to_end_captured_full_run_is_the_recording(tiny, greedy_trace, tmp_path):
    """Under the full plan the captured q, k, v are the recorder's (the policy's own run, when
    nothing is dropped, is the recorded one)."""
    import h5py
    from end_to_end.free_running import write_captured_trace
    _, _, model = tiny
    ids, P = trace_ids(greedy_trace)
    T = len(ids)
    captured = {}
    forward.next_token_log_probs(model, ids, uniform_plans(model, HeadTimeline([-1] * T, []), T, P, T - P), P, T - P,
                                 capture=captured)
    out = tmp_path / "captured.h5"
    write_captured_trace(greedy_trace, out, captured)
    with h5py.File(greedy_trace, "r") as a, h5py.File(out, "r") as b:
        assert dict(a.attrs).keys() == dict(b.attrs).keys() and (a["tokens/ids"][:] == b["tokens/ids"][:]).all()
        for layer in a["layers"]:
            for t in ("q", "k", "v"):
                assert np.abs(a[f"layers/{layer}/{t}"][:] - b[f"layers/{layer}/{t}"][:]).max() < 1e-4, (layer, t)
    result = subprocess.run([thinkv_sim(), "validate", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_end_to_end_free_running(tiny, greedy_trace, tmp_path):
    folder, _, _ = tiny
    out = tmp_path / "free.csv"
    code = cli.main([str(greedy_trace), "--model", str(folder), "--policy", "full,streaming,h2o", "--budget", "12",
                     "--free-running", "-o", str(out), "--thinkv-sim", thinkv_sim(), "--threads", "1"])
    assert code == 0
    rows = {r["policy"]: r for r in csv.DictReader(open(out))}
    assert rows["full"]["free_running_divergence_step"] == str(NEW_TOKENS) and rows["full"]["free_running_exact"] == "1"
    # StreamingLLM decides from positions alone: its own run cannot change a decision, so the
    # first round is a fixed point and greedy decoding departs where teacher forcing does.
    streaming = rows["streaming"]
    assert streaming["free_running_exact"] == "1" and streaming["free_running_rounds"] == "1"
    assert streaming["free_running_divergence_step"] == streaming["divergence_step"]
    h2o = rows["h2o"]
    assert 1 <= int(h2o["free_running_rounds"]) <= 8
    assert 0 <= int(h2o["free_running_divergence_step"]) <= NEW_TOKENS


def test_end_to_end_free_running_needs_a_greedy_recording(tiny, capsys):
    folder, trace, _ = tiny  # sampled at temperature 0.8
    code = cli.main([str(trace), "--model", str(folder), "--policy", "h2o", "--budget", "12", "--free-running",
                     "--thinkv-sim", thinkv_sim(), "-o", os.devnull])
    assert code == 1
    assert "not a greedy recording" in capsys.readouterr().err


def test_end_to_end_kept_set_equals_an_explicit_masked_forward(tiny):
    """A hand-made kept set, the same in every layer and head, against the model's own eager
    forward given that set as an explicit 4-D attention mask."""
    _, trace, model = tiny
    ids, P = trace_ids(trace)
    T, steps = len(ids), len(ids) - P
    dropped = np.full(T, -1)
    dropped[[0, 3, 5, 8, 13]] = 0                 # prompt positions gone from the first step
    dropped[[P, P + 1]] = [4, 6]                  # two generated ones later
    dropped[P + 10] = 12
    timeline = HeadTimeline(dropped.tolist(), [])
    ours = forward.next_token_log_probs(model, ids, uniform_plans(model, timeline, T, P, steps), P, steps)
    from end_to_end.timeline import attention_plan
    attend, _, _ = attention_plan(timeline, T, P, steps)
    mask = torch.zeros(1, 1, T, T).masked_fill(~torch.from_numpy(attend), float("-inf"))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids.tolist()]), attention_mask=mask, use_cache=False).logits[0, P:P + steps]
    explicit = torch.log_softmax(logits.double(), dim=-1)
    assert torch.allclose(ours, explicit, atol=1e-5, rtol=0), (ours - explicit).abs().max()
    with torch.no_grad():
        unmasked = torch.log_softmax(model(input_ids=torch.tensor([ids.tolist()]), use_cache=False).logits[0, P:P + steps].double(), -1)
    assert (explicit - unmasked).abs().max() > 1e-3  # the mask was applied, and it matters
    assert attend[P + 5, 3] == False and attend[P + 5, P] == False and attend[P + 3, P] == True  # noqa: E712


def test_end_to_end_row_blocks_give_the_same_attention():
    """Rows are attended in blocks (memory [group, block, T], not [group, T, T]): any block size
    gives the same output, to the rounding of differently shaped matrix products."""
    rng = np.random.default_rng(2)
    T, P, D, Hq, Hkv = 40, 9, 16, 4, 2
    q, k, v = (torch.from_numpy(rng.standard_normal((1, h, T, D)).astype(np.float32)) for h in (Hq, Hkv, Hkv))
    dropped = np.where(rng.random(T) < 0.4, rng.integers(0, T - P, T), -1)
    groups = [{"tensor": "key", "step": 2, "quantizer": "nvfp4", "positions": [1, 2, 3, 4]},
              {"tensor": "value", "step": 5, "quantizer": "int3", "channel_group": 8, "positions": [0, P, P + 1]}]
    for g in groups:
        dropped[g["positions"]] = -1
    plans = [forward.HeadPlan(HeadTimeline(dropped.tolist(), groups), T, P, T - P) for _ in range(Hkv)]
    whole = forward.planned_attention(q, k, v, plans, 0.25, row_block=T)
    for block in (1, 7, 16):
        blocked = forward.planned_attention(q, k, v, plans, 0.25, row_block=block)
        assert torch.allclose(blocked, whole, atol=2e-6, rtol=0), (block, (blocked - whole).abs().max())
    exact = [forward.HeadPlan(HeadTimeline([-1] * T, []), T, P, T - P) for _ in range(Hkv)]
    assert (forward.planned_attention(q, k, v, exact, 0.25) - whole).abs().max() > 1e-3
