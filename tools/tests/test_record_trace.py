"""Tests of tools/record_trace.py (the recorder package) on tiny randomly initialised models
(no weights are downloaded).

The central check: attention probabilities recomputed from the recorded q and k exactly as
docs/trace-format.md says (causal softmax(scale * q.k), query head h reads kv head h // group)
equal the model's own attention probabilities (eager attention, output_attentions=True) at every
recorded layer and position. Recorded k and v are also compared with the model's KV cache.

Run: make test-recorder (or python -m pytest tools/tests from an environment with tools/requirements.txt).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import transformers

TOOLS = Path(__file__).resolve().parents[1]
REPO = TOOLS.parent
sys.path.insert(0, str(TOOLS))
import recorder  # noqa: E402
from binaries import thinkv_sim  # noqa: E402
from recorder import layers as layer_spec, model as models, sampling, writer  # noqa: E402

SPECIALS = ["<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PROMPT = "Tom has 3 apples and buys 4 more. π ≈ 3.14; naïve — how many?"
VOCAB = 256 + len(SPECIALS)
TOL = 1e-4


def make_tokenizer(folder):
    """Byte-level BPE without merges: one token per byte, plus special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for s in SPECIALS:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
              bos_token_id=256, eos_token_id=257, pad_token_id=257, tie_word_embeddings=False)


def arch_config(arch):
    """A tiny config of each supported model type (None when this transformers lacks it)."""
    name = {"llama": "LlamaConfig", "mistral": "MistralConfig", "mixtral": "MixtralConfig",
            "qwen2": "Qwen2Config", "qwen2_moe": "Qwen2MoeConfig", "qwen3": "Qwen3Config",
            "qwen3_moe": "Qwen3MoeConfig", "gpt_oss": "GptOssConfig"}[arch]
    cls = getattr(transformers, name, None)
    if cls is None:
        return None
    kw = dict(COMMON)
    if arch == "mistral":
        kw.update(sliding_window=None)
    if arch == "mixtral":
        kw.update(num_local_experts=4, num_experts_per_tok=2, sliding_window=None)
    if arch == "qwen2_moe":
        kw.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                  shared_expert_intermediate_size=32, qkv_bias=True)
    if arch == "qwen3_moe":
        kw.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    if arch == "gpt_oss":
        # Sliding window of 8 on layers 0 and 2, sinks on every layer: both are recorded as
        # layer attributes and used below to recompute the model's probabilities.
        kw.update(num_hidden_layers=4, num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
                  layer_types=["sliding_attention", "full_attention"] * 2)
    return cls(**kw)


def sharpen(model, seed):
    """Random weights large enough that attention is peaked and depends on position and head:
    a capture before RoPE or in the wrong head order then changes the probabilities a lot."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if any(s in name for s in ("q_proj.weight", "k_proj.weight")):
            p.data = torch.randn(p.shape, generator=g) * 0.25
        elif any(s in name for s in ("q_norm.weight", "k_norm.weight")):
            p.data = 0.5 + torch.rand(p.shape, generator=g) * 1.5
        elif name.endswith("sinks"):
            p.data = torch.randn(p.shape, generator=g)
        elif name.endswith("bias") and any(s in name for s in ("q_proj", "k_proj", "v_proj")):
            p.data = torch.randn(p.shape, generator=g) * 0.3


def build_model(folder, arch, seed=0):
    config = arch_config(arch)
    if config is None:
        pytest.skip(f"transformers {transformers.__version__} has no {arch} model")
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    sharpen(model, seed)
    model.save_pretrained(folder)
    make_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("llama"), "llama")


def record(model_dir, out, *extra, prompt=PROMPT):
    argv = ["--model", str(model_dir), "--prompt", prompt, "-o", str(out), "--device", "cpu",
            "--no-progress", "--overwrite", *map(str, extra)]
    code = recorder.main(argv)
    assert code == 0
    return out


def reference(model_dir, ids, attn="eager"):
    """The model's own attention probabilities [layer][Hq, T, T] and KV cache over the full sequence."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_attentions=True, use_cache=True)
    attentions = [a[0].double().numpy() for a in out.attentions]
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return model, attentions, cache


def cache_kv(cache, layer):
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]


