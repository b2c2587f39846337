#!/usr/bin/env python3
"""Reference figures from Hugging Face transformers for a model folder, for cllm's tests.

    make_reference.py FOLDER OUT_DIR [--prompts FILE] [--gguf-file NAME]
                      [--synth-shape S --synth-dtype D --synth-seed N [--synth-shards K]]

Loads FOLDER with transformers (float32 weights, eager attention, CPU, one thread, seed 0,
deterministic algorithms) and writes OUT_DIR/reference.json: for each prompt of the prompt set
(default: prompts.json next to this script)

- `prompt_ids`: `tokenizer(text)["input_ids"]` (the post-processor's BOS, if any, included);
- `chat_ids`: the ids of the chat template applied to one user message with the generation
  prompt, or null where the tokenizer has no chat template;
- `continuation`: 32 tokens of greedy generation (`generate(do_sample=False)`, no EOS stop);
- for every position of prompt + continuation, from one forward pass over the whole sequence:
  `top_ids` / `top_logits` (the 5 largest logits, ties broken by the smaller id) and `gaps`
  (top-1 logit minus top-2 logit, in float32). Position i's logits predict token i + 1.

Also recorded: the torch and transformers versions, the folder's `model_type`, the SHA-256 of
every weight file read (`files`) and of the config and tokenizer files (`config_files`), and
(with --synth-*) the `cllm synth` command that made FOLDER, so a test can rebuild exactly that
folder. Floats are the shortest decimal that reads back as the same float32, keys are sorted and
the layout is fixed, so a rerun on the same machine reproduces the file byte for byte (another
CPU may differ in the last bits of a logit).

With --gguf-file NAME, the model and tokenizer are loaded through transformers' own GGUF
conversion (`from_pretrained(FOLDER, gguf_file=NAME)`).

Needs torch and transformers (not part of the repository; CI has no PyTorch). On a GPU machine it
still runs on the CPU in float32, for the same figures.
"""

import argparse
import hashlib
import json
import math
import os
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEW_TOKENS = 32
TOP_K = 5
# A top-1/top-2 gap below this is a tie within float32 noise (recorded, for the tests to see).
TIE_GAP = 1e-4


def f32_text(x):
    """The shortest decimal that reads back as float32 `x`, as Python writes the float."""
    x = struct.unpack("<f", struct.pack("<f", float(x)))[0]
    if not math.isfinite(x):
        raise ValueError(f"non-finite logit {x}")
    for digits in range(1, 10):
        s = f"{x:.{digits}g}"
        if struct.unpack("<f", struct.pack("<f", float(s)))[0] == x:
            return repr(float(s))
    raise AssertionError(x)


class F32(float):
    """A float that `emit` writes as float32."""


def emit(value, indent=0):
    """Stable JSON: sorted keys, two-space indent, lists of scalars on one line."""
    pad = "  " * indent
    inner = "  " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [
            f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {emit(value[k], indent + 1)}"
            for k in sorted(value)
        ]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in value):
            return "[" + ", ".join(emit(v, indent + 1) for v in value) + "]"
        return "[\n" + ",\n".join(inner + emit(v, indent + 1) for v in value) + "\n" + pad + "]"
    if isinstance(value, F32):
        return f32_text(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value)}")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weight_files(folder, gguf_file):
    """The files transformers reads weights from: the GGUF, or the safetensors (index's shards)."""
    if gguf_file:
        return [gguf_file]
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        sys.exit(f"{folder}: no safetensors files")
    return files


# The folder's other files that shape the figures (config, tokenizer), hashed where present.
CONFIG_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
]


