#!/usr/bin/env python3
"""Reads a GGUF file with llama.cpp's own Python package (PyPI `gguf`) and prints, as JSON, what
`cllm export --to gguf` is checked against:

    {"version": 3, "alignment": 32,
     "metadata": {key: value},   # scalars as they are; arrays as {"len": n, "head": [...]}
     "tensors": [{"name", "type", "shape" (row-major), "offset", "sha256"}]}

`sha256` is the hash of the tensor's values dequantized by `gguf.quants.dequantize` (float32,
little-endian, row-major): llama.cpp's reference arithmetic, independent of cllm's code.
`--dump DIR` also writes each tensor's float32 values to DIR/NAME.f32.

Usage: gguf_export_check.py FILE.gguf [--dump DIR] [--full-array KEY ...]
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGUFReader
from gguf.quants import dequantize


def field_value(field, full):
    types = field.types
    if not types:
        return None
    if types[0] == gguf.GGUFValueType.ARRAY:
        items = field.contents()
        if full:
            return items
        return {"len": len(items), "head": items[:8]}
    return field.contents()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--dump")
    ap.add_argument("--full-array", action="append", default=[])
    a = ap.parse_args(argv)

    r = GGUFReader(a.file)
    md = {}
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        md[name] = field_value(field, name in a.full_array)
    version = int(r.fields["GGUF.version"].parts[-1][0])
    tensors = []
    if a.dump:
        os.makedirs(a.dump, exist_ok=True)
    for t in r.tensors:
        values = dequantize(t.data, t.tensor_type).astype("<f4", copy=False)
        shape = [int(d) for d in reversed(t.shape.tolist())]
        if int(np.prod(shape)) != values.size:
            raise SystemExit(f"{t.name}: {values.size} values for shape {shape}")
        raw = np.ascontiguousarray(values).tobytes()
        tensors.append({
            "name": t.name,
            "type": t.tensor_type.name,
            "shape": shape,
            "offset": int(t.data_offset),
            "sha256": hashlib.sha256(raw).hexdigest(),
        })
        if a.dump:
            with open(os.path.join(a.dump, t.name + ".f32"), "wb") as f:
                f.write(raw)
    out = {
        "version": version,
        "alignment": int(r.alignment),
        "metadata": md,
        "tensors": tensors,
    }
    json.dump(out, sys.stdout, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    print()


if __name__ == "__main__":
    main()
