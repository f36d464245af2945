"""Finding, checking and loading a local model folder or GGUF file, and what generation needs of it."""

import os

from .errors import RecorderError, first_line

# transformers model types whose attention modules call the hooked attention function with
# post-RoPE q/k and cached k/v in the layout capture.py describes. Each one is covered by
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


def stop_ids(model, tokenizer):
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update([value] if isinstance(value, int) else list(value))
    return ids


# --------------------------------------------------------------------------------------------


def forward_kwargs(model):
    import inspect
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    return cache_arg, ("logits_to_keep" in params)


def default_threads() -> int:
    """The cores this process may run on (a Slurm or taskset allocation), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
