"""Generating for one prompt while its trace is written."""

import json
import os
import sys
import time

from .errors import PROG, RecorderError
from .prompts import encode_prompt
from .sampling import Sampler
from .tokens import PieceDecoder
from .writer import TraceWriter


class PlainProgress:
    """Progress off a terminal: a plain line every `interval` seconds and one at the end. tqdm's
    bar redraws itself with carriage returns, which a log file or CI output keeps as one long
    garbled line."""

    def __init__(self, total, desc, interval=10.0, stream=None):
        self.total, self.desc, self.interval = total, desc, interval
        self.stream = stream if stream is not None else sys.stderr
        self.count, self.started = 0, time.monotonic()
        self.last = self.started
        self.reported = None

    def update(self, n=1):
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def close(self):
        if self.count and self.reported != self.count:
            self._line(time.monotonic())

    def _line(self, now):
        rate = self.count / max(now - self.started, 1e-9)
        print(f"{self.desc}: {self.count}/{self.total} tokens ({rate:.1f} tok/s)", file=self.stream, flush=True)
        self.reported = self.count


class NoProgress:
    """--no-progress."""

    def update(self, n=1):
        pass

    def close(self):
        pass


def progress_bar(total, desc, no_progress, stream=None):
    """tqdm's bar on a terminal, plain lines elsewhere, nothing with --no-progress."""
    stream = stream if stream is not None else sys.stderr
    if no_progress:
        return NoProgress()
    if stream.isatty():
        from tqdm import tqdm
        return tqdm(total=total, unit="tok", desc=desc, leave=False, dynamic_ncols=True, file=stream)
    return PlainProgress(total, desc, stream=stream)


def record_one(job, ctx):
    """Generate for one prompt and write its trace. Returns a summary dict."""
    import numpy as np
    import torch

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
        bar = progress_bar(args.max_new_tokens, job.name or "generate", args.no_progress)
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
