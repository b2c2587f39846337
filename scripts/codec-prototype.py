#!/usr/bin/env python3
"""Measure a 4-bit codec design before building it.

Writes a copy of a Hugging Face folder whose projection weights (`*proj.weight`, bf16, widths
divisible by 64) are replaced by their dequantization under a candidate codec, rounded back to
bf16, so that `cllm diff HF OUT --run` measures the design's damage with the real runtime:

    scripts/codec-prototype.py HF OUT int4-g64      # cllm's int4 (reproduces its KLD)
    scripts/codec-prototype.py HF OUT sb6-g32       # super-blocks: see below
    cllm diff HF OUT --run --no-builtin-prompts --eval-text runtime/src/divergence/eval_text.md \
        --window-tokens 128 --eval-windows 47 --json

Designs (NAME-gG, group size G):
- `int4`: each group's min and (max - min) / 15, as f16 (cllm's int4).
- `int4m`: int4m's search (least-squares fits over 21 candidate steps), in numpy's f64.
- `sbB`, `sbBm`: groups' scales and minimums (min/max, or searched with `m`) quantized to B-bit
  codes against f16 factors per super-block of 8 groups (`d = max scale / (2^B - 1)`, likewise
  for the minimums' magnitudes), then the codes recomputed with the quantized parameters; the
  layout of llama.cpp's K-quants. Bits per weight: 4 + (2 B * 8 + 32) / (8 G).

Prints the design and its bits per weight. The extra bf16 rounding of the dequantized values is
far below any 4-bit codec's error (cllm int4 g64 on SmolLM2-135M: 0.2788 here, 0.278 packed).
Needs numpy only.
"""
import json
import os
import shutil
import struct
import sys

import numpy as np


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x):
    b = x.astype(np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def f16(x):
    return x.astype(np.float16).astype(np.float32)


def codes(groups, s, m):
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s[..., None] > 0, np.rint((groups - m[..., None]) / s[..., None]), 0)
    return np.clip(q, 0, 15)


def dequantize(q, s, m):
    return (q * s[..., None] + m[..., None]).astype(np.float32)


def minmax(groups):
    mn, mx = groups.min(-1), groups.max(-1)
    return (mx - mn) / 15.0, mn


def searched(groups, steps=21):
    mn, mx = groups.min(-1), groups.max(-1)
    rng = mx - mn
    best_s, best_m = minmax(groups)
    n = groups.shape[-1]

    def err(s, m):
        d = dequantize(codes(groups, s, m), s, m) - groups
        return (d * d).sum(-1)

    best_e = err(best_s, best_m)
    for k in range(steps):
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(rng > 0, (14 + k / 10) / rng, 0)
        q = np.clip(np.rint((groups - mn[..., None]) * inv[..., None]), 0, 15)
        sl, sl2 = q.sum(-1), (q * q).sum(-1)
        slx, sx = (q * groups).sum(-1), groups.sum(-1)
        det = n * sl2 - sl * sl
        ok = det > 0
        s = np.maximum(np.where(ok, (n * slx - sl * sx) / np.where(ok, det, 1), 0), 0)
        m = np.where(ok, (sl2 * sx - sl * slx) / np.where(ok, det, 1), sx / n)
        e = err(s, m)
        better = e < best_e
        best_s = np.where(better, s, best_s)
        best_m = np.where(better, m, best_m)
        best_e = np.where(better, e, best_e)
    return best_s, best_m


def superblocks(s, m, per_block, bits):
    top = (1 << bits) - 1
    out_s, out_m = np.empty_like(s), np.empty_like(m)
    for b0 in range(0, s.shape[1], per_block):
        ss, neg = s[:, b0 : b0 + per_block], np.maximum(-m[:, b0 : b0 + per_block], 0)
        d, dmin = f16(ss.max(-1) / top), f16(neg.max(-1) / top)
        with np.errstate(divide="ignore", invalid="ignore"):
            sc = np.where(d[:, None] > 0, np.clip(np.rint(ss / d[:, None]), 0, top), 0)
            mc = np.where(dmin[:, None] > 0, np.clip(np.rint(neg / dmin[:, None]), 0, top), 0)
        out_s[:, b0 : b0 + per_block] = d[:, None] * sc
        out_m[:, b0 : b0 + per_block] = -(dmin[:, None] * mc)
    return out_s, out_m


def design(w, name):
    kind, g = name.rsplit("-g", 1)
    g = int(g)
    groups = w.reshape(w.shape[0], -1, g)
    if kind == "int4":
        s, m = minmax(groups)
        s, m = f16(s), f16(m)
        bpw = 4 + 32 / g
    elif kind == "int4m":
        s, m = searched(groups)
        s, m = f16(s), f16(m)
        bpw = 4 + 32 / g
    elif kind.startswith("sb"):
        bits = int(kind[2:].rstrip("m"))
        s, m = searched(groups) if kind.endswith("m") else minmax(groups)
        s, m = superblocks(s, m, 8, bits)
        bpw = 4 + (2 * bits * 8 + 32) / (8 * g)
    else:
        sys.exit(f"codec-prototype: unknown design {name}")
    return dequantize(codes(groups, s, m), s, m).reshape(w.shape), bpw


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, dst, name = sys.argv[1:]
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        if f != "model.safetensors":
            shutil.copy(os.path.join(src, f), dst)
    raw = open(os.path.join(src, "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    out, base = bytearray(raw), 8 + n
    weights = bits = 0
    for key, v in header.items():
        if key == "__metadata__" or not key.endswith("proj.weight") or v["dtype"] != "BF16":
            continue
        a, e = v["data_offsets"]
        w = bf16_to_f32(np.frombuffer(raw, np.uint16, (e - a) // 2, base + a)).reshape(v["shape"])
        if w.ndim != 2 or w.shape[1] % 64:
            continue
        d, bpw = design(w, name)
        out[base + a : base + e] = f32_to_bf16(d.ravel()).tobytes()
        weights += w.size
        bits += w.size * bpw
    open(os.path.join(dst, "model.safetensors"), "wb").write(out)
    print(f"{name}: {weights} weights, {bits / max(weights, 1):.3f} bits per weight")


if __name__ == "__main__":
    main()
