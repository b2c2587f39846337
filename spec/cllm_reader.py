#!/usr/bin/env python3
"""An independent reader of `.cllm` containers, written from spec/FORMAT.md alone.

It exists to show that the spec is enough for a stranger, and to cross-check the Rust reader
(tests/tests/python_reader.rs). Python 3.11, numpy and zstandard; `xxhash` is optional: with it,
the footer checksum, every frame's XXH3-64 and every stream's XXH3-128 are checked; without it
those checks are skipped (`Container.checksums` is False and the CLI says so on stderr).

    c = open_container("model.cllm")  # checks preamble, footer, index and frame layout
    c.list_tensors()                  # [TensorInfo(name, dtype, shape, codec, stored_bytes, ...)]
    c.decode_bytes(name)              # lossless: the exact source bytes
    c.decode(name)                    # numpy array of the source dtype (lossless), or float32
                                      # (int8/int4/int8g, dequantized per sections
                                      # 4.2 to 4.4)

bf16 has no numpy dtype: `decode` returns a bf16 tensor as a uint16 array of its bit patterns
(exact); `bf16_to_float32` widens it (exactly). Every problem with a file raises `CllmError`, a
ValueError whose message names the tensor, stream and frame. As a CLI:

    python3 spec/cllm_reader.py FILE [--list] [--dump NAME OUT.bin] [--json] [--verify]

FILE may be a shard of a set (section 6; the other shards are found beside it) or a glob
pattern matching a set's shards.

`--json` prints a JSON list of {name, dtype, shape, codec, stored_bytes, sha256 | dequant_sha256}:
`sha256` of the decoded source bytes for lossless tensors, `dequant_sha256` of the dequantized
float32 values (little-endian, row-major) for int8/int4/int8g. `--dump` writes the same bytes to a file.
`--verify` decodes every tensor and embedded file and checks every padding byte (section 5).
"""

import argparse
import hashlib
import json
import mmap
import re
import sys
from typing import NamedTuple

import numpy as np
import zstandard

try:
    import xxhash
except ImportError:  # checksums are then skipped, and said so
    xxhash = None

MAGIC = b"\x89CLM\r\n\x1a\n"
END_MAGIC = b"CLLMEND\x1a"
MAJOR, MINOR = 1, 4
ALIGN = 64
U64 = 1 << 64
MIN_FILE_LEN = 64 + 2 + 32
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Section 2, the reference reader's defaults.
LIMITS = dict(index_len=256 << 20, tensors=1_000_000, dims=8, name_len=1024,
              frame_decoded=64 << 20, frames=1 << 24, files=64, file_len=256 << 20)
# Section 3.2: dtype -> (size, numpy dtype it decodes to; bf16 as its uint16 bit patterns).
DTYPES = {"bool": (1, "?"), "u8": (1, "u1"), "i8": (1, "i1"), "u16": (2, "<u2"),
          "i16": (2, "<i2"), "f16": (2, "<f2"), "bf16": (2, "<u2"), "u32": (4, "<u4"),
          "i32": (4, "<i4"), "f32": (4, "<f4"), "u64": (8, "<u8"), "i64": (8, "<i8"),
          "f64": (8, "<f8")}
FLOATS = ("bf16", "f16", "f32")
LOSSLESS = ("raw", "zstd", "zstd-bp")
SUPER_BLOCK_GROUPS = 8  # int4s groups per super-block (section 4.6)
FILE_NAME = re.compile(r"[A-Za-z0-9._-]{1,255}")


class CllmError(ValueError):
    """A file that is not a valid `.cllm`, or a request it cannot answer."""


class Frame(NamedTuple):
    offset: int
    stored: int
    decoded: int
    xxh3: int


class Stream(NamedTuple):
    role: str
    encoding: str  # raw, zstd, bp2, bp4
    elem_size: int
    len: int
    xxh3: str
    frames: list


class TensorInfo(NamedTuple):
    name: str
    dtype: str
    shape: tuple
    codec: str
    stored_bytes: int
    group_size: int | None
    source_xxh3: str
    streams: list


def _u64(b, at):
    return int.from_bytes(b[at:at + 8], "little")


def _align(x):
    return (x + ALIGN - 1) // ALIGN * ALIGN


