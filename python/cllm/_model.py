"""``cllm.open``: a packed model's index, provenance, policy, embedded files and tensors as NumPy
arrays, decoded by the Rust codecs with every checksum verified on the way."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from . import _cllm
from ._cllm import CllmError

# The index's dtype spellings as NumPy dtypes (little-endian, as stored). bf16 has none: see
# `_bf16_dtype`.
_NUMPY_DTYPES = {
    "bool": np.dtype(np.bool_),
    "u8": np.dtype("u1"),
    "i8": np.dtype("i1"),
    "u16": np.dtype("<u2"),
    "i16": np.dtype("<i2"),
    "f16": np.dtype("<f2"),
    "u32": np.dtype("<u4"),
    "i32": np.dtype("<i4"),
    "f32": np.dtype("<f4"),
    "u64": np.dtype("<u8"),
    "i64": np.dtype("<i8"),
    "f64": np.dtype("<f8"),
}

# Each stream's element type by codec and role (spec/FORMAT.md section 4).
_STREAM_DTYPES = {
    ("int8", "data"): np.dtype("i1"),
    ("int8", "scales"): np.dtype("<f4"),
    ("int8g", "data"): np.dtype("i1"),
    ("int8g", "scales"): np.dtype("<f4"),
    ("int4", "data"): np.dtype("u1"),
    ("int4", "scales"): np.dtype("<f2"),
    ("int4", "mins"): np.dtype("<f2"),
    ("int4m", "data"): np.dtype("u1"),
    ("int4m", "scales"): np.dtype("<f2"),
    ("int4m", "mins"): np.dtype("<f2"),
    ("int4s", "data"): np.dtype("u1"),
    ("int4s", "factors"): np.dtype("<f2"),
    ("int4s", "subs"): np.dtype("u1"),
}

# int4s groups per super-block (spec/FORMAT.md section 4.6).
SUPER_BLOCK_GROUPS = 8

LOSSLESS_CODECS = ("raw", "zstd", "zstd-bp")


def _bf16_dtype() -> np.dtype:
    """``ml_dtypes.bfloat16`` where ml_dtypes is installed, else ``uint16`` (the bit patterns)."""
    try:
        import ml_dtypes  # type: ignore

        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:
        return np.dtype("<u2")


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bf16 values (their ``uint16`` bit patterns, or an ``ml_dtypes.bfloat16`` array) as float32,
    exactly."""
    u16 = np.ascontiguousarray(bits).view(np.uint16)
    return (u16.astype(np.uint32) << 16).view(np.float32)


def unpack_int4(data: np.ndarray) -> np.ndarray:
    """An ``int4`` tensor's ``data`` stream (``uint8 [rows, cols / 2]``, two codes a byte) as its
    codes ``uint8 [rows, cols]``: column ``2k`` from bits 0..3 of byte ``k``, ``2k + 1`` from
    bits 4..7."""
    data = np.asarray(data, dtype=np.uint8)
    out = np.empty(data.shape[:-1] + (data.shape[-1] * 2,), dtype=np.uint8)
    out[..., 0::2] = data & 0x0F
    out[..., 1::2] = data >> 4
    return out


