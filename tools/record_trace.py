#!/usr/bin/env python3
"""Record thinkv-trace v1 files from a causal language model's generations.

For every prompt the model generates a continuation token by token, and the queries, keys and
values that the attention kernel of each chosen layer sees (after rotary embedding and any q/k
normalisation, before grouped-query expansion) are streamed into an HDF5 file that follows
docs/trace-format.md: prompt positions from the prefill forward, then one position per decode
forward.

The capture point is the attention function that transformers' attention modules call
(`eager_attention_forward` of the model's modeling file, or the `ALL_ATTENTION_FUNCTIONS` entry of
another implementation): it receives query [batch, q_heads, seq, D] and key/value
[batch, kv_heads, cached + seq, D]. See docs/recording.md.

Usage: python3 tools/record_trace.py --model DIR_OR_GGUF --prompt TEXT -o trace.h5 [options]
"""

import argparse
import json
import math
import os
import re
import sys
import time

# Never reach a model hub: models come from local folders or GGUF files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RECORDER_VERSION = "1.0"
PROG = "record_trace.py"

# transformers model types whose attention modules call the hooked attention function with
# post-RoPE q/k and cached k/v in the layout described above. Each one is covered by
# tools/tests/test_record_trace.py.
SUPPORTED_MODEL_TYPES = {
    "llama": "Llama, SmolLM2, DeepSeek-R1-Distill-Llama",
    "mistral": "Mistral",
    "mixtral": "Mixtral",
    "qwen2": "Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen, QwQ",
    "qwen2_moe": "Qwen2-MoE",
    "qwen3": "Qwen3 (q_norm/k_norm before RoPE)",
    "qwen3_moe": "Qwen3-MoE",
    "gpt_oss": "GPT-OSS (attention sinks, sliding-window layers)",
}


class RecorderError(Exception):
    """A problem reported to the user as one line, exit status 1."""


# --------------------------------------------------------------------------------------------
# Arguments


def build_parser():
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Generate with a causal LM and write one thinkv-trace v1 HDF5 file per prompt: "
        "token ids and text, and the post-RoPE q, k, v of the chosen layers at every position "
        "(prompt and generated).",
        epilog="Exit status: 0 success, 1 bad input or failed run, 2 usage error, 130 interrupted "
        "(the trace recorded so far is still written). Supported model types: "
        + ", ".join(sorted(SUPPORTED_MODEL_TYPES)) + ". Details: docs/recording.md.",
    )
    m = p.add_argument_group("model")
    m.add_argument("--model", required=True, metavar="PATH",
                   help="a local model folder (config.json + weights) or a .gguf file (loaded through "
                   "transformers' GGUF support, dequantized). Nothing is downloaded.")
    m.add_argument("--tokenizer", metavar="DIR",
                   help="local tokenizer folder (default: the model folder, or the tokenizer stored in the GGUF)")
    m.add_argument("--model-name", metavar="NAME",
                   help="value of the trace's 'model' attribute (default: the folder name or GGUF file stem)")
    m.add_argument("--device", default="auto", metavar="DEV",
                   help="where the model runs: cpu, cuda, cuda:N, mps or auto (cuda when available). Default: auto")
    m.add_argument("--model-dtype", default="default", choices=["default", "auto", "float32", "bfloat16", "float16"],
                   help="dtype the model computes in. 'default': float32 on cpu, bfloat16 elsewhere; "
                   "'auto': the checkpoint's own dtype. Default: default")
    m.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads PyTorch uses (default: the cores this process may run on, from "
                   "os.sched_getaffinity; PyTorch's own default can oversubscribe a shared machine many times over)")
    m.add_argument("--attn-implementation", default="eager", choices=["eager", "sdpa"],
                   help="transformers attention implementation to run (both are captured). Default: eager")

    pr = p.add_argument_group("prompts")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help="one prompt")
    src.add_argument("--prompt-file", metavar="FILE", help="one prompt: the whole content of a UTF-8 text file")
    src.add_argument("--prompts", metavar="JSONL",
                     help="several prompts, one JSON value per line: a string, or an object with 'prompt' "
                     "and optional 'id' (names the output file), 'system' and 'seed'")
    pr.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                    help="wrap each prompt in the tokenizer's chat template as a user turn with the "
                    "generation prompt (default: on when the tokenizer has a template)")
    pr.add_argument("--system", metavar="TEXT", help="system message (chat template only)")
    pr.add_argument("--template-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="extra variable for the chat template, VALUE parsed as JSON when it can be "
                    "(e.g. enable_thinking=true, reasoning_effort=low); repeatable")

    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=1024, metavar="N",
                   help="generated positions at most (the stop token, when sampled, is the last one). Default: 1024")
    g.add_argument("--temperature", type=float, default=0.0, metavar="T",
                   help="sampling temperature; 0 means greedy (argmax). Default: 0")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass, in (0, 1]. Default: 1")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K most likely tokens; 0 keeps all. Default: 0")
    g.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="divide positive (multiply negative) logits of tokens already in the sequence by R. Default: 1")
    g.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the sampler, reset for every prompt. Default: 0")
    g.add_argument("--ignore-eos", action="store_true",
                   help="do not stop at the end-of-sequence token; always generate --max-new-tokens")

    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", required=True, metavar="PATH",
                   help="the trace file (with --prompt/--prompt-file) or a folder that receives one "
                   "<id>.h5 per line (with --prompts)")
    o.add_argument("--layers", default="all", metavar="SPEC",
                   help="layers to record: 'all', or a comma list of indices (negative counts from "
                   "the end) and inclusive ranges A-B, e.g. '0,14,-1' or '0-3'. Default: all")
    o.add_argument("--dtype", default="float16", choices=["float16", "float32"],
                   help="storage type of q, k, v. Default: float16")
    o.add_argument("--no-values", action="store_true", help="record q and k only (no /layers/<n>/v)")
    o.add_argument("--chunk-size", type=int, default=256, metavar="N",
                   help="positions per HDF5 chunk (and per write). Default: 256")
    o.add_argument("--compression", default="gzip", choices=["gzip", "none"],
                   help="gzip (deflate, with shuffle) or none. Default: gzip")
    o.add_argument("-f", "--force", "--overwrite", dest="overwrite", action="store_true",
                   help="replace existing trace files (--overwrite is the older spelling)")
    o.add_argument("--print-text", action="store_true", help="print each generated text to stdout")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--debug", action="store_true", help="show the Python traceback of a failure")
    return p