def _no_duplicates(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise CllmError(f"index: member '{k}' appears twice in one object")
        obj[k] = v
    return obj


def _bad_constant(c):
    raise CllmError(f"index: {c} is not JSON (RFC 8259)")


def _finite_float(text):
    v = float(text)
    if v in (float("inf"), float("-inf")):
        raise CllmError(f"index: number {text[:40]} is out of range")
    return v


def _get(obj, key, kind, where):
    """obj[key], checked to be of `kind` ('int' means 0 <= n < 2**64, 'hex16', 'hex32')."""
    if not isinstance(obj, dict):
        raise CllmError(f"{where}: expected a JSON object")
    if key not in obj:
        raise CllmError(f"{where}: member '{key}' is missing")
    v = obj[key]
    if kind == "int":
        ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v < U64
    elif kind in ("hex16", "hex32"):
        ok = isinstance(v, str) and re.fullmatch(f"[0-9a-f]{{{kind[3:]}}}", v) is not None
    else:
        ok = isinstance(v, kind)
    if not ok:
        want = {"int": "u64", "hex16": "16 lowercase hex digits", "hex32": "32 lowercase hex "
                "digits", str: "string", list: "list"}[kind]
        raise CllmError(f"{where}: member '{key}' is {json.dumps(v)[:80]}, not a {want}")
    return v


def codec_streams(where, codec, group_size, dtype, shape):
    """Section 4: [(role, encoding, element size, length)] of a tensor, or CllmError."""
    size = DTYPES[dtype][0]
    numel = 1
    for d in shape:
        numel *= d
        if numel >= U64:
            raise CllmError(f"{where}: shape {list(shape)} overflows 64 bits")
    nbytes = numel * size
    if nbytes >= U64:
        raise CllmError(f"{where}: shape {list(shape)} overflows 64 bits")
    if codec == "raw":
        return [("data", "raw", size, nbytes)]
    if codec == "zstd":
        return [("data", "zstd", size, nbytes)]
    if codec not in ("zstd-bp", "int8", "int8g", "int4", "int4m", "int4s"):
        raise CllmError(f"{where}: unknown codec '{codec}'")
    if dtype not in FLOATS:
        raise CllmError(f"{where}: codec {codec} needs bf16, f16 or f32, not {dtype}")
    if codec == "zstd-bp":
        return [("data", f"bp{size}", size, nbytes)]
    if len(shape) != 2:
        raise CllmError(f"{where}: codec {codec} needs a 2-D tensor, shape is {list(shape)}")
    rows, cols = shape
    if codec == "int8":
        return [("data", "zstd", 1, numel), ("scales", "zstd", 4, rows * 4)]
    if group_size not in (32, 64, 128) or cols % group_size:
        raise CllmError(f"{where}: {codec} group size {group_size} must be 32, 64 or 128 and "
                        f"divide the {cols} columns")
    if codec == "int8g":
        return [("data", "zstd", 1, numel), ("scales", "zstd", 4, rows * (cols // group_size) * 4)]
    if codec == "int4s":
        per_row = cols // group_size
        blocks = rows * -(-per_row // SUPER_BLOCK_GROUPS)
        return [("data", "zstd", 1, numel // 2), ("factors", "zstd", 4, blocks * 4),
                ("subs", "zstd", 1, -(-rows * per_row * 12 // 8))]
    groups = rows * (cols // group_size) * 2
    return [("data", "zstd", 1, numel // 2), ("scales", "zstd", 2, groups),
            ("mins", "zstd", 2, groups)]


def _int4s_group_params(factors, subs, rows, per_row):
    """Section 4.6: every group's f32 scale and minimum, from the super-block factors and the
    12-bit sub-codes."""
    per_block = -(-per_row // SUPER_BLOCK_GROUPS)
    f = np.frombuffer(factors, "<f2").astype(np.float32).reshape(rows, per_block, 2)
    block = np.arange(per_row) // SUPER_BLOCK_GROUPS
    d, dmin = f[:, block, 0], f[:, block, 1]
    bit = np.arange(rows * per_row) * 12
    b = np.frombuffer(bytes(subs) + b"\0", np.uint8).astype(np.uint32)
    word = (b[bit // 8] | (b[bit // 8 + 1] << 8)) >> (bit % 8)
    sc = (word & 63).astype(np.float32).reshape(rows, per_row)
    mc = ((word >> 6) & 63).astype(np.float32).reshape(rows, per_row)
    # One exact f32 product each, rounded to f16 (nearest even), as the format's parameters.
    s = (d * sc).astype(np.float16).astype(np.float32)
    m = (-(dmin * mc)).astype(np.float16).astype(np.float32)
    return s, m


def _zstd_frame_end(buf, where):
    """Walks one zstd frame's header and blocks (RFC 8878 3.1.1); returns where it ends."""
    if len(buf) < 6 or buf[:4] != ZSTD_MAGIC:
        raise CllmError(f"{where}: stored bytes do not start with a zstd frame")
    fhd = buf[4]
    if fhd & 0x08:
        raise CllmError(f"{where}: zstd frame header has its reserved bit set")
    single = (fhd >> 5) & 1
    pos = 5 + (1 - single) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6]
    while True:
        if pos + 3 > len(buf):
            raise CllmError(f"{where}: zstd frame is cut short")
        h = int.from_bytes(buf[pos:pos + 3], "little")
        btype = (h >> 1) & 3
        if btype == 3:
            raise CllmError(f"{where}: zstd block of the reserved type")
        pos += 3 + (1 if btype == 1 else h >> 3)
        if h & 1:
            return pos + 4 * ((fhd >> 2) & 1)


def _zstd_decode(stored, declared, where):
    """Exactly one zstd frame that inflates to exactly `declared` bytes; never more in memory."""
    end = _zstd_frame_end(stored, where)
    if end != len(stored):
        raise CllmError(f"{where}: the stored bytes are not exactly one zstd frame "
                        f"({'it is cut short' if end > len(stored) else 'bytes follow it'})")
    out = bytearray()
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(stored, read_across_frames=False)
        while len(out) <= declared:
            chunk = reader.read(declared + 1 - len(out))
            if not chunk:
                break
            out += chunk
    except zstandard.ZstdError as e:
        raise CllmError(f"{where}: zstd decode failed: {e}") from None
    if len(out) > declared:
        raise CllmError(f"{where}: inflates past its declared {declared} bytes")
    if len(out) < declared:
        raise CllmError(f"{where}: decodes to {len(out)} bytes, the index declares {declared}")
    return bytes(out)


def _join_planes(planes, width):
    """Section 4.1, decoding: planes of the rotated elements back to little-endian elements."""
    p = np.frombuffer(planes, np.uint8).reshape(width, -1)
    if width == 2:
        r = (p[0].astype(np.uint16) << 8) | p[1]
        return ((r >> 1) | (r << 15)).astype("<u2").tobytes()
    r = ((p[0].astype(np.uint32) << 24) | (p[1].astype(np.uint32) << 16)
         | (p[2].astype(np.uint32) << 8) | p[3])
    return ((r >> 1) | (r << 31)).astype("<u4").tobytes()


def bf16_to_float32(bits):
    """bf16 bit patterns (uint16) to float32, exactly."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


class Container:
    """An opened container; use `open_container`. Frames are read from a memory map on demand."""

    def __init__(self, path):
        self.checksums = xxhash is not None
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < MIN_FILE_LEN:
                raise CllmError(f"file is {size} bytes, shorter than the smallest container "
                                f"({MIN_FILE_LEN})")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._check_framing(size)
        self._check_index()

    def close(self):
        self._mm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_framing(self, size):
        """Section 1.2, in the spec's order."""
        mm = self._mm
        pre = mm[:16]
        if pre[:8] != MAGIC:
            raise CllmError(f"not a .cllm file (magic {pre[:8].hex()})")
        major, minor = int.from_bytes(pre[8:10], "little"), int.from_bytes(pre[10:12], "little")
        if major != MAJOR:
            raise CllmError(f"file is version {major}.{minor}, needs a reader of major version "
                            f"{major}; this one reads {MAJOR}.x")
        if pre[12:16] != b"\0\0\0\0":
            raise CllmError(f"preamble reserved field is {pre[12:16].hex()}, not zero")
        foot = mm[size - 32:]
        if foot[24:] != END_MAGIC:
            raise CllmError("no end magic: the file was cut short")
        off, length, checksum = _u64(foot, 0), _u64(foot, 8), _u64(foot, 16)
        if off + length + 32 != size:
            raise CllmError(f"footer says index at {off}, {length} bytes; that does not end "
                            f"the {size}-byte file")
        if off < 64 or off % ALIGN or length < 2:
            raise CllmError(f"index offset {off} (a multiple of 64, at least 64) or length "
                            f"{length} (at least 2) is invalid")
        if length > LIMITS["index_len"]:
            raise CllmError(f"index of {length} bytes exceeds the limit {LIMITS['index_len']}")
        self.version, self.index_offset, self.index_length = (major, minor), off, length
        self._index_bytes = mm[off:off + length]
        if self.checksums and xxhash.xxh3_64_intdigest(pre + self._index_bytes) != checksum:
            raise CllmError("footer checksum does not match the preamble and index (corrupted)")

    def _check_index(self):
        """Section 3: every member the reader uses, and the frame layout of 3.4."""
        try:
            ix = json.loads(self._index_bytes.decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_constant=_bad_constant, parse_float=_finite_float)
            json.dumps(ix, ensure_ascii=False).encode("utf-8")  # no lone surrogate (\ud800)
        except CllmError:
            raise
        except RecursionError:
            raise CllmError("index is nested too deeply") from None
        except UnicodeEncodeError:
            raise CllmError("index is not valid JSON: a string holds a lone UTF-16 surrogate "
                            "escape") from None
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise CllmError(f"index is not valid JSON: {e}") from None
        self.index = ix
        if _get(ix, "format", str, "index") != "cllm":
            raise CllmError(f"index format is '{ix['format']}', not 'cllm'")
        v = _get(ix, "version", list, "index")
        if v != list(self.version) or any(type(x) is not int for x in v):
            raise CllmError(f"index version {v} differs from the preamble's {list(self.version)}")
        if _get(ix, "alignment", "int", "index") != ALIGN:
            raise CllmError(f"index alignment is {ix['alignment']}, not 64")
        tensors = _get(ix, "tensors", list, "index")
        files = _get(ix, "files", list, "index")
        if len(tensors) > LIMITS["tensors"] or len(files) > LIMITS["files"]:
            raise CllmError(f"{len(tensors)} tensors or {len(files)} files exceed the limits")
        self._next = 64  # where the next frame must start (section 3.4)
        self.tensors, prev = {}, None
        for i, t in enumerate(tensors):
            name = _get(t, "name", str, f"tensor #{i}")
            where = f"tensor {name}"
            key = name.encode("utf-8")
            if not 1 <= len(key) <= LIMITS["name_len"]:
                raise CllmError(f"tensor #{i}: name of {len(key)} bytes (1 to 1024 allowed)")
            if prev is not None and prev >= key:
                raise CllmError(f"{where}: duplicate name" if prev == key else
                                f"{where}: tensors are not sorted by name")
            prev = key
            dtype = _get(t, "dtype", str, where)
            if dtype not in DTYPES:
                raise CllmError(f"{where}: unknown dtype '{dtype}'")
            shape = _get(t, "shape", list, where)
            if len(shape) > LIMITS["dims"]:
                raise CllmError(f"{where}: {len(shape)} dimensions exceed the limit of 8")
            if any(type(d) is not int or not 0 <= d < U64 for d in shape):
                raise CllmError(f"{where}: shape {json.dumps(shape)[:80]} is not a list of u64")
            codec = _get(t, "codec", str, where)
            gs = t.get("group_size")
            if codec in ("int4", "int4m", "int4s", "int8g"):
                gs = _get(t, "group_size", "int", where)
            elif gs is not None:
                raise CllmError(f"{where}: group_size on codec {codec} (int4, int4m, int4s and "
                                f"int8g only)")
            if codec == "int8g" and self.version[1] < 1:
                raise CllmError(f"{where}: codec int8g needs format 1.1, the file says "
                                f"1.{self.version[1]}")
            if codec == "int4m" and self.version[1] < 3:
                raise CllmError(f"{where}: codec int4m needs format 1.3, the file says "
                                f"1.{self.version[1]}")
            if codec == "int4s" and self.version[1] < 4:
                raise CllmError(f"{where}: codec int4s needs format 1.4, the file says "
                                f"1.{self.version[1]}")
            specs = codec_streams(where, codec, gs, dtype, shape)
            src = _get(t, "source_xxh3", "hex32", where)
            entries = _get(t, "streams", list, where)
            if len(entries) != len(specs):
                raise CllmError(f"{where}: codec {codec} has {len(specs)} streams, the index "
                                f"lists {len(entries)}")
            streams = [self._check_stream(where, s, *spec) for s, spec in zip(entries, specs)]
            self.tensors[name] = TensorInfo(
                name, dtype, tuple(shape), codec, sum(f.stored for s in streams for f in s.frames),
                gs, src, streams)
        self.files, names = {}, set()
        for i, f in enumerate(files):
            name = _get(f, "name", str, f"file #{i}")
            if not FILE_NAME.fullmatch(name) or name.startswith(".") or name in names:
                raise CllmError(f"file '{name}': not a plain file name, or embedded twice")
            names.add(name)
            if _get(f, "len", "int", f"file {name}") > LIMITS["file_len"]:
                raise CllmError(f"file {name}: larger than the embedded-file limit")
            self.files[name] = self._check_stream(f"file {name}", f, "data", "zstd", 1, f["len"],
                                                  tensor=False)
        if "config.json" not in names:
            raise CllmError("the container embeds no config.json")
        self.set = None
        if "set" in ix:
            self.set = self._check_set(ix["set"])
        if self._next != self.index_offset:
            raise CllmError(f"frames end at {self._next} but the index starts at "
                            f"{self.index_offset}")

    def _check_stream(self, owner, s, role, encoding, elem, length, tensor=True):
        """Sections 3.3 and 3.4 for one stream (or embedded file: no role); returns it parsed."""
        where = f"{owner} stream {role}"
        if tensor and _get(s, "role", str, where) != role:
            raise CllmError(f"{where}: the index names the stream '{s['role']}' there")
        if _get(s, "len", "int", where) != length:
            raise CllmError(f"{where}: len is {s['len']}, dtype and shape make it {length}")
        h = _get(s, "xxh3", "hex32", where)
        entries = _get(s, "frames", list, where)
        if len(entries) > LIMITS["frames"]:
            raise CllmError(f"{where}: {len(entries)} frames exceed the limit")
        frames, total = [], 0
        for i, e in enumerate(entries):
            fw = f"{where} frame {i}"
            f = Frame(*(_get(e, k, "int", fw) for k in ("offset", "stored", "decoded")),
                      int(_get(e, "xxh3", "hex16", fw), 16))
            if not 1 <= f.decoded <= LIMITS["frame_decoded"] or f.decoded % elem:
                raise CllmError(f"{fw}: decoded length {f.decoded} is not 1 to 64 MiB of whole "
                                f"{elem}-byte elements")
            if not 1 <= f.stored <= f.decoded + f.decoded // 128 + 4096:
                raise CllmError(f"{fw}: stored length {f.stored} out of range")
            if encoding == "raw" and f.stored != f.decoded:
                raise CllmError(f"{fw}: a raw frame must store exactly its decoded bytes")
            if f.offset != self._next:
                raise CllmError(f"{fw}: offset {f.offset} is not where the previous frame ends "
                                f"({self._next}): frames overlap, leave gaps or are out of order")
            self._next = _align(f.offset + f.stored)
            total += f.decoded
            frames.append(f)
        if total != length:
            raise CllmError(f"{where}: frames decode to {total} bytes, the stream is {length}")
        return Stream(role, encoding, elem, length, h, frames)

    # -- decoding ---------------------------------------------------------------------------

    def _decode_stream(self, owner, s):
        out = bytearray(s.len)
        at = 0
        for i, f in enumerate(s.frames):
            where = f"{owner} stream {s.role} frame {i} (offset {f.offset})"
            stored = self._mm[f.offset:f.offset + f.stored]
            if self.checksums and xxhash.xxh3_64_intdigest(stored) != f.xxh3:
                raise CllmError(f"{where}: XXH3-64 of the stored bytes does not match (corrupted)")
            if s.encoding == "raw":
                data = stored
            else:
                data = _zstd_decode(stored, f.decoded, where)
                if s.encoding in ("bp2", "bp4"):
                    data = _join_planes(data, s.elem_size)
            out[at:at + f.decoded] = data
            at += f.decoded
        if self.checksums and xxhash.xxh3_128_hexdigest(out) != s.xxh3:
            raise CllmError(f"{owner} stream {s.role}: XXH3-128 of the decoded stream does not "
                            f"match the index (corrupted)")
        return out

    def _tensor(self, name):
        if name not in self.tensors:
            raise CllmError(f"no tensor named '{name}'")
        return self.tensors[name]

    def list_tensors(self):
        """Every tensor in index order: name, dtype, shape, codec, stored bytes and more."""
        return list(self.tensors.values())

    def decode_streams(self, name):
        """Every stream of a tensor, decoded and checked, as bytearrays (role -> bytes)."""
        t = self._tensor(name)
        if t.codec in LOSSLESS and t.source_xxh3 != t.streams[0].xxh3:
            raise CllmError(f"tensor {name}: source_xxh3 differs from the hash of its lossless "
                            f"data stream")
        return {s.role: self._decode_stream(f"tensor {name}", s) for s in t.streams}

    def decode_bytes(self, name):
        """A lossless tensor's exact source bytes (little-endian, row-major)."""
        t = self._tensor(name)
        if t.codec not in LOSSLESS:
            raise CllmError(f"tensor {name} is quantized ({t.codec}): its source bytes are gone; "
                            f"use decode() for its dequantized float32 values")
        return bytes(self.decode_streams(name)["data"])

    def decode(self, name):
        """Lossless: an array of the source dtype (bf16 as uint16 bit patterns). int8/int4/int8g/
        int4m/int4s: the dequantized float32 values of sections 4.2 to 4.6, bit for bit."""
        t = self._tensor(name)
        st = self.decode_streams(name)
        if t.codec in LOSSLESS:
            return np.frombuffer(st["data"], DTYPES[t.dtype][1]).reshape(t.shape)
        with np.errstate(all="ignore"):  # inf - inf etc. from odd scales: values, not errors
            return self._dequantize(t, st)

    @staticmethod
    def _dequantize(t, st):
        rows, cols = t.shape
        if t.codec == "int8":
            q = np.frombuffer(st["data"], np.int8).reshape(rows, cols)
            scales = np.frombuffer(st["scales"], "<f4").reshape(rows, 1)
            return q.astype(np.float32) * scales  # one f32 multiplication
        g = t.group_size
        if t.codec == "int8g":
            q = np.frombuffer(st["data"], np.int8).reshape(rows, cols // g, g)
            scales = np.frombuffer(st["scales"], "<f4").reshape(rows, cols // g, 1)
            return (q.astype(np.float32) * scales).reshape(rows, cols)  # one f32 multiplication
        b = np.frombuffer(st["data"], np.uint8)
        q = np.empty(rows * cols, np.uint8)
        q[0::2], q[1::2] = b & 0x0F, b >> 4
        q = q.reshape(rows, cols // g, g).astype(np.float32)
        if t.codec == "int4s":
            s, m = _int4s_group_params(st["factors"], st["subs"], rows, cols // g)
        else:
            s = np.frombuffer(st["scales"], "<f2").astype(np.float32)
            m = np.frombuffer(st["mins"], "<f2").astype(np.float32)
        s, m = s.reshape(rows, cols // g, 1), m.reshape(rows, cols // g, 1)
        return ((q * s) + m).reshape(rows, cols)  # two f32 operations, each rounded

    def _check_set(self, rec):
        """Section 6.2: one shard's set record against the shard's own index."""
        if self.version[1] < 2:
            raise CllmError(f"a set record needs format 1.2, the file says 1.{self.version[1]}")
        count = _get(rec, "count", "int", "set")
        shard = _get(rec, "shard", "int", "set")
        sid = _get(rec, "id", "hex32", "set")
        shards = _get(rec, "shards", list, "set")
        if not 1 <= count <= MAX_SHARDS or len(shards) != count:
            raise CllmError(f"set declares {count} shards and lists {len(shards)}")
        if not 1 <= shard <= count:
            raise CllmError(f"set: shard position {shard} outside 1..{count}")
        summary = [(_get(e, "tensors", "int", "set shard"), _get(e, "digest", "hex32", "set shard"))
                   for e in shards]
        if self.checksums:
            if xxhash.xxh3_128_hexdigest(manifest_text(summary).encode()) != sid:
                raise CllmError("set: the manifest does not hash to the set id (corrupted)")
            own = shard_digest(self.list_tensors(), self.files)
            if summary[shard - 1] != (len(self.tensors), own):
                raise CllmError(f"shard {shard} of {count}: its tensors and files do not match "
                                f"the set manifest: the shard does not belong to this set")
        return {"id": sid, "shard": shard, "count": count, "shards": summary}

    def read_file(self, name):
        """An embedded file's bytes (section 3.5)."""
        if name not in self.files:
            raise CllmError(f"no embedded file named '{name}'")
        return bytes(self._decode_stream(f"file {name}", self.files[name]))

    def verify(self):
        """Section 5: decodes every tensor and file (checking every hash when xxhash is there) and
        checks that every padding byte is zero."""
        ends, at = [], 64
        for s in [s for t in self.tensors.values() for s in t.streams] + list(self.files.values()):
            for f in s.frames:
                ends.append((at, f.offset))
                at = f.offset + f.stored
        ends.append((at, self.index_offset))
        for a, b in [(16, 64)] + ends:
            if self._mm[a:b].count(0) != b - a:
                raise CllmError(f"padding bytes {a}..{b} are not all zero")
        for name in self.tensors:
            self.decode_streams(name)
        for name in self.files:
            self.read_file(name)

    def payload_bytes(self, name):
        """What --json hashes and --dump writes: source bytes, or dequantized float32 bytes."""
        t = self._tensor(name)
        if t.codec in LOSSLESS:
            return self.decode_bytes(name)
        return self.decode(name).astype("<f4").tobytes()


def manifest_text(summary):
    """Section 6.2: the text whose XXH3-128 is a set's id."""
    return "cllm-set\n" + "".join(f"{n}\t{d}\n" for n, d in summary)


def shard_digest(tensors, files):
    """Section 6.2: XXH3-128 of one line per tensor, then one per embedded file."""
    lines = []
    for t in tensors:
        lines.append("\t".join([t.name, t.codec, str(t.group_size or 0), t.dtype,
                                ",".join(str(d) for d in t.shape), t.source_xxh3,
                                ",".join(s.xxh3 for s in t.streams)]) + "\n")
    for name, f in files.items():
        lines.append(f"file\t{name}\t{f.xxh3}\n")
    return xxhash.xxh3_128_hexdigest("".join(lines).encode("utf-8"))


SHARD_NAME = re.compile(r"(.+)-(\d{5})-of-(\d{5})\.cllm")
MAX_SHARDS = 99_999


class ShardSet:
    """Every shard of a set (section 6), opened and checked to be exactly one complete set. Reads
    like a Container: tensors are found in whichever shard holds them."""

    def __init__(self, shards):
        self.shards = shards
        self.checksums = all(c.checksums for _, c in shards)
        first = shards[0][1]
        self.version, self.index, self.files = first.version, first.index, first.files
        self.set = first.set
        self.tensors, self._where = {}, {}
        for path, c in shards:
            for name, t in c.tensors.items():
                if name in self._where:
                    raise CllmError(f"tensor {name} appears in {self._where[name][0]} and {path}")
                self._where[name] = (path, c)
        for name in sorted(self._where, key=lambda n: n.encode("utf-8")):
            self.tensors[name] = self._where[name][1].tensors[name]

    def close(self):
        for _, c in self.shards:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def list_tensors(self):
        return list(self.tensors.values())

    def _of(self, name):
        if name not in self._where:
            raise CllmError(f"no tensor named '{name}'")
        return self._where[name][1]

    def decode_streams(self, name):
        return self._of(name).decode_streams(name)

    def decode_bytes(self, name):
        return self._of(name).decode_bytes(name)

    def decode(self, name):
        return self._of(name).decode(name)

    def payload_bytes(self, name):
        return self._of(name).payload_bytes(name)

    def read_file(self, name):
        return self.shards[0][1].read_file(name)

    def verify(self):
        for path, c in self.shards:
            try:
                c.verify()
            except CllmError as e:
                raise CllmError(f"{path}: {e}") from None


def _bind(opened, by_name):
    """Section 6.3: the opened shards form exactly one complete set; returns them in order."""
    head = opened[0][1].set
    slots = [None] * head["count"]
    for path, c in opened:
        s = c.set
        if s is None:
            raise CllmError(f"{path}: a single container, not a shard of a set")
        if s["id"] != head["id"] or s["count"] != head["count"]:
            raise CllmError(f"{path}: shard {s['shard']} of {s['count']} of set {s['id']} is not "
                            f"part of set {head['id']} ({opened[0][0]}): a shard from another pack")
        if slots[s["shard"] - 1] is not None:
            raise CllmError(f"{path} and {slots[s['shard'] - 1][0]} both hold shard {s['shard']}")
        slots[s["shard"] - 1] = (path, c)
    missing = [str(k + 1) for k, x in enumerate(slots) if x is None]
    if missing:
        raise CllmError(f"shard(s) {', '.join(missing)} of {head['count']} missing "
                        f"(set {head['id']})")
    if by_name:
        for k, (path, c) in enumerate(opened):
            if c.set["shard"] != k + 1:
                raise CllmError(f"{path}: holds shard {c.set['shard']} of {c.set['count']}, but "
                                f"its name says shard {k + 1}: shards renamed or reordered")
    return slots


def _open_shard(path):
    try:
        return Container(path)
    except CllmError as e:
        raise CllmError(f"{path}: {e}") from None


def open_container(path):
    """Opens and checks a container (sections 1.2, 3 and 3.4) or a shard set (section 6): a set is
    named by any of its shards, or by a glob pattern matching exactly its shards."""
    import glob
    import os
    if any(ch in path for ch in "*?["):
        paths = sorted(glob.glob(path))
        if not paths:
            raise CllmError(f"{path}: no file matches the pattern")
        opened = [(p, _open_shard(p)) for p in paths]
        if len(opened) == 1 and opened[0][1].set is None:
            return opened[0][1]
        return ShardSet(_bind(opened, by_name=False))
    c = Container(path)
    if c.set is None:
        return c
    m = SHARD_NAME.fullmatch(os.path.basename(path))
    if not m:
        raise CllmError(f"{path}: holds shard {c.set['shard']} of {c.set['count']} but is not "
                        f"named NAME-0000K-of-0000N.cllm; open the set by a pattern")
    stem, count, d = m.group(1), c.set["count"], os.path.dirname(path) or "."
    expected = [os.path.join(d, f"{stem}-{k:05d}-of-{count:05d}.cllm")
                for k in range(1, count + 1)]
    for name in os.listdir(d):
        e = SHARD_NAME.fullmatch(name)
        if e and e.group(1) == stem and int(e.group(3)) == count and \
                not 1 <= int(e.group(2)) <= count:
            raise CllmError(f"{os.path.join(d, name)}: an extra shard: the set has {count}")
    opened = []
    for k, p in enumerate(expected):
        if os.path.basename(p) == os.path.basename(path):
            opened.append((p, c))
        elif not os.path.exists(p):
            raise CllmError(f"{p}: shard {k + 1} of {count} is missing (set {c.set['id']})")
        else:
            opened.append((p, _open_shard(p)))
    return ShardSet(_bind(opened, by_name=True))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Read a .cllm container (spec/FORMAT.md).")
    ap.add_argument("file")
    ap.add_argument("--list", action="store_true", help="list tensors (the default)")
    ap.add_argument("--dump", nargs=2, metavar=("NAME", "OUT"),
                    help="write a tensor's source bytes (lossless) or dequantized f32 values")
    ap.add_argument("--verify", action="store_true",
                    help="decode every tensor and file, check every hash and padding byte")
    ap.add_argument("--json", action="store_true",
                    help="decode every tensor; print names, dtypes, shapes, codecs and SHA-256s")
    a = ap.parse_args(argv)
    try:
        with open_container(a.file) as c:
            if not c.checksums:
                print("note: xxhash is not installed: checksums were skipped "
                      "(pip install -r spec/requirements.txt)", file=sys.stderr)
            if a.verify:
                c.verify()
                print(f"{a.file}: ok" + ("" if c.checksums else " (checksums skipped)"))
            if a.list or not (a.json or a.dump or a.verify):
                for t in c.list_tensors():
                    codec = t.codec + (f"/g{t.group_size}" if t.group_size else "")
                    print(f"{t.name}\t{t.dtype}\t{list(t.shape)}\t{codec}\t{t.stored_bytes}")
            if a.dump:
                data = c.payload_bytes(a.dump[0])
                with open(a.dump[1], "wb") as out:
                    out.write(data)
            if a.json:
                rows = []
                for t in c.list_tensors():
                    key = "sha256" if t.codec in LOSSLESS else "dequant_sha256"
                    rows.append({"name": t.name, "dtype": t.dtype, "shape": list(t.shape),
                                 "codec": t.codec, "group_size": t.group_size,
                                 "stored_bytes": t.stored_bytes,
                                 key: hashlib.sha256(c.payload_bytes(t.name)).hexdigest()})
                print(json.dumps(rows, indent=1))
    except (ValueError, OSError, MemoryError) as e:
        print(f"error: {a.file}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
