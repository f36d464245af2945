"""What to generate from: one prompt, a prompt file, or a JSONL file of prompts; and their token ids."""

import json
import os
import re

from .errors import RecorderError, first_line


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