def check_arguments(parser, args):
    """Usage mistakes that argparse cannot see: exit 2 before anything is loaded."""
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be at least 1")
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        parser.error("--temperature must be a finite number >= 0")
    if not (0 < args.top_p <= 1):
        parser.error("--top-p must be in (0, 1]")
    if args.top_k < 0:
        parser.error("--top-k must be >= 0")
    if not (args.repetition_penalty > 0 and math.isfinite(args.repetition_penalty)):
        parser.error("--repetition-penalty must be a positive number")
    if not (0 <= args.seed < 2**63):
        parser.error("--seed must be between 0 and 2^63-1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.chunk_size < 1:
        parser.error("--chunk-size must be at least 1")
    if args.system is not None and args.chat_template is False:
        parser.error("--system needs the chat template (drop --no-chat-template)")
    if args.template_arg and args.chat_template is False:
        parser.error("--template-arg needs the chat template (drop --no-chat-template)")
    try:
        args.template_kwargs = parse_template_args(args.template_arg)
        parse_layer_spec(args.layers)
    except ValueError as e:
        parser.error(str(e))
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", args.device):
        parser.error(f"--device: '{args.device}' is not cpu, cuda, cuda:N, mps or auto")


def parse_template_args(items):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--template-arg '{item}' is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def parse_layer_spec(spec):
    """Syntax check of --layers; returns a list of ('all',) / ('index', i) / ('range', a, b)."""
    spec = spec.strip()
    if spec == "all":
        return [("all",)]
    items = []
    for part in spec.split(","):
        part = part.strip()
        if re.fullmatch(r"-?\d+", part):
            items.append(("index", int(part)))
        elif re.fullmatch(r"\d+-\d+", part):
            a, b = (int(x) for x in part.split("-"))
            if a > b:
                raise ValueError(f"--layers: range '{part}' is empty (start after end)")
            items.append(("range", a, b))
        else:
            raise ValueError(f"--layers: '{part}' is not a layer index, a range A-B or 'all'")
    return items


def resolve_layers(spec, num_layers):
    """The sorted, distinct layer indices that `spec` names in a model with `num_layers` layers."""
    chosen = set()
    for item in parse_layer_spec(spec):
        if item[0] == "all":
            chosen.update(range(num_layers))
        elif item[0] == "index":
            i = item[1]
            j = i + num_layers if i < 0 else i
            if not 0 <= j < num_layers:
                raise RecorderError(f"--layers: layer {i} does not exist; the model has {num_layers} layers "
                                    f"(0 to {num_layers - 1}, or -1 to -{num_layers})")
            chosen.add(j)
        else:
            _, a, b = item
            if b >= num_layers:
                raise RecorderError(f"--layers: range {a}-{b} goes past the last layer {num_layers - 1}")
            chosen.update(range(a, b + 1))
    return sorted(chosen)


# --------------------------------------------------------------------------------------------
# Prompts


class PromptJob:
    def __init__(self, text, output, system=None, seed=0, name=None):
        self.text = text
        self.output = output
        self.system = system
        self.seed = seed
        self.name = name


def load_jobs(args):
    if args.prompt is not None or args.prompt_file is not None:
        if args.prompt is not None:
            text = args.prompt
        else:
            try:
                with open(args.prompt_file, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise RecorderError(f"{args.prompt_file}: cannot read the prompt file ({e.strerror})")
            except UnicodeDecodeError:
                raise RecorderError(f"{args.prompt_file}: not UTF-8 text")
        if not text.strip():
            raise RecorderError("the prompt is empty")
        if os.path.isdir(args.output):
            raise RecorderError(f"{args.output}: is a folder; with one prompt --output names the trace file")
        return [PromptJob(text, args.output, args.system, args.seed)]

    path = args.prompts
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise RecorderError(f"{path}: cannot read the prompts file ({e.strerror})")
    except UnicodeDecodeError:
        raise RecorderError(f"{path}: not UTF-8 text")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise RecorderError(f"{args.output}: exists and is not a folder; with --prompts --output names a folder")
    jobs, names = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecorderError(f"{where}: not valid JSON ({e.msg})")
        if isinstance(record, str):
            record = {"prompt": record}
        if not isinstance(record, dict):
            raise RecorderError(f"{where}: expected a string or an object with a 'prompt' field")
        unknown = set(record) - {"prompt", "id", "system", "seed"}
        if unknown:
            raise RecorderError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
                                "allowed: prompt, id, system, seed")
        text = record.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise RecorderError(f"{where}: 'prompt' must be a non-empty string")
        system = record.get("system", args.system)
        if system is not None and not isinstance(system, str):
            raise RecorderError(f"{where}: 'system' must be a string")
        if system is not None and args.chat_template is False:
            raise RecorderError(f"{where}: a system message needs the chat template (drop --no-chat-template)")
        seed = record.get("seed", args.seed)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise RecorderError(f"{where}: 'seed' must be an integer between 0 and 2^63-1")
        if "id" in record:
            rid = record["id"]
            if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
                raise RecorderError(f"{where}: 'id' must be a non-empty string or an integer")
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(rid)).strip("._") or "prompt"
        else:
            name = f"prompt-{len(jobs):04d}"
        if name in names:
            raise RecorderError(f"{where}: output name '{name}.h5' is already used by an earlier line")
        names.add(name)
        jobs.append(PromptJob(text, os.path.join(args.output, name + ".h5"), system, seed, name))
    if not jobs:
        raise RecorderError(f"{path}: holds no prompt")
    return jobs