def recompute(q, k, scale, group, window=None, sinks=None, kv_of=None):
    """Causal softmax(scale q.k) per format v1 (optionally with a sliding window and sink logits)."""
    T, Hq, _ = q.shape
    kv_of = kv_of or (lambda h: h // group)
    probs = np.zeros((Hq, T, T))
    for h in range(Hq):
        logits = scale * (q[:, h, :].astype(np.float64) @ k[:, kv_of(h), :].astype(np.float64).T)
        visible = np.tril(np.ones((T, T), dtype=bool))
        if window is not None:
            visible &= ~np.tril(np.ones((T, T), dtype=bool), -window)
        logits[~visible] = -np.inf
        top = logits.max(axis=1, keepdims=True)
        if sinks is not None:
            top = np.maximum(top, sinks[h])
        e = np.exp(logits - top)
        denom = e.sum(axis=1, keepdims=True) + (np.exp(sinks[h] - top) if sinks is not None else 0)
        probs[h] = e / denom
    return probs


def read_trace(path):
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        ids = f["tokens/ids"][:]
        layers = {}
        for name, group in f["layers"].items():
            layers[int(name)] = ({t: group[t][:] for t in group}, dict(group.attrs))
    return attrs, ids, layers


ARCHS = ["llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gpt_oss"]


@pytest.mark.parametrize("arch", ARCHS)
def test_recorded_qk_reproduce_model_attention(tmp_path, arch):
    model_dir = build_model(tmp_path / "model", arch, seed=ARCHS.index(arch))
    out = record(model_dir, tmp_path / "t.h5", "--dtype", "float32", "--max-new-tokens", 10, "--ignore-eos",
                 "--temperature", 0.9, "--top-p", 0.95, "--seed", 3)
    attrs, ids, layers = read_trace(out)
    model, attentions, cache = reference(model_dir, ids.tolist())
    cfg = model.config
    L, Hq, Hkv = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    D = cfg.head_dim
    T = len(ids)
    assert attrs["num_tokens"] == T and attrs["prompt_len"] == T - 10
    assert (attrs["num_layers"], attrs["num_q_heads"], attrs["num_kv_heads"], attrs["head_dim"]) == (L, Hq, Hkv, D)
    assert sorted(layers) == list(range(L))
    scale = float(attrs.get("softmax_scale", D ** -0.5))
    for layer in range(L):
        tensors, layer_attrs = layers[layer]
        assert tensors["q"].shape == (T, Hq, D) and tensors["k"].shape == (T, Hkv, D)
        window = layer_attrs.get("sliding_window")
        sinks = layer_attrs.get("attention_sinks")
        if arch == "gpt_oss":
            assert sinks is not None and sinks.shape == (Hq,)
            assert (window == 8) == (layer % 2 == 0)
        got = recompute(tensors["q"], tensors["k"], scale, Hq // Hkv, window=window, sinks=sinks)
        want = attentions[layer]
        err = np.abs(got - want).max()
        assert err < TOL, f"{arch} layer {layer}: recomputed attention differs by {err:.3g}"
        # The check can fail: reading kv head h % Hkv instead of h // group, or keys one
        # position late, changes the probabilities far beyond the tolerance.
        wrong = recompute(tensors["q"], tensors["k"], scale, Hq // Hkv, window=window, sinks=sinks,
                          kv_of=lambda h: h % Hkv)
        assert np.abs(wrong - want).max() > 100 * TOL
        shifted = np.concatenate([tensors["k"][:1], tensors["k"][:-1]])
        assert np.abs(recompute(tensors["q"], shifted, scale, Hq // Hkv, window=window, sinks=sinks) - want).max() > 100 * TOL
        # Keys and values: the rows the model's own cache holds for this layer (a sliding-window
        # layer keeps only the most recent ones).
        keys, values = cache_kv(cache, layer)
        n = keys.shape[2]
        np.testing.assert_allclose(tensors["k"][-n:], keys[0].transpose(0, 1).numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(tensors["v"][-n:], values[0].transpose(0, 1).numpy(), rtol=1e-4, atol=1e-5)


def test_sdpa_capture_equals_eager(tmp_path, llama_dir):
    a = record(llama_dir, tmp_path / "eager.h5", "--dtype", "float32", "--max-new-tokens", 6, "--ignore-eos")
    b = record(llama_dir, tmp_path / "sdpa.h5", "--dtype", "float32", "--max-new-tokens", 6, "--ignore-eos",
               "--attn-implementation", "sdpa")
    _, ids_a, la = read_trace(a)
    _, ids_b, lb = read_trace(b)
    assert (ids_a == ids_b).all()
    for layer in la:
        for t in ("q", "k", "v"):
            assert np.abs(la[layer][0][t] - lb[layer][0][t]).max() < 1e-4


def set_scaling(model, value):
    for module in model.modules():
        if hasattr(module, "scaling") and hasattr(module, "q_proj"):
            module.scaling = value
    return model


def test_softmax_scale_attribute_when_module_scaling_differs(tmp_path, llama_dir, monkeypatch):
    loader = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: set_scaling(loader(*a, **k), 0.2))
    out = record(llama_dir, tmp_path / "s.h5", "--dtype", "float32", "--max-new-tokens", 5, "--ignore-eos")
    monkeypatch.undo()
    attrs, ids, layers = read_trace(out)
    assert attrs["softmax_scale"].dtype == np.float32 and attrs["softmax_scale"] == np.float32(0.2)
    model = set_scaling(transformers.AutoModelForCausalLM.from_pretrained(
        llama_dir, dtype=torch.float32, attn_implementation="eager"), 0.2)
    with torch.no_grad():
        attentions = model(input_ids=torch.tensor([ids.tolist()]), output_attentions=True).attentions
    for layer, (tensors, _) in layers.items():
        want = attentions[layer][0].double().numpy()
        got = recompute(tensors["q"], tensors["k"], float(attrs["softmax_scale"]), 2)
        assert np.abs(got - want).max() < TOL
        assert np.abs(recompute(tensors["q"], tensors["k"], 16 ** -0.5, 2) - want).max() > 100 * TOL


def test_file_layout_types_and_streaming(tmp_path, llama_dir):
    f16 = record(llama_dir, tmp_path / "h.h5", "--layers", "0,-1", "--chunk-size", 4, "--max-new-tokens", 9,
                 "--ignore-eos", "--temperature", 0.7, "--seed", 11)
    f32 = record(llama_dir, tmp_path / "f.h5", "--layers", "0,-1", "--dtype", "float32", "--max-new-tokens", 9,
                 "--ignore-eos", "--temperature", 0.7, "--seed", 11)
    tok = transformers.AutoTokenizer.from_pretrained(llama_dir)
    with h5py.File(f16, "r") as f, h5py.File(f32, "r") as g:
        a = f.attrs
        for key in ("version", "num_layers", "num_q_heads", "num_kv_heads", "head_dim", "prompt_len", "num_tokens"):
            assert a[key].dtype == np.int32, key
        assert a["format"] == "thinkv-trace" and a["version"] == 1 and a["source"] == "recorded"
        assert a["seed"].dtype == np.int64 and a["seed"] == 11
        assert "softmax_scale" not in a  # the default 1/sqrt(D)
        assert a["prompt"] == PROMPT and a["chat_template"] == "on"
        sampling = json.loads(a["sampling"])
        assert sampling["temperature"] == 0.7 and sampling["max_new_tokens"] == 9
        T = int(a["num_tokens"])
        assert T == int(a["prompt_len"]) + 9
        assert sorted(f["layers"]) == ["0", "2"]
        ids = f["tokens/ids"]
        assert ids.dtype == np.int32 and ids.shape == (T,)
        assert (ids[:] == g["tokens/ids"][:]).all()  # same seed, same tokens
        text = f["tokens/text"]
        assert h5py.check_string_dtype(text.dtype).encoding == "utf-8" and text.shape == (T,)
        pieces = [s.decode("utf-8") if isinstance(s, bytes) else s for s in text[:]]
        P = int(a["prompt_len"])
        assert "".join(pieces[:P]) == tok.decode(ids[:P].tolist(), skip_special_tokens=False)
        assert "".join(pieces[:P]).startswith("<|user|>Tom has") and "π ≈ 3.14" in "".join(pieces[:P])
        for layer in ("0", "2"):
            for t, heads in (("q", 4), ("k", 2), ("v", 2)):
                ds = f[f"layers/{layer}/{t}"]
                assert ds.dtype == np.float16 and ds.shape == (T, heads, 16)
                assert ds.chunks == (4, heads, 16) and ds.maxshape == (None, heads, 16)
                assert ds.compression == "gzip" and ds.shuffle
                full = g[f"layers/{layer}/{t}"][:]
                assert g[f"layers/{layer}/{t}"].dtype == np.float32
                assert np.array_equal(ds[:], full.astype(np.float16))


def test_float16_overflow_is_refused(tmp_path, llama_dir, monkeypatch, capsys):
    loader = models.load_model

    def huge_values(*args, **kwargs):
        model = loader(*args, **kwargs)
        model.model.layers[1].self_attn.v_proj.weight.data *= 1e7
        return model

    monkeypatch.setattr(models, "load_model", huge_values)
    out = tmp_path / "o.h5"
    msg = error_of(capsys, "--model", llama_dir, "--prompt", "x", "-o", out, "--no-progress", "--max-new-tokens", 2)
    assert "layer 1 v: values up to" in msg and "overflow float16 at position 0; record with --dtype float32" in msg
    assert not out.exists() and not (tmp_path / "o.h5.partial").exists()
    record(llama_dir, out, "--dtype", "float32", "--max-new-tokens", 2)  # float32 holds them


def test_no_chat_template_no_values(tmp_path, llama_dir):
    out = record(llama_dir, tmp_path / "n.h5", "--no-chat-template", "--no-values", "--layers", "1-2",
                 "--max-new-tokens", 3, "--ignore-eos", prompt="abc")
    with h5py.File(out, "r") as f:
        assert f.attrs["chat_template"] == "off"
        assert f.attrs["prompt_len"] == 3  # one token per byte, no template, no BOS
        assert sorted(f["layers"]) == ["1", "2"] and "v" not in f["layers/1"]


def test_stops_at_eos(tmp_path, llama_dir, monkeypatch):
    calls = []

    def sample(self, logits, seen):
        calls.append(1)
        return 257 if len(calls) == 4 else 65

    monkeypatch.setattr(sampling.Sampler, "__call__", sample)
    out = record(llama_dir, tmp_path / "e.h5", "--max-new-tokens", 50, "--layers", "0")
    with h5py.File(out, "r") as f:
        ids = f["tokens/ids"][:]
        assert f.attrs["num_tokens"] == f.attrs["prompt_len"] + 4 and ids[-1] == 257
        assert f.attrs["stop_reason"] == "eos"


def test_interrupt_keeps_a_consistent_trace(tmp_path, llama_dir, monkeypatch):
    """Ctrl-C in the middle of a decode forward (after some layers were captured) keeps a trace
    whose datasets all end at the last complete position."""
    add = writer.TraceWriter.add_layer
    count = []

    def flaky(self, layer, q, k, v):
        count.append(layer)
        if len(count) == 3 * 5 + 2:  # prefill + 4 decode forwards, then 2 layers of the 5th
            raise KeyboardInterrupt
        return add(self, layer, q, k, v)

    monkeypatch.setattr(writer.TraceWriter, "add_layer", flaky)
    out = tmp_path / "i.h5"
    code = recorder.main(["--model", str(llama_dir), "--prompt", "hi", "-o", str(out), "--no-progress",
                              "--max-new-tokens", "20", "--ignore-eos", "--chunk-size", "2"])
    assert code == 130
    with h5py.File(out, "r") as f:
        T = int(f.attrs["num_tokens"])
        assert T == int(f.attrs["prompt_len"]) + 4 and f.attrs["stop_reason"] == "interrupted"
        assert f["tokens/ids"].shape == (T,) and f["tokens/text"].shape == (T,)
        for layer in f["layers"].values():
            assert all(layer[t].shape[0] == T for t in ("q", "k", "v"))
    assert not (tmp_path / "i.h5.partial").exists()


def test_jsonl_prompts(tmp_path, llama_dir):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join([json.dumps({"id": "first one", "prompt": "2+2?", "seed": 5}),
                                  "", json.dumps("plain string"),
                                  json.dumps({"prompt": "with system", "system": "be brief"})]) + "\n")
    outdir = tmp_path / "out"
    code = recorder.main(["--model", str(llama_dir), "--prompts", str(prompts), "-o", str(outdir),
                              "--no-progress", "--max-new-tokens", "3", "--layers", "0"])
    assert code == 0
    assert sorted(os.listdir(outdir)) == ["first_one.h5", "prompt-0001.h5", "prompt-0002.h5"]
    with h5py.File(outdir / "first_one.h5", "r") as f:
        assert f.attrs["seed"] == 5 and f.attrs["prompt"] == "2+2?"
    with h5py.File(outdir / "prompt-0002.h5", "r") as f:
        assert f.attrs["system_prompt"] == "be brief"
        text = "".join(s.decode() if isinstance(s, bytes) else s for s in f["tokens/text"][:])
        assert text.startswith("<|system|>be brief<|user|>with system<|assistant|>")


def test_layer_spec():
    assert layer_spec.resolve_layers("all", 4) == [0, 1, 2, 3]
    assert layer_spec.resolve_layers("0,-1, 2", 30) == [0, 2, 29]
    assert layer_spec.resolve_layers("1-3,2", 30) == [1, 2, 3]
    with pytest.raises(recorder.RecorderError, match="layer 30 does not exist; the model has 30 layers"):
        layer_spec.resolve_layers("30", 30)
    with pytest.raises(recorder.RecorderError, match="past the last layer"):
        layer_spec.resolve_layers("28-31", 30)
    for bad in ("x", "1-", "3-1", ""):
        with pytest.raises(ValueError):
            layer_spec.parse_layer_spec(bad)


def run_cli(*argv):
    return subprocess.run([sys.executable, str(TOOLS / "record_trace.py"), *map(str, argv)],
                          capture_output=True, text=True, timeout=300)


def test_cli_help_and_usage_errors(tmp_path):
    r = run_cli("--help")
    assert r.returncode == 0 and "--max-new-tokens" in r.stdout and "--layers" in r.stdout
    for argv, needle in [
        (["--model", "m", "--prompt", "x"], "-o/--output"),
        (["--model", "m", "--prompt", "x", "--prompts", "p.jsonl", "-o", "t.h5"], "not allowed with"),
        (["--model", "m", "--prompt", "x", "-o", "t.h5", "--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--model", "m", "--prompt", "x", "-o", "t.h5", "--layers", "a,b"], "--layers: 'a' is not"),
        (["--model", "m", "--prompt", "x", "-o", "t.h5", "--device", "gpu"], "--device: 'gpu'"),
        (["--model", "m", "--prompt", "x", "-o", "t.h5", "--threads", "0"], "--threads must be at least 1"),
        (["--model", "m", "--prompt", "x", "-o", "t.h5", "--no-chat-template", "--system", "s"], "--system needs"),
    ]:
        r = run_cli(*argv)
        assert r.returncode == 2 and needle in r.stderr, (argv, r.stderr)


def error_of(capsys, *argv):
    code = recorder.main(list(map(str, argv)))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    # Status lines may come first (a failure after the model loaded); the error is one line, the last.
    assert err and err[-1].startswith("record_trace.py: error: "), err
    assert sum("error" in line for line in err) == 1, err
    return err[-1]


def test_bad_inputs_get_one_line_errors(tmp_path, llama_dir, capsys):
    base = ["--prompt", "x", "--no-progress"]
    assert "no such model folder or GGUF file" in error_of(capsys, "--model", tmp_path / "none", *base, "-o", tmp_path / "a.h5")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf")
    assert "not a GGUF file" in error_of(capsys, "--model", fake, *base, "-o", tmp_path / "a.h5")
    gpt2 = tmp_path / "gpt2"
    transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8).save_pretrained(gpt2)
    msg = error_of(capsys, "--model", gpt2, *base, "-o", tmp_path / "a.h5")
    assert "unsupported architecture 'gpt2'" in msg and "qwen3" in msg
    assert "layer 7 does not exist; the model has 3 layers" in error_of(
        capsys, "--model", llama_dir, *base, "-o", tmp_path / "a.h5", "--layers", "7")
    existing = tmp_path / "exists.h5"
    existing.write_bytes(b"")
    assert "exists (pass --force" in error_of(capsys, "--model", llama_dir, *base, "-o", existing)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    assert "bad.jsonl:2: 'prompt' must be a non-empty string" in error_of(
        capsys, "--model", llama_dir, "--prompts", bad, "-o", tmp_path / "dir", "--no-progress")
    bad.write_text('{"prompt": "ok", "temp": 1}\n')
    assert "unknown field(s) temp" in error_of(capsys, "--model", llama_dir, "--prompts", bad, "-o", tmp_path / "dir")
    bad.write_text('{"prompt": "ok"\n')
    assert "bad.jsonl:1: not valid JSON" in error_of(capsys, "--model", llama_dir, "--prompts", bad, "-o", tmp_path / "dir")
    if not torch.cuda.is_available():
        assert "no CUDA device" in error_of(capsys, "--model", llama_dir, *base, "-o", tmp_path / "a.h5", "--device", "cuda")




def test_trace_passes_thinkv_sim_validate(tmp_path, llama_dir):
    binary = thinkv_sim()
    if binary is None:
        pytest.skip("no thinkv-sim binary (make build, or set THINKV_SIM)")
    out = record(llama_dir, tmp_path / "v.h5", "--max-new-tokens", 12, "--ignore-eos", "--chunk-size", 5,
                 "--temperature", 1.0)
    r = subprocess.run([binary, "validate", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok (thinkv-trace v1" in r.stdout
    r = subprocess.run([binary, "replay", str(out), "--policy", "full"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