def ids_of(encoded):
    """input_ids from what apply_chat_template returns (a BatchEncoding in transformers 5)."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    ids = list(encoded)
    if ids and isinstance(ids[0], (list, tuple)):
        assert len(ids) == 1
        ids = list(ids[0])
    return [int(i) for i in ids]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="a Hugging Face model folder")
    ap.add_argument("out_dir", type=Path, help="where reference.json goes")
    ap.add_argument("--prompts", type=Path, default=HERE / "prompts.json")
    ap.add_argument("--gguf-file", help="load FOLDER/NAME through transformers' GGUF conversion")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--synth-shape", help="FOLDER is `cllm synth --shape S`: recorded")
    ap.add_argument("--synth-dtype")
    ap.add_argument("--synth-seed", type=int)
    ap.add_argument("--synth-shards", type=int, default=0)
    args = ap.parse_args()
    synth = (args.synth_shape, args.synth_dtype, args.synth_seed)
    if any(v is not None for v in synth) and any(v is None for v in synth):
        ap.error("--synth-shape, --synth-dtype and --synth-seed go together")

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)

    folder = args.folder
    extra = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager", device_map=None, **extra
    ).to("cpu")
    model.eval()
    tok = AutoTokenizer.from_pretrained(folder, **extra)
    if args.gguf_file:
        model_type = model.config.model_type
    else:
        model_type = json.loads((folder / "config.json").read_text())["model_type"]

    prompts = json.loads(args.prompts.read_text())["prompts"]
    records = []
    for p in prompts:
        text = p["text"]
        prompt_ids = [int(i) for i in tok(text)["input_ids"]]
        chat_ids = None
        if getattr(tok, "chat_template", None):
            chat_ids = ids_of(
                tok.apply_chat_template(
                    [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
                )
            )
        with torch.no_grad():
            inp = torch.tensor([prompt_ids], dtype=torch.long)
            out = model.generate(
                inp,
                attention_mask=torch.ones_like(inp),
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                eos_token_id=None,
                pad_token_id=0,
            )
            continuation = [int(i) for i in out[0, len(prompt_ids):].tolist()]
            if len(continuation) != NEW_TOKENS:
                sys.exit(f"{p['name']}: generate gave {len(continuation)} tokens, not {NEW_TOKENS}")
            full = torch.tensor([prompt_ids + continuation], dtype=torch.long)
            logits = model(input_ids=full).logits[0].to(torch.float32).numpy()

        top_ids, top_logits, gaps = [], [], []
        for row in logits:
            order = np.argsort(-row, kind="stable")[:TOP_K]  # ties: the smaller id first
            vals = row[order]
            top_ids.append([int(i) for i in order])
            top_logits.append([F32(v) for v in vals])
            gaps.append(F32(np.float32(vals[0]) - np.float32(vals[1])))

        # generate (cached decode) and the one full pass must agree on every greedy choice but
        # ties: the test reads the full pass's figures as what generate saw.
        n = len(prompt_ids)
        for step, t in enumerate(continuation):
            pos = n - 1 + step
            if t != top_ids[pos][0] and gaps[pos] >= TIE_GAP:
                sys.exit(
                    f"{p['name']}: generate chose {t} at step {step}, the full pass's argmax is "
                    f"{top_ids[pos][0]} (gap {float(gaps[pos])})"
                )
        records.append(
            {
                "name": p["name"],
                "text": text,
                "prompt_ids": prompt_ids,
                "chat_ids": chat_ids,
                "continuation": continuation,
                "top_ids": top_ids,
                "top_logits": top_logits,
                "gaps": gaps,
                "near_ties": [
                    s for s in range(NEW_TOKENS) if gaps[n - 1 + s] < TIE_GAP
                ],
            }
        )

    doc = {
        "_about": (
            "Figures from Hugging Face transformers (scripts/reference/make_reference.py): per "
            "prompt, its token ids, chat-template ids, 32 greedy tokens (no EOS stop), and at "
            "every position of prompt + continuation (one forward pass) the top-5 ids and "
            "logits and the top-1 minus top-2 gap; near_ties lists the continuation steps whose "
            "gap is below 1e-4. Position i's logits predict token i + 1."
        ),
        "generator": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "dtype": "float32",
            "attn_implementation": "eager",
            "device": "cpu",
            "threads": args.threads,
            "seed": 0,
        },
        "model_type": model_type,
        "files": {name: sha256_file(folder / name) for name in weight_files(folder, args.gguf_file)},
        "config_files": {
            name: sha256_file(folder / name) for name in CONFIG_FILES if (folder / name).is_file()
        },
        "gguf_file": args.gguf_file,
        "new_tokens": NEW_TOKENS,
        "top_k": TOP_K,
        "prompts": records,
    }
    if args.synth_shape:
        doc["synth"] = {
            "shape": args.synth_shape,
            "dtype": args.synth_dtype,
            "seed": args.synth_seed,
            "shards": args.synth_shards,
            "command": (
                f"cllm synth --shape {args.synth_shape} --dtype {args.synth_dtype} "
                f"--seed {args.synth_seed} --shards {args.synth_shards} -o FOLDER"
            ),
        }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "reference.json"
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.write(emit(doc) + "\n")
    ties = sum(len(r["near_ties"]) for r in records)
    print(f"wrote {out} ({len(records)} prompts, {ties} near-tie steps)", file=sys.stderr)


if __name__ == "__main__":
    main()