# --------------------------------------------------------------------------------------------
# Loading


def import_stack():
    try:
        import numpy as np  # noqa: F401
        import h5py  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError as e:
        raise RecorderError(f"missing Python package '{e.name}': install tools/requirements.txt "
                            "(pip install -r tools/requirements.txt, or make recorder-venv)")


def model_location(path):
    """(folder, gguf file name or None) of --model."""
    if not os.path.exists(path):
        raise RecorderError(f"{path}: no such model folder or GGUF file (models are never downloaded)")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
            hint = f"; to load a GGUF, pass the file itself (e.g. {os.path.join(path, ggufs[0])})" if ggufs else ""
            raise RecorderError(f"{path}: no config.json in this folder{hint}")
        return path, None
    if path.lower().endswith(".gguf"):
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise RecorderError(f"{path}: not a GGUF file (no GGUF signature)")
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    raise RecorderError(f"{path}: expected a model folder or a .gguf file")


def first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_config(folder, gguf):
    from transformers import AutoConfig
    kwargs = {"local_files_only": True}
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        return AutoConfig.from_pretrained(folder, **kwargs)
    except Exception as e:
        raise RecorderError(f"cannot read the model configuration of {os.path.join(folder, gguf or '')}: {first_line(e)}")


def check_architecture(config):
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise RecorderError(f"unsupported architecture '{model_type}': record_trace.py hooks the attention of "
                            + ", ".join(sorted(SUPPORTED_MODEL_TYPES)) + " models")
    if getattr(config, "is_encoder_decoder", False):
        raise RecorderError(f"unsupported architecture '{model_type}': encoder-decoder models are not causal LMs")


def config_shape(config):
    layers = config.num_hidden_layers
    q_heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or q_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // q_heads
    if q_heads % kv_heads:
        raise RecorderError(f"model config: num_attention_heads {q_heads} is not a multiple of num_key_value_heads {kv_heads}")
    return layers, q_heads, kv_heads, head_dim


def pick_device(name):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RecorderError(f"--device {name}: no CUDA device is available to PyTorch {torch.__version__}")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise RecorderError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RecorderError("--device mps: MPS is not available to this PyTorch")
    return torch.device(name)


def pick_model_dtype(choice, device):
    import torch
    if choice == "default":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if choice == "auto":
        return "auto"
    return getattr(torch, choice)


