#!/usr/bin/env python3
"""The Python package's transformers path, end to end: a model whose weights come from
``cllm.open(container)`` (``to_transformers`` -> ``load_state_dict``, no folder written) gives the
same logits as transformers' ``from_pretrained`` on the unpacked folder.

Needs the `cllm` wheel installed (it brings the `cllm` command), torch and transformers; no
network, no cargo. Two ways to run it:

    # Self-contained: synthesize each family's tiny model with `cllm synth`, pack it lossless,
    # int8 (all-linear, a scale per 64 columns), int8-row and int4, and check each container.
    python scripts/python_state_dict_check.py --device cuda

    # Given containers (a lossless one with its source folder, say):
    python scripts/python_state_dict_check.py --device cuda m.cllm --source ./model

For each container: `cllm unpack` writes the reference folder, transformers loads it with
``from_pretrained``, and the container is loaded with ``cllm.open(c).to_transformers(...)``;
both run the same prompt in the same dtype on the same device and the logits must be equal bit
for bit (quantized containers: equal to the unpacked folder's, which holds the dequantized
weights). With ``--source`` (lossless containers), the source folder's logits must be equal too.
Exits 0 when every check holds, 1 otherwise.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

# Deterministic cuBLAS: the same inputs give the same bits run to run.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402
import transformers  # noqa: E402

import cllm  # noqa: E402

SHAPES = ["tiny", "tiny-tied", "tiny-qwen2", "tiny-mistral", "tiny-qwen3", "tiny-gemma3", "tiny-phi3"]
PACKS = {
    "lossless": [],
    "int8": ["--policy", "all-linear", "--quant", "int8", "--group-size", "64"],
    "int8-row": ["--policy", "mlp-only", "--quant", "int8-row"],
    "int4": ["--policy", "all-linear", "--quant", "int4", "--group-size", "32"],
}


def run(*args):
    """The wheel's `cllm` command, as `python -m cllm` (works where pip put the console script off
    PATH, as `pip install --target` does)."""
    subprocess.run([sys.executable, "-m", "cllm", *args], check=True, stdout=subprocess.DEVNULL)


def prompt_ids(config, n=24):
    """A fixed prompt of n ids spread over the vocabulary."""
    vocab = config["vocab_size"]
    return torch.tensor([[(7 + 131 * i) % vocab for i in range(n)]], dtype=torch.long)


def logits(model, ids, device):
    with torch.no_grad():
        return model(input_ids=ids.to(device)).logits.float().cpu()


def compare(name, a, b):
    if torch.equal(a, b):
        print(f"  ok    {name}: logits bit-identical {tuple(a.shape)}")
        return True
    diff = (a - b).abs().max().item()
    print(f"  FAIL  {name}: logits differ, max abs {diff:.3e}")
    return False


def check_container(path, source, args, tmp):
    m = cllm.open(path)
    r = m.verify()
    if not r.ok:
        print(f"FAIL {path}: verify: {r.failures[:3]}")
        return False
    codecs = sorted({t.codec for t in m.tensors.values()})
    print(f"{path}: {len(m)} tensors, codecs {codecs}, policy {m.policy.get('preset')}")
    dtype = getattr(torch, args.dtype)
    kw = {"dtype": dtype, "attn_implementation": args.attn}
    unpacked = os.path.join(tmp, os.path.basename(path) + ".unpacked")
    if not os.path.isdir(unpacked):
        run("unpack", path, "-o", unpacked, "-q")
    ids = prompt_ids(m.config)

    t0 = time.time()
    ref = transformers.AutoModelForCausalLM.from_pretrained(unpacked, **kw).to(args.device).eval()
    t1 = time.time()
    want = logits(ref, ids, args.device)
    del ref
    t2 = time.time()
    mine = m.to_transformers(device=args.device, **kw)
    t3 = time.time()
    got = logits(mine, ids, args.device)
    del mine
    print(f"  load: from_pretrained(unpacked) {t1 - t0:.2f} s, cllm to_transformers {t3 - t2:.2f} s")
    ok = compare("cllm.open(...).to_transformers vs from_pretrained(unpacked)", got, want)

    # The state_dict route into a model the caller made.
    config = transformers.AutoConfig.from_pretrained(unpacked)
    model = transformers.AutoModelForCausalLM.from_config(config, **kw).to(args.device).eval()
    missing, unexpected = m.load_state_dict(model)
    ok &= compare("from_config + cllm load_state_dict", logits(model, ids, args.device), want)
    del model

    if source:
        src = transformers.AutoModelForCausalLM.from_pretrained(source, **kw).to(args.device).eval()
        want_src = logits(src, ids, args.device)
        del src
        lossless = all(t.lossless for t in m.tensors.values())
        if lossless:
            ok &= compare("lossless container vs from_pretrained(source)", got, want_src)
        else:
            d = (got - want_src).abs().max().item()
            print(f"  info  quantized vs source: max abs logit difference {d:.3e}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("containers", nargs="*", help=".cllm containers (default: synthesize and pack)")
    ap.add_argument("--source", help="the folder the (lossless) containers were packed from")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", help="the models' dtype (float32, bfloat16)")
    ap.add_argument("--attn", default="eager", help="attn_implementation for both models")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="synthetic shapes to check")
    ap.add_argument("--keep", help="keep the work folder here")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True, warn_only=True)
    print(
        f"cllm {cllm.__version__}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, device {args.device}, dtype {args.dtype}, attn {args.attn}"
    )
    tmp = args.keep or tempfile.mkdtemp(prefix="cllm-sd-")
    os.makedirs(tmp, exist_ok=True)
    results = []
    try:
        if args.containers:
            for c in args.containers:
                results.append((c, check_container(c, args.source, args, tmp)))
        else:
            for shape in args.shapes.split(","):
                src = os.path.join(tmp, shape)
                if not os.path.isdir(src):
                    run("synth", "--shape", shape, "-o", src)
                for kind, flags in PACKS.items():
                    c = os.path.join(tmp, f"{shape}-{kind}.cllm")
                    if not os.path.exists(c):
                        run("pack", src, "-o", c, "-q", *flags)
                    results.append((c, check_container(c, src, args, tmp)))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    failed = [c for c, ok in results if not ok]
    print(json.dumps({"checked": len(results), "failed": [os.path.basename(c) for c in failed]}))
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
