#!/usr/bin/env python3
"""Writes the shard set of a Llama-shaped model of any size as sparse files, for timing how fast
a set's indexes open (BENCHMARKS.md, "Bounded memory"): every shard's preamble, index (with its
set record, section 6.2) and footer are real, the frames are holes that take no disk. Opening and
`cllm inspect` read only the indexes, so they work on it; `cllm verify` does not (the frames'
checksums are not those of the holes' zeros).

    scripts/sparse-set.py OUT_DIR [--layers 126 --hidden 16384 --ffn 53248 --heads 128
                                   --kv-heads 8 --vocab 128256] [--max-shard-size 50e9]

The defaults are Llama 3.1 405B's shape; linear layers are int4 in groups of 128, the rest
zstd-bp, with stored sizes of a typical pack (int4 codes 0.9 of their bytes, bf16 planes 0.66).
"""

import argparse
import json
import os
import sys

import xxhash

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "spec"))
import cllm_reader  # noqa: E402  (manifest_text, the set id rule)

FRAME = 2 << 20
ALIGN = 64


def align(x):
    return (x + ALIGN - 1) // ALIGN * ALIGN


def tensors(a):
    """(name, shape, codec) of a Llama model, sorted by name as an index lists them."""
    h, f, hd = a.hidden, a.ffn, a.hidden // a.heads
    out = [("model.embed_tokens.weight", [a.vocab, h], "zstd-bp"),
           ("lm_head.weight", [a.vocab, h], "int4"),
           ("model.norm.weight", [h], "zstd-bp")]
    for i in range(a.layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", [h], "zstd-bp"),
                (p + "post_attention_layernorm.weight", [h], "zstd-bp"),
                (p + "self_attn.q_proj.weight", [a.heads * hd, h], "int4"),
                (p + "self_attn.k_proj.weight", [a.kv_heads * hd, h], "int4"),
                (p + "self_attn.v_proj.weight", [a.kv_heads * hd, h], "int4"),
                (p + "self_attn.o_proj.weight", [h, a.heads * hd], "int4"),
                (p + "mlp.gate_proj.weight", [f, h], "int4"),
                (p + "mlp.up_proj.weight", [f, h], "int4"),
                (p + "mlp.down_proj.weight", [h, f], "int4")]
    return sorted(out, key=lambda t: t[0].encode())


def fake_hash(*parts):
    return xxhash.xxh3_128_hexdigest("/".join(map(str, parts)).encode())


class Shard:
    def __init__(self):
        self.pos, self.tensors = 64, []

    def stream(self, owner, role, length, ratio):
        frames = []
        for k in range(0, length, FRAME):
            dec = min(FRAME, length - k)
            stored = max(1, int(dec * ratio))
            frames.append({"offset": self.pos, "stored": stored, "decoded": dec,
                           "xxh3": fake_hash(owner, role, k)[:16]})
            self.pos = align(self.pos + stored)
        return {"role": role, "len": length, "xxh3": fake_hash(owner, role), "frames": frames}

    def add(self, name, shape, codec):
        n = 1
        for d in shape:
            n *= d
        if codec == "int4":
            groups = n // 128
            streams = [self.stream(name, "data", n // 2, 0.9),
                       self.stream(name, "scales", groups * 2, 0.8),
                       self.stream(name, "mins", groups * 2, 0.8)]
            entry = {"name": name, "dtype": "bf16", "shape": shape, "codec": "int4",
                     "group_size": 128, "source_xxh3": fake_hash(name), "streams": streams}
        else:
            streams = [self.stream(name, "data", n * 2, 0.66)]
            entry = {"name": name, "dtype": "bf16", "shape": shape, "codec": "zstd-bp",
                     "source_xxh3": streams[0]["xxh3"], "streams": streams}
        self.tensors.append(entry)


def digest(index):
    lines = []
    for t in index["tensors"]:
        lines.append("\t".join([t["name"], t["codec"], str(t.get("group_size") or 0), t["dtype"],
                                ",".join(map(str, t["shape"])), t["source_xxh3"],
                                ",".join(s["xxh3"] for s in t["streams"])]) + "\n")
    for f in index["files"]:
        lines.append(f"file\t{f['name']}\t{f['xxh3']}\n")
    return xxhash.xxh3_128_hexdigest("".join(lines).encode())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=126)
    ap.add_argument("--hidden", type=int, default=16384)
    ap.add_argument("--ffn", type=int, default=53248)
    ap.add_argument("--heads", type=int, default=128)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--max-shard-size", type=float, default=50e9)
    ap.add_argument("--name", default="m")
    a = ap.parse_args()
    limit = int(a.max_shard_size) - (8 << 20)  # room for the index and the config frame
    shards = [Shard()]
    for name, shape, codec in tensors(a):
        probe = Shard()
        probe.add(name, shape, codec)
        if shards[-1].tensors and shards[-1].pos + probe.pos > limit:
            shards.append(Shard())
        shards[-1].add(name, shape, codec)
    config = json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                         "hidden_size": a.hidden, "intermediate_size": a.ffn,
                         "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
                         "num_key_value_heads": a.kv_heads, "vocab_size": a.vocab,
                         "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                         "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}).encode()
    import zstandard
    cfg_frame = zstandard.ZstdCompressor().compress(config)
    indexes = []
    for sh in shards:
        off = sh.pos
        sh.pos = align(off + len(cfg_frame))
        files = [{"name": "config.json", "len": len(config),
                  "xxh3": xxhash.xxh3_128_hexdigest(config),
                  "frames": [{"offset": off, "stored": len(cfg_frame), "decoded": len(config),
                              "xxh3": xxhash.xxh3_64_hexdigest(cfg_frame)}]}]
        indexes.append(({"format": "cllm", "version": [1, 2], "alignment": 64,
                         "tensors": sh.tensors, "files": files,
                         "policy": {"preset": "all-linear", "quant": "int4", "group_size": 128},
                         "provenance": {"tool": "scripts/sparse-set.py"}}, off))
    summary = [(len(ix["tensors"]), digest(ix)) for ix, _ in indexes]
    set_id = xxhash.xxh3_128_hexdigest(cllm_reader.manifest_text(summary).encode())
    os.makedirs(a.out, exist_ok=True)
    n = len(shards)
    total = 0
    for k, ((ix, cfg_off), sh) in enumerate(zip(indexes, shards), 1):
        ix["set"] = {"id": set_id, "shard": k, "count": n,
                     "shards": [{"tensors": t, "digest": d} for t, d in summary]}
        body = json.dumps(ix, separators=(",", ":")).encode()
        pre = b"\x89CLM\r\n\x1a\n" + (1).to_bytes(2, "little") + (2).to_bytes(2, "little") + \
            b"\0" * 4
        foot = sh.pos.to_bytes(8, "little") + len(body).to_bytes(8, "little") + \
            xxhash.xxh3_64_intdigest(pre + body).to_bytes(8, "little") + b"CLLMEND\x1a"
        path = os.path.join(a.out, f"{a.name}-{k:05d}-of-{n:05d}.cllm")
        with open(path, "wb") as f:
            f.write(pre)
            f.seek(cfg_off)
            f.write(cfg_frame)
            f.seek(sh.pos)
            f.write(body)
            f.write(foot)
        total += sh.pos + len(body) + 32
    print(f"{n} shards, {total / 1e9:.1f} GB (sparse), "
          f"{sum(len(ix['tensors']) for ix, _ in indexes)} tensors, set {set_id}")


if __name__ == "__main__":
    main()