def load_model(folder, gguf, dtype, attn_impl, device):
    import torch
    from transformers import AutoModelForCausalLM
    kwargs = {"local_files_only": True, "attn_implementation": attn_impl}
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
        except TypeError:  # transformers that only knows torch_dtype
            model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype, **kwargs)
    except Exception as e:
        raise RecorderError(f"cannot load the model from {os.path.join(folder, gguf or '')}: {first_line(e)}")
    try:
        model.to(device)
    except Exception as e:
        raise RecorderError(f"cannot move the model to {device}: {first_line(e)}")
    model.eval()
    torch.set_grad_enabled(False)
    return model


def load_tokenizer(folder, gguf, override):
    from transformers import AutoTokenizer
    source = override or folder
    kwargs = {"local_files_only": True}
    if gguf and not override:
        kwargs["gguf_file"] = gguf
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as e:
        raise RecorderError(f"cannot load a tokenizer from {os.path.join(source, '' if override else gguf or '')}: "
                            f"{first_line(e)} (pass a tokenizer folder with --tokenizer)")


# --------------------------------------------------------------------------------------------
# Capture


class AttentionCapture:
    """Wraps the attention function(s) the model's attention modules call and hands the new
    positions' q, k, v of the chosen layers to `sink(layer, q, k, v)` as [seq, heads, D] tensors.

    Installed as a context manager; restores what it replaced on exit.
    """

    def __init__(self, model, layers, attn_impl, shape):
        self.layers = set(layers)
        self.shape = shape  # (num_layers, q heads, kv heads, head dim) from the config
        self.attn_impl = attn_impl
        self.sink = None
        self.expected_len = None
        self.calls = {}
        self.scaling = {}
        self.sinks = {}
        self.sliding_window = {}
        self.by_module = {}
        for module in model.modules():
            idx = getattr(module, "layer_idx", None)
            if idx is not None and type(module).__name__.endswith("Attention") and hasattr(module, "q_proj"):
                self.by_module[id(module)] = idx
        found = set(self.by_module.values())
        missing = self.layers - found
        if missing:
            raise RecorderError(f"found no attention module for layer(s) {sorted(missing)} in {type(model).__name__}")
        self.attention_modules = {type(m).__module__ for m in model.modules() if id(m) in self.by_module}
        self._restore = []

    def _wrap(self, original):
        capture = self

        def recording_attention(module, query, key, value, attention_mask, *args, **kwargs):
            layer = capture.by_module.get(id(module))
            if layer is not None and layer in capture.layers and capture.sink is not None:
                capture._record(layer, module, query, key, value, args, kwargs)
            return original(module, query, key, value, attention_mask, *args, **kwargs)

        recording_attention.__wrapped__ = original
        return recording_attention

    def __enter__(self):
        # The default ("eager") path: a module-level function looked up when the forward runs.
        for name in self.attention_modules:
            mod = sys.modules[name]
            fn = getattr(mod, "eager_attention_forward", None)
            if fn is not None:
                setattr(mod, "eager_attention_forward", self._wrap(fn))
                self._restore.append(lambda mod=mod, fn=fn: setattr(mod, "eager_attention_forward", fn))
        if self.attn_impl != "eager":
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
            fn = ALL_ATTENTION_FUNCTIONS[self.attn_impl]
            ALL_ATTENTION_FUNCTIONS[self.attn_impl] = self._wrap(fn)
            self._restore.append(lambda: ALL_ATTENTION_FUNCTIONS.__setitem__(self.attn_impl, fn))
        return self

    def __exit__(self, *exc):
        for undo in reversed(self._restore):
            undo()
        self._restore.clear()
        return False

    def begin_forward(self, seq_len):
        self.expected_len = seq_len
        self.calls = {layer: 0 for layer in self.layers}

    def end_forward(self, model_type):
        import transformers
        silent = sorted(layer for layer, n in self.calls.items() if n == 0)
        if silent:
            raise RecorderError(
                f"the attention of layer(s) {silent} was not captured: this transformers version "
                f"({transformers.__version__}) runs '{model_type}' attention through a path record_trace.py "
                f"does not hook (try --attn-implementation eager)")

    def _record(self, layer, module, query, key, value, args, kwargs):
        if self.calls.get(layer, 0):
            raise RecorderError(f"layer {layer}: attention ran twice in one forward; cannot tell which call to record")
        self.calls[layer] = 1
        if query.dim() != 4 or key.dim() != 4 or query.shape[0] != 1:
            raise RecorderError(f"layer {layer}: unexpected attention input shapes q {tuple(query.shape)}, "
                                f"k {tuple(key.shape)} (expected [1, heads, seq, D])")
        _, hq, hkv, d = self.shape
        if (query.shape[1], key.shape[1], value.shape[1], query.shape[3], key.shape[3]) != (hq, hkv, hkv, d, d):
            raise RecorderError(f"layer {layer}: attention inputs q {tuple(query.shape)}, k {tuple(key.shape)}, "
                                f"v {tuple(value.shape)} disagree with the config ({hq} q heads, {hkv} kv heads, "
                                f"head dim {d})")
        n = query.shape[2]
        if n != self.expected_len or key.shape[2] < n:
            raise RecorderError(f"layer {layer}: attention saw {n} queries and {key.shape[2]} keys in a forward "
                                f"over {self.expected_len} new positions")
        scaling = kwargs.get("scaling", args[0] if args else None)
        self.scaling[layer] = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
        sinks = kwargs.get("s_aux")
        if sinks is None:
            sinks = getattr(module, "sinks", None)
        if sinks is not None:
            self.sinks[layer] = sinks.detach().float().cpu().numpy().reshape(-1)
        window = kwargs.get("sliding_window")
        if window is None:
            window = getattr(module, "sliding_window", None)
        if window is not None:
            self.sliding_window[layer] = int(window)
        # [1, H, S, D] -> [S, H, D]; keys/values end with the new positions (the cache is in front).
        q = query[0].transpose(0, 1)
        k = key[0, :, -n:, :].transpose(0, 1)
        v = value[0, :, -n:, :].transpose(0, 1)
        self.sink(layer, q, k, v)


