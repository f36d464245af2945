"""The command line of tools/record_trace.py: arguments, the run over all prompts, exit codes."""

import argparse
import json
import math
import os
import re
import sys
import time

from . import model as models
from .capture import AttentionCapture
from .errors import PROG, RECORDER_VERSION, RecorderError, first_line
from .generate import record_one
from .layers import parse_layer_spec, resolve_layers
from .model import SUPPORTED_MODEL_TYPES
from .prompts import load_jobs


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
    # Off a terminal the recorder prints plain progress lines (generate.PlainProgress); tqdm's
    # bars, transformers' own while loading included, would fill a log with carriage returns.
    plain = not sys.stderr.isatty()
    if args.no_progress or plain:
        os.environ.setdefault("TQDM_DISABLE", "1")  # also transformers' own bars (read when tqdm is imported)
    jobs = load_jobs(args)
    for job in jobs:
        if os.path.exists(job.output) and not args.overwrite:
            raise RecorderError(f"{job.output}: exists (pass --force to replace it)")
    folder, gguf = models.model_location(args.model)
    if args.tokenizer and not os.path.isdir(args.tokenizer):
        raise RecorderError(f"{args.tokenizer}: no such tokenizer folder")
    models.import_stack()
    import torch
    import transformers

    torch.set_num_threads(args.threads or models.default_threads())
    if args.no_progress or plain:
        transformers.utils.logging.disable_progress_bar()
    config = models.load_config(folder, gguf)
    models.check_architecture(config)
    shape = models.config_shape(config)
    layers = resolve_layers(args.layers, shape[0])
    device = models.pick_device(args.device)
    tokenizer = models.load_tokenizer(folder, gguf, args.tokenizer)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    use_template = has_template if args.chat_template is None else args.chat_template
    if use_template and not has_template:
        raise RecorderError("--chat-template: the tokenizer has no chat template")
    for job in jobs:
        if job.system is not None and not use_template:
            raise RecorderError("a system message needs the chat template, and the tokenizer has none")

    started = time.time()
    model = models.load_model(folder, gguf, models.pick_model_dtype(args.model_dtype, device), args.attn_implementation, device)
    models.check_architecture(model.config)
    if models.config_shape(model.config) != shape:
        raise RecorderError(f"the loaded model's shape {models.config_shape(model.config)} differs from its configuration {shape}")
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
        "stop_ids": models.stop_ids(model, tokenizer), "forward_kwargs": models.forward_kwargs(model),
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