def expand_int4s(factors: np.ndarray, subs: np.ndarray, rows: int, groups: int):
    """An ``int4s`` tensor's per-group ``(scales, mins)``, ``float16 [rows, groups]`` each, from
    its ``factors`` (``float16``, ``d`` and ``dmin`` per super-block of 8 groups) and ``subs``
    (12-bit codes ``sc | mc << 6``, one per group, packed low bit first): ``scale = f16(d * sc)``,
    ``min = f16(-(dmin * mc))``, exactly as spec/FORMAT.md section 4.6 defines them. Dequantize
    as ``int4``: ``(q * scale) + min`` in float32."""
    blocks = -(-groups // SUPER_BLOCK_GROUPS)
    f = np.asarray(factors, dtype="<f2").astype(np.float32).reshape(rows, blocks, 2)
    block = np.arange(groups) // SUPER_BLOCK_GROUPS
    d, dmin = f[:, block, 0], f[:, block, 1]
    bit = np.arange(rows * groups) * 12
    b = np.append(np.asarray(subs, dtype=np.uint8).ravel(), np.uint8(0)).astype(np.uint32)
    word = (b[bit // 8] | (b[bit // 8 + 1] << 8)) >> (bit % 8)
    sc = (word & 63).astype(np.float32).reshape(rows, groups)
    mc = ((word >> 6) & 63).astype(np.float32).reshape(rows, groups)
    return (d * sc).astype(np.float16), (-(dmin * mc)).astype(np.float16)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's index entry: what it is and how it is stored."""

    name: str
    dtype: str  # the source dtype, as the index spells it: "bf16", "f16", "f32", ...
    shape: Tuple[int, ...]
    codec: str  # "raw", "zstd", "zstd-bp" (lossless) or "int8", "int8g", "int4", "int4m", "int4s"
    group_size: Optional[int]
    streams: Tuple[Tuple[str, int], ...]  # (role, decoded bytes): data, scales, mins
    stored_bytes: int  # compressed bytes on disk, all streams

    @property
    def lossless(self) -> bool:
        return self.codec in LOSSLESS_CODECS

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Bytes in the source dtype (what a dequantized tensor takes)."""
        return self.numel * (2 if self.dtype == "bf16" else _NUMPY_DTYPES[self.dtype].itemsize)


@dataclass
class VerifyReport:
    """What ``Model.verify`` found: ``ok`` when every check holds, else each failure, naming the
    file, the tensor (or embedded file) and the frame."""

    ok: bool
    failures: List[str]
    shards: List[str]
    tensors: int
    files: int
    frames: int
    stored_bytes: int
    decoded_bytes: int
    seconds: float

    def __bool__(self) -> bool:
        return self.ok


class VerificationError(CllmError):
    """``Model.verify(raise_on_failure=True)`` found a problem; ``.report`` holds all of them."""

    def __init__(self, report: VerifyReport):
        self.report = report
        n = len(report.failures)
        super().__init__(f"{n} problem(s); first: {report.failures[0]}")


def _torch_dtype(torch, name: str):
    return {
        "bool": torch.bool,
        "u8": torch.uint8,
        "i8": torch.int8,
        "i16": torch.int16,
        "f16": torch.float16,
        "bf16": torch.bfloat16,
        "i32": torch.int32,
        "f32": torch.float32,
        "i64": torch.int64,
        "f64": torch.float64,
    }.get(name)


class Model(Mapping):
    """A packed model (one ``.cllm`` container or a shard set), memory-mapped.

    A read-only mapping from tensor name (in name order) to its dequantized NumPy array:
    ``model[name]``, ``for name in model``, ``model.items()`` decode one tensor at a time.
    """

    def __init__(self, packed: "_cllm.Packed"):
        self._packed = packed
        self._index = json.loads(packed.index_json())
        entries = json.loads(packed.tensors_json())
        self._index["tensors"] = entries
        self._infos: Dict[str, TensorInfo] = {}
        self._pos: Dict[str, int] = {}
        for i, t in enumerate(entries):
            info = TensorInfo(
                name=t["name"],
                dtype=t["dtype"],
                shape=tuple(int(d) for d in t["shape"]),
                codec=t["codec"],
                group_size=t.get("group_size"),
                streams=tuple((s["role"], int(s["len"])) for s in t["streams"]),
                stored_bytes=sum(int(f["stored"]) for s in t["streams"] for f in s["frames"]),
            )
            self._infos[info.name] = info
            self._pos[info.name] = i

    # --- what the index says -----------------------------------------------------------------

    @property
    def path(self) -> str:
        return os.fspath(self._packed.path)

    @property
    def shards(self) -> List[str]:
        """Every container's path (one for a single file)."""
        return [os.fspath(p) for p in self._packed.shard_paths()]

    @property
    def index(self) -> Dict[str, Any]:
        """The index as a dict (spec/FORMAT.md section 3): ``format``, ``version``, ``files``,
        ``policy``, ``provenance`` of the (first) container, and ``tensors``: every tensor of the
        whole set with its streams and frames."""
        return self._index

    @property
    def version(self) -> Tuple[int, int]:
        return tuple(self._index["version"])

    @property
    def tensors(self) -> Dict[str, TensorInfo]:
        """Name -> ``TensorInfo`` (dtype, shape, codec, group size, streams), in name order."""
        return self._infos

    @property
    def policy(self) -> Dict[str, Any]:
        """The policy it was packed with: ``preset``, ``quant``, ``group_size``, ``rules``,
        ``lossless``."""
        return self._index.get("policy", {})

    @property
    def provenance(self) -> Dict[str, Any]:
        """The packing tool and settings, and each source file's name, length and hash."""
        return self._index.get("provenance", {})

    @property
    def files(self) -> List[str]:
        """The embedded files' names (config.json, tokenizer.json, ...)."""
        return [f["name"] for f in self._index.get("files", [])]

    def read_file(self, name: str) -> bytes:
        """An embedded file's bytes, checksums checked; ``KeyError`` when absent."""
        data = self._packed.read_file(name)
        if data is None:
            raise KeyError(f"{self.path}: no embedded file {name!r} (files: {self.files})")
        return data

    @property
    def config(self) -> Optional[Dict[str, Any]]:
        """The embedded config.json, parsed (``None`` when absent)."""
        if "config.json" not in self.files:
            return None
        return json.loads(self.read_file("config.json"))

    # --- tensors -----------------------------------------------------------------------------

    def _info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor {name!r}") from None

    def tensor(self, name: str, dequantize: bool = True, dtype=None):
        """Tensor ``name`` decoded by the Rust codecs, every frame and stream hash checked.

        ``dequantize=True`` (the default): a NumPy array of the tensor's shape in its source
        dtype; lossless tensors are bit-identical to the source, quantized ones dequantized and
        rounded to the source dtype exactly as ``cllm unpack`` writes them. bf16 (which NumPy
        lacks) comes as ``ml_dtypes.bfloat16`` when ml_dtypes is installed, else as ``uint16``
        bit patterns. ``dtype`` (e.g. ``np.float32``) converts; bf16 and f16 to float32 is exact.

        ``dequantize=False``: the streams as stored, a dict by role. Quantized tensors:
        ``data`` (``int8 [rows, cols]`` for int8/int8g; for int4 ``uint8 [rows, cols / 2]``, two
        codes a byte, see ``unpack_int4``), ``scales`` (``float32 [rows, groups]`` for
        int8/int8g, one group a row for int8; ``float16`` for int4) and, for int4, ``mins``
        (``float16 [rows, groups]``); int4s has ``factors`` (``float16 [rows, 2 x super-blocks]``)
        and ``subs`` (``uint8``, flat) instead of scales and mins: see ``expand_int4s``. Lossless
        tensors: ``{"data": <the array>}``.
        """
        info = self._info(name)
        i = self._pos[name]
        if dequantize or info.lossless:
            arr = self._as_array(self._packed.source_bytes(i), info.dtype, info.shape)
            if dtype is not None:
                arr = _convert(arr, info.dtype, dtype)
            if not dequantize:
                return {"data": arr}
            return arr
        if dtype is not None:
            raise ValueError("dtype converts dequantized tensors only")
        rows, cols = info.shape
        out = {}
        for s, (role, _) in enumerate(info.streams):
            np_dtype = _STREAM_DTYPES.get((info.codec, role))
            if np_dtype is None:
                raise CllmError(f"tensor {name}: codec {info.codec} has no stream {role!r}")
            flat = np.frombuffer(self._packed.stream_bytes(i, s), dtype=np_dtype)
            if role == "subs":
                out[role] = flat  # 12-bit codes run across rows
            elif role == "data":
                out[role] = flat.reshape(rows, -1) if rows else flat.reshape(0, cols)
            else:
                out[role] = flat.reshape(rows, -1) if rows else flat.reshape(0, 1)
        return out

    @staticmethod
    def _as_array(buf: bytearray, dtype: str, shape: Tuple[int, ...]) -> np.ndarray:
        np_dtype = _bf16_dtype() if dtype == "bf16" else _NUMPY_DTYPES[dtype]
        return np.frombuffer(buf, dtype=np_dtype).reshape(shape)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __repr__(self) -> str:
        return (
            f"<cllm.Model {self.path!r}: format {self.version[0]}.{self.version[1]}, "
            f"{len(self)} tensors, policy {self.policy.get('preset', '?')!r}>"
        )

    # --- verification ------------------------------------------------------------------------

    def verify(self, raise_on_failure: bool = False) -> VerifyReport:
        """Checks every byte of every container, as ``cllm verify`` does without ``--against``:
        frame checksums, stream and payload hashes, embedded files, padding. Returns the report
        (falsy when something failed), or with ``raise_on_failure`` raises
        ``VerificationError``."""
        r = VerifyReport(**self._packed.verify())
        if raise_on_failure and not r.ok:
            raise VerificationError(r)
        return r

    # --- torch / transformers ----------------------------------------------------------------

    def state_dict(self, dtype=None, device="cpu") -> Dict[str, Any]:
        """Every tensor as a ``torch.Tensor`` (dequantized), by name: in its source dtype
        (bf16 as ``torch.bfloat16``, bit for bit), or converted to ``dtype``. torch is imported
        here only."""
        import torch

        out = {}
        for name, info in self._infos.items():
            out[name] = self._torch_tensor(torch, name, info, dtype, device)
        return out

    def _torch_tensor(self, torch, name, info, dtype, device):
        tdt = _torch_dtype(torch, info.dtype)
        if info.numel == 0:
            t = torch.empty(info.shape, dtype=tdt or torch.float32)
        else:
            buf = self._packed.source_bytes(self._pos[name])
            if info.dtype == "bf16":
                t = torch.frombuffer(buf, dtype=torch.int16).view(torch.bfloat16)
            elif tdt is not None:
                t = torch.frombuffer(buf, dtype=tdt)
            else:  # unsigned types torch may lack: through NumPy
                t = torch.from_numpy(self._as_array(buf, info.dtype, (info.numel,)))
            t = t.reshape(info.shape)
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        if device is not None and str(device) != "cpu":
            t = t.to(device)
        return t

    def load_state_dict(self, module, strict: bool = True):
        """Loads every tensor into a torch module (a transformers model made with ``from_config``,
        say) without writing a folder, one tensor at a time: each parameter or buffer of the same
        name gets the container's values (dequantized), converted to that parameter's dtype and
        device (bf16 and f16 to float32 is exact). A module weight the container leaves out
        because it is tied to one it holds (``lm_head.weight`` to the embedding) counts as
        loaded. ``strict``: a tensor the module lacks, or a module weight the container lacks, is
        an error (``CllmError``); a shape mismatch always is. Returns
        ``(missing_keys, unexpected_keys)``."""
        import torch

        own = module.state_dict(keep_vars=True)
        unexpected, loaded = [], set()
        with torch.no_grad():
            for name, info in self._infos.items():
                target = own.get(name)
                if target is None:
                    unexpected.append(name)
                    continue
                if tuple(target.shape) != info.shape:
                    raise CllmError(
                        f"{self.path}: tensor {name}: shape {list(info.shape)} in the container, "
                        f"{list(target.shape)} in the module"
                    )
                target.copy_(self._torch_tensor(torch, name, info, None, None))
                loaded.add(target.data_ptr())
        missing = [k for k, v in own.items() if k not in self._infos and v.data_ptr() not in loaded]
        if strict and (missing or unexpected):
            raise CllmError(
                f"{self.path}: the container does not match the module: "
                f"missing {missing[:8]}, unexpected {unexpected[:8]}"
            )
        return missing, unexpected

    def to_transformers(self, model_class=None, dtype=None, device=None, **kwargs):
        """A transformers model built from the embedded config.json (read as ``from_pretrained``
        reads it) with this container's weights (``load_state_dict``), in eval mode, without
        writing a folder. ``model_class`` defaults to ``AutoModelForCausalLM``; ``dtype`` (a torch
        dtype or its name) and ``kwargs`` (``attn_implementation``, ...) go to ``from_config``
        (transformers 5 defaults to the config's dtype); ``device`` moves the model first."""
        import torch
        import transformers

        cfg = self.config
        if cfg is None:
            raise CllmError(f"{self.path}: no embedded config.json")
        config = transformers.CONFIG_MAPPING[cfg["model_type"]].from_dict(cfg)
        cls = model_class or transformers.AutoModelForCausalLM
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        kw = dict(kwargs)
        if dtype is not None:
            kw["dtype"] = dtype
        model = cls.from_config(config, **kw)
        if device is not None:
            model = model.to(device)
        self.load_state_dict(model)
        return model.eval()


def _convert(arr: np.ndarray, src: str, dtype) -> np.ndarray:
    if src == "bf16":
        f32 = bf16_to_float32(arr).reshape(arr.shape)
        return f32 if np.dtype(dtype) == np.float32 else f32.astype(dtype)
    return arr.astype(dtype)


def open(path) -> Model:  # noqa: A001 - the package's entry point, as `cllm.open(path)`
    """Opens a ``.cllm`` container or a shard set (named by its first shard or any shard)."""
    return Model(_cllm.open(os.fspath(path)))