# --------------------------------------------------------------------------------------------
# Writing


class TraceWriter:
    """Streams positions into a thinkv-trace v1 file.

    Rows are buffered per dataset and written (the dataset resized along T) whenever a chunk's
    worth is pending, so memory holds at most one chunk per dataset plus one forward's capture of
    one layer. The file is written under `<path>.partial` and renamed by `close()`.
    """

    def __init__(self, path, layers, q_heads, kv_heads, head_dim, dtype, values, chunk, compression, attrs):
        import h5py
        import numpy as np
        self.np = np
        self.path = path
        self.partial = path + ".partial"
        self.dtype = np.float16 if dtype == "float16" else np.float32
        self.chunk = chunk
        self.layers = layers
        self.values = values
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise RecorderError(f"{path}: the folder {folder} does not exist")
        try:
            self.file = h5py.File(self.partial, "w")
        except OSError as e:
            raise RecorderError(f"{self.partial}: cannot create the file ({first_line(e)})")
        f = self.file
        for key, value in attrs.items():
            f.attrs[key] = value
        opts = {}
        if compression == "gzip":
            opts = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        self.datasets = {}
        self.pending = {}
        self.length = {}

        def make(name, shape_tail, dtype, compressed=True):
            ds = f.create_dataset(name, shape=(0, *shape_tail), maxshape=(None, *shape_tail), dtype=dtype,
                                  chunks=(chunk, *shape_tail), **(opts if compressed else {}))
            self.datasets[name] = ds
            self.pending[name] = []
            self.length[name] = 0

        make("tokens/ids", (), np.int32)
        make("tokens/text", (), h5py.string_dtype("utf-8"), compressed=False)
        for layer in layers:
            make(f"layers/{layer}/q", (q_heads, head_dim), self.dtype)
            make(f"layers/{layer}/k", (kv_heads, head_dim), self.dtype)
            if values:
                make(f"layers/{layer}/v", (kv_heads, head_dim), self.dtype)

    def add_tokens(self, ids, texts):
        self._append("tokens/ids", self.np.asarray(ids, dtype=self.np.int32))
        # HDF5 variable-length strings end at a NUL byte: a NUL character is stored as U+2400 (␀).
        self._append("tokens/text", self.np.array([t.replace("\x00", "\u2400") for t in texts], dtype=object))

    def add_layer(self, layer, q, k, v):
        """q [S, Hq, D], k and v [S, Hkv, D]: torch tensors on any device."""
        import torch
        target = torch.float16 if self.dtype == self.np.float16 else torch.float32
        tensors = [("q", q), ("k", k)] + ([("v", v)] if self.values else [])
        for name, t in tensors:
            rows = t.detach().to(dtype=target).cpu().numpy()
            finite = self.np.isfinite(rows).reshape(len(rows), -1).all(axis=1)
            if not finite.all():
                dataset = f"layers/{layer}/{name}"
                bad = int(self.np.argmin(finite))
                position = self.length[dataset] + sum(len(r) for r in self.pending[dataset]) + bad
                source = t[bad].detach().float()
                if torch.isfinite(source).all():
                    raise RecorderError(f"layer {layer} {name}: values up to {source.abs().max().item():.4g} overflow "
                                        f"float16 at position {position}; record with --dtype float32")
                raise RecorderError(f"layer {layer} {name}: the model produced NaN or infinite values at position {position}")
            self._append(f"layers/{layer}/{name}", rows)

    def _append(self, name, rows):
        self.pending[name].append(rows)
        if sum(len(r) for r in self.pending[name]) >= self.chunk:
            self._flush(name)

    def _flush(self, name):
        if not self.pending[name]:
            return
        rows = self.np.concatenate(self.pending[name]) if len(self.pending[name]) > 1 else self.pending[name][0]
        self.pending[name] = []
        ds = self.datasets[name]
        start = self.length[name]
        ds.resize(start + len(rows), axis=0)
        ds[start:start + len(rows)] = rows
        self.length[name] = start + len(rows)

    def truncate_to_common_length(self):
        """Flush, then cut every dataset to the shortest one's length (after an interrupted forward)."""
        for name in self.datasets:
            self._flush(name)
        common = min(self.length.values())
        for name, ds in self.datasets.items():
            if self.length[name] > common:
                ds.resize(common, axis=0)
                self.length[name] = common
        return common

    def set_attrs(self, attrs):
        for key, value in attrs.items():
            self.file.attrs[key] = value

    def set_layer_attrs(self, layer, attrs):
        group = self.file[f"layers/{layer}"]
        for key, value in attrs.items():
            group.attrs[key] = value

    def close(self):
        """Flush, check every dataset has T rows, write num_tokens, rename into place. Returns T."""
        import numpy as np
        for name in self.datasets:
            self._flush(name)
        lengths = set(self.length.values())
        if len(lengths) != 1:
            raise RecorderError(f"{self.path}: internal error, datasets have different lengths {self.length}")
        total = lengths.pop()
        self.file.attrs["num_tokens"] = np.int32(total)
        self.file.close()
        os.replace(self.partial, self.path)
        return total

    def discard(self):
        try:
            self.file.close()
        except Exception:
            pass
        try:
            os.remove(self.partial)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# Tokens


