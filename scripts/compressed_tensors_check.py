#!/usr/bin/env python3
"""The proof of `cllm export --to compressed-tensors`: the compressed-tensors package's own
decompression of the exported folder gives cllm's dequantized weights, bit for bit.

    compressed_tensors_check.py EXPORT_DIR REFERENCE_DIR

EXPORT_DIR    the folder `cllm export m.cllm --to compressed-tensors -o EXPORT_DIR` wrote.
REFERENCE_DIR the folder `cllm unpack m.cllm -o REFERENCE_DIR` wrote: every tensor in its source
              dtype, quantized ones dequantized by cllm (x' = f32(q) * scale, or f32(q) * s + min
              for int4, in f32, then rounded to the source dtype, nearest even).

The export is decompressed with `compressed_tensors`'
`entrypoints.convert.converters.CompressedTensorsDequantizer` (the package's model-free
dequantizer: `BaseCompressor.get_value_from_registry("pack-quantized").decompress`, i.e.
`unpack_from_int32` then `dequantize`), asked for float32 output. Its values are compared with
the reference at the reference's dtype, by their bits:

- source f32 models: the decompressed f32 values must equal cllm's f32 dequantization exactly
  (the strongest form: nothing is rounded after the dequantization itself);
- source bf16/f16 models: the decompressed f32 values, rounded to that dtype by torch (nearest
  even, as cllm rounds), must equal cllm's values; the script also reports whether the f32
  values were already representable.

Lossless tensors must be byte-identical. Every tensor of the reference must be in the export
and nothing else. Exit status 0 when all hold, 1 on any difference, 2 on a usage error.
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file


def shard_files(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    return sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))


def load_folder(folder):
    out = {}
    for name in shard_files(folder):
        out.update(load_file(os.path.join(folder, name)))
    return out


def bits(t):
    """The tensor's bits as an integer tensor of the same width (for exact comparison)."""
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(width)


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    export_dir, ref_dir = argv[1], argv[2]
    import compressed_tensors
    from compressed_tensors.entrypoints.convert.converters import (
        CompressedTensorsDequantizer,
    )

    with open(os.path.join(export_dir, "config.json")) as f:
        qc = json.load(f).get("quantization_config")
    if qc is None:
        print(f"{export_dir}: config.json has no quantization_config", file=sys.stderr)
        return 2
    scheme_of = {}
    for g in qc["config_groups"].values():
        w = g["weights"]
        label = "int%d-%s%s" % (
            w["num_bits"],
            "row" if w["strategy"] == "channel" else "g%d" % w["group_size"],
            "" if w["symmetric"] else "-zp",
        )
        for t in g["targets"]:
            scheme_of[t] = label

    deq = CompressedTensorsDequantizer(export_dir, dtype=torch.float32)
    # Shards are decompressed one at a time: the exporter keeps a module's parameters together.
    got = {}
    for name in shard_files(export_dir):
        tensors = load_file(os.path.join(export_dir, name))
        got.update(deq.process(tensors))
    leftovers = [n for n in got if n.rsplit(".", 1)[-1].startswith("weight_")]
    ref = load_folder(ref_dir)

    print(
        f"compressed-tensors {compressed_tensors.__version__}, torch {torch.__version__}: "
        f"{export_dir} against {ref_dir}"
    )
    print(f"{'tensor':<48} {'export':>12} {'compared as':>12} {'f32 exact':>9}  result")
    failures = []
    for n in leftovers:
        failures.append(f"{n}: a compressed parameter the decompression left over")
        print(f"{n:<48} {'?':>12} {'':>12} {'':>9}  NOT DECOMPRESSED")
    counts = {}
    for name in sorted(set(ref) | set(got)):
        if name not in got or name not in ref:
            where = "export" if name not in got else "reference"
            failures.append(f"{name}: missing from the {where}")
            print(f"{name:<48} {'':>12} {'':>12} {'':>9}  MISSING from the {where}")
            continue
        r, g = ref[name], got[name]
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        kind = scheme_of.get(module, "lossless")
        f32_exact = ""
        if kind == "lossless":
            same = r.dtype == g.dtype and r.shape == g.shape and torch.equal(bits(r), bits(g))
            as_dtype = str(r.dtype).replace("torch.", "")
        else:
            if g.dtype != torch.float32:
                failures.append(f"{name}: decompressed to {g.dtype}, not float32")
            cast = g.to(r.dtype)
            same = r.shape == g.shape and torch.equal(bits(cast), bits(r))
            as_dtype = str(r.dtype).replace("torch.", "")
            if r.dtype != torch.float32:
                f32_exact = "yes" if torch.equal(bits(cast.to(torch.float32)), bits(g)) else "no"
            else:
                f32_exact = "yes" if same else "no"
        counts[kind] = counts.get(kind, 0) + 1
        if same:
            result = "identical"
        else:
            if r.shape != g.shape:
                result = f"DIFFERENT shape {tuple(g.shape)} vs {tuple(r.shape)}"
            else:
                a = g.to(torch.float64) if g.is_floating_point() else g.to(torch.float64)
                b = r.to(torch.float64) if r.is_floating_point() else r.to(torch.float64)
                k = int((bits(g.to(r.dtype)) != bits(r)).sum()) if g.is_floating_point() else -1
                result = f"DIFFERENT ({k} elements; max |diff| {float((a - b).abs().max()):.3e})"
            failures.append(f"{name} ({kind}): {result}")
        print(f"{name:<48} {kind:>12} {as_dtype:>12} {f32_exact:>9}  {result}")

    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    if failures:
        print(f"FAILED: {len(failures)} problem(s) over {sum(counts.values())} tensors ({summary})")
        for f in failures[:20]:
            print(f"  {f}")
        return 1
    print(f"OK: all {sum(counts.values())} tensors bit-identical ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