class PieceDecoder:
    """Text of each token in context: concatenating the pieces gives the decoded sequence.

    A token that ends inside a multi-byte character gets an empty piece; the character goes to
    the token that completes it."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids = []
        self.prefix = 0
        self.read = 0

    def _decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, token_id):
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd") and after.startswith(before):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        if not after.startswith(before) and not after.endswith("\ufffd"):
            # The tokenizer rewrote earlier text (rare cleanup rules): emit this token alone.
            self.prefix, self.read = len(self.ids), len(self.ids)
            return self._decode([self.ids[-1]])
        return ""


def encode_prompt(tokenizer, job, use_template, template_kwargs):
    if use_template:
        messages = ([{"role": "system", "content": job.system}] if job.system is not None else []) + \
                   [{"role": "user", "content": job.text}]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs)
        except Exception as e:
            raise RecorderError(f"the chat template failed: {first_line(e)}")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(job.text)["input_ids"]
    if not ids:
        raise RecorderError("the prompt encodes to no token")
    return [int(i) for i in ids]


def stop_ids(model, tokenizer):
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update([value] if isinstance(value, int) else list(value))
    return ids


# --------------------------------------------------------------------------------------------
# Generation


class Sampler:
    def __init__(self, temperature, top_k, top_p, repetition_penalty, seed):
        import torch
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.penalty = repetition_penalty
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def __call__(self, logits, seen):
        """Next token id from last-position logits [vocab] (any device); `seen`: ids so far."""
        import torch
        logits = logits.detach().float().cpu().clone()
        if self.penalty != 1.0 and seen:
            index = torch.tensor(sorted(set(seen)), dtype=torch.long)
            index = index[index < logits.shape[0]]
            picked = logits[index]
            logits[index] = torch.where(picked > 0, picked / self.penalty, picked * self.penalty)
        if self.temperature == 0:
            return int(torch.argmax(logits))
        logits = logits / self.temperature
        if self.top_k and self.top_k < logits.shape[0]:
            threshold = torch.topk(logits, self.top_k).values[-1]
            logits[logits < threshold] = -float("inf")
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            before = torch.cumsum(probs, dim=-1) - probs  # mass of the more likely tokens
            drop = before >= self.top_p
            logits[order[drop]] = -float("inf")
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def forward_kwargs(model):
    import inspect
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    return cache_arg, ("logits_to_keep" in params)


def record_one(job, ctx):
    """Generate for one prompt and write its trace. Returns a summary dict."""
    import numpy as np
    import torch
    from tqdm import tqdm

    args, model, tokenizer = ctx["args"], ctx["model"], ctx["tokenizer"]
    prompt_ids = encode_prompt(tokenizer, job, ctx["use_template"], args.template_kwargs)
    P = len(prompt_ids)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and P + args.max_new_tokens > max_pos:
        print(f"{PROG}: warning: {P} prompt + {args.max_new_tokens} new tokens exceed the model's "
              f"max_position_embeddings {max_pos}", file=sys.stderr)

    layers, (L, Hq, Hkv, D) = ctx["layers"], ctx["shape"]
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
                "repetition_penalty": args.repetition_penalty, "max_new_tokens": args.max_new_tokens,
                "ignore_eos": bool(args.ignore_eos)}
    attrs = {
        "format": "thinkv-trace",
        "version": np.int32(1),
        "model": ctx["model_name"],
        "num_layers": np.int32(L),
        "num_q_heads": np.int32(Hq),
        "num_kv_heads": np.int32(Hkv),
        "head_dim": np.int32(D),
        "prompt_len": np.int32(P),
        "num_tokens": np.int32(0),
        "source": "recorded",
        "generator": ctx["generator"],
        "prompt": job.text,
        "seed": np.int64(job.seed),
        "sampling": json.dumps(sampling, sort_keys=True),
        "chat_template": "on" if ctx["use_template"] else "off",
        "model_type": model.config.model_type,
        "model_file": ctx["model_file"],
        "model_dtype": str(model.dtype).replace("torch.", ""),
        "device": str(ctx["device"]),
        "attn_implementation": args.attn_implementation,
    }
    if job.system is not None:
        attrs["system_prompt"] = job.system
    if args.template_kwargs:
        attrs["chat_template_args"] = json.dumps(args.template_kwargs, sort_keys=True)

    writer = TraceWriter(job.output, layers, Hq, Hkv, D, args.dtype, not args.no_values,
                         args.chunk_size, args.compression, attrs)
    capture, pieces = ctx["capture"], PieceDecoder(tokenizer)
    sampler = Sampler(args.temperature, args.top_k, args.top_p, args.repetition_penalty, job.seed)
    cache_arg, has_logits_to_keep = ctx["forward_kwargs"]
    stops = set() if args.ignore_eos else ctx["stop_ids"]
    device = ctx["device"]
    generated, stop_reason, cache = [], "max_new_tokens", None
    bar = None

    def run(ids):
        nonlocal cache
        writer.add_tokens(ids, [pieces.push(i) for i in ids])
        kwargs = {"input_ids": torch.tensor([ids], dtype=torch.long, device=device), "use_cache": True}
        if cache is not None:
            kwargs[cache_arg] = cache
        if has_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        capture.begin_forward(len(ids))
        out = model(**kwargs)
        capture.end_forward(model.config.model_type)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if cache is None:
            raise RecorderError("the model returned no KV cache; cannot decode step by step")
        return out.logits[0, -1]

    started, decode_started, prefill_seconds = time.time(), None, 0.0
    try:
        capture.sink = writer.add_layer
        logits = run(prompt_ids)
        prefill_seconds = time.time() - started
        bar = tqdm(total=args.max_new_tokens, unit="tok", desc=job.name or "generate", leave=False,
                   disable=True if args.no_progress else None, dynamic_ncols=True)
        decode_started = time.time()
        while True:
            token = sampler(logits, prompt_ids + generated)
            generated.append(token)
            logits = run([token])   # records this position's q/k/v
            bar.update(1)
            if token in stops:
                stop_reason = "eos"
                break
            if len(generated) >= args.max_new_tokens:
                break
    except KeyboardInterrupt:
        # Keep what was recorded; a forward cut short leaves some datasets one position ahead.
        stop_reason = "interrupted"
        if writer.truncate_to_common_length() < P:
            writer.discard()
            raise
    except BaseException:
        writer.discard()
        raise
    finally:
        capture.sink = None
        if bar is not None:
            bar.close()
    decode_seconds = time.time() - decode_started if decode_started else 0.0

    layer_attrs = {}
    for layer in layers:
        extra = {}
        if layer in capture.sliding_window:
            extra["sliding_window"] = np.int32(capture.sliding_window[layer])
        if layer in capture.sinks:
            extra["attention_sinks"] = capture.sinks[layer].astype(np.float32)
        if extra:
            layer_attrs[layer] = extra
    scales = {round(s, 9) for l, s in capture.scaling.items() if l in layers}
    try:
        if len(scales) > 1:
            raise RecorderError(f"the recorded layers use different softmax scales {sorted(scales)}; "
                                "record them in separate runs")
        final = {"stop_reason": stop_reason, "decode_seconds": np.float32(decode_seconds),
                 "prefill_seconds": np.float32(prefill_seconds)}
        scale = scales.pop() if scales else D ** -0.5
        if abs(scale - D ** -0.5) > 1e-6 * D ** -0.5:
            final["softmax_scale"] = np.float32(scale)
        writer.set_attrs(final)
        for layer, extra in layer_attrs.items():
            writer.set_layer_attrs(layer, extra)
        T = writer.close()
    except BaseException:
        writer.discard()
        raise
    text = tokenizer.decode(generated, skip_special_tokens=True)
    windows = {l: w for l, w in capture.sliding_window.items() if l in layers and w < T}
    return {"path": job.output, "P": P, "G": T - P, "stop": stop_reason, "text": text,
            "tok_s": (T - P) / decode_seconds if decode_seconds > 0 else 0.0,
            "prefill_s": prefill_seconds, "bytes": os.path.getsize(job.output), "windows": windows,
            "sinks": sorted(l for l in capture.sinks if l in layers)}


def default_threads() -> int:
    """The cores this process may run on (a Slurm or taskset allocation), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    try:
        return run(args)
    except RecorderError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"{PROG}: error: {type(e).__name__}: {first_line(e)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


def run(args):
    if args.no_progress:
        os.environ.setdefault("TQDM_DISABLE", "1")  # also transformers' own bars (read when tqdm is imported)
    jobs = load_jobs(args)
    for job in jobs:
        if os.path.exists(job.output) and not args.overwrite:
            raise RecorderError(f"{job.output}: exists (pass --force to replace it)")
    folder, gguf = model_location(args.model)
    if args.tokenizer and not os.path.isdir(args.tokenizer):
        raise RecorderError(f"{args.tokenizer}: no such tokenizer folder")
    import_stack()
    import torch
    import transformers

    torch.set_num_threads(args.threads or default_threads())
    if args.no_progress:
        transformers.utils.logging.disable_progress_bar()
    config = load_config(folder, gguf)
    check_architecture(config)
    shape = config_shape(config)
    layers = resolve_layers(args.layers, shape[0])
    device = pick_device(args.device)
    tokenizer = load_tokenizer(folder, gguf, args.tokenizer)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    use_template = has_template if args.chat_template is None else args.chat_template
    if use_template and not has_template:
        raise RecorderError("--chat-template: the tokenizer has no chat template")
    for job in jobs:
        if job.system is not None and not use_template:
            raise RecorderError("a system message needs the chat template, and the tokenizer has none")

    started = time.time()
    model = load_model(folder, gguf, pick_model_dtype(args.model_dtype, device), args.attn_implementation, device)
    check_architecture(model.config)
    if config_shape(model.config) != shape:
        raise RecorderError(f"the loaded model's shape {config_shape(model.config)} differs from its configuration {shape}")
    load_seconds = time.time() - started
    print(f"{PROG}: loaded {args.model} ({model.config.model_type}, {shape[0]} layers, {shape[1]} q heads, "
          f"{shape[2]} kv heads, head dim {shape[3]}) on {device} in {load_seconds:.1f} s; recording layers "
          f"{layers}", file=sys.stderr)

    if args.model_name:
        model_name = args.model_name
    elif gguf:
        model_name = os.path.splitext(gguf)[0]
    else:
        model_name = os.path.basename(os.path.normpath(os.path.abspath(folder)))
    ctx = {
        "args": args, "model": model, "tokenizer": tokenizer, "device": device, "layers": layers,
        "shape": shape, "use_template": use_template, "model_name": model_name,
        "model_file": gguf or os.path.basename(os.path.normpath(os.path.abspath(folder))),
        "generator": f"thinkv-sim tools/record_trace.py {RECORDER_VERSION} (torch {torch.__version__}, "
                     f"transformers {transformers.__version__})",
        "stop_ids": stop_ids(model, tokenizer), "forward_kwargs": forward_kwargs(model),
    }
    if args.prompts:
        os.makedirs(args.output, exist_ok=True)
    with AttentionCapture(model, layers, args.attn_implementation, shape) as capture:
        ctx["capture"] = capture
        for job in jobs:
            try:
                result = record_one(job, ctx)
            except KeyboardInterrupt:
                print(f"{PROG}: interrupted before the prompt was recorded; {job.output} not written", file=sys.stderr)
                return 130
            mb = result["bytes"] / 1e6
            print(f"{PROG}: wrote {result['path']}: {result['P']} prompt + {result['G']} generated positions, "
                  f"stop: {result['stop']}, {result['tok_s']:.1f} tok/s, {mb:.1f} MB", file=sys.stderr)
            for layer, window in sorted(result["windows"].items()):
                print(f"{PROG}: note: layer {layer} attends through a sliding window of {window}; the trace "
                      "stores it as an attribute but format v1 replays attend causally to every position",
                      file=sys.stderr)
            if result["sinks"]:
                print(f"{PROG}: note: layers {result['sinks']} have attention sinks, stored as the "
                      "'attention_sinks' attribute; format v1 replays ignore them", file=sys.stderr)
            if args.print_text:
                print(result["text"], flush=True)
            if result["stop"] == "interrupted":
                print(f"{PROG}: interrupted; the trace holds the positions recorded so far", file=sys.stderr)
                return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
