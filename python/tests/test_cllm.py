"""Tests of the installed `cllm` package (the built wheel, NumPy only): the `cllm` command and
`cllm.open`. Run by scripts/python-wheel-test.sh in a fresh virtual environment:

    python -m unittest discover -s python/tests -v
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np

import cllm

# The `cllm` command of this environment (the wheel's console script).
CLLM = os.path.join(os.path.dirname(sys.executable), "cllm")

ST_DTYPES = {"BF16": "<u2", "F16": "<f2", "F32": "<f4", "I64": "<i8", "I32": "<i4", "U8": "u1"}


def run_cllm(*args, check=True):
    p = subprocess.run([CLLM, *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"cllm {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def read_safetensors_folder(folder):
    """name -> (safetensors dtype, shape, raw bytes) over every *.safetensors file of `folder`,
    read by hand (the format is an 8-byte header length, a JSON header, the data)."""
    out = {}
    for fname in sorted(os.listdir(folder)):
        if not fname.endswith(".safetensors"):
            continue
        with open(os.path.join(folder, fname), "rb") as f:
            blob = f.read()
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + n])
        data = blob[8 + n :]
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            start, end = meta["data_offsets"]
            out[name] = (meta["dtype"], tuple(meta["shape"]), data[start:end])
    return out


def f32_to_bf16_bits(x):
    """float32 -> bf16 bit patterns, round to nearest even (finite values)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


class Fixture:
    """A synthetic model and containers packed from it with the installed command, once."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="cllm-py-")
        self.src = os.path.join(self.tmp, "src")
        run_cllm("synth", "--shape", "tiny", "-o", self.src)
        self.source = read_safetensors_folder(self.src)
        self.containers = {}
        packs = {
            "lossless": [],
            "int8g": ["--policy", "mlp-only", "--quant", "int8", "--group-size", "32"],
            "int8row": ["--policy", "attn-only", "--quant", "int8-row"],
            "int4": ["--policy", "all-linear", "--quant", "int4", "--group-size", "64"],
            "int4s": ["--policy", "all-linear", "--quant", "int4s", "--group-size", "32"],
        }
        for name, flags in packs.items():
            path = os.path.join(self.tmp, f"{name}.cllm")
            # Small frames: every larger tensor spans several.
            run_cllm("pack", self.src, "-o", path, "-q", "--frame-kib", "16", *flags)
            self.containers[name] = path

    def unpacked(self, name):
        out = os.path.join(self.tmp, f"{name}-unpacked")
        if not os.path.isdir(out):
            run_cllm("unpack", self.containers[name], "-o", out, "-q")
        return read_safetensors_folder(out)


FIX = None


def setUpModule():
    global FIX
    FIX = Fixture()


def tearDownModule():
    shutil.rmtree(FIX.tmp, ignore_errors=True)


def source_array(name):
    st_dtype, shape, raw = FIX.source[name]
    return np.frombuffer(raw, dtype=ST_DTYPES[st_dtype]).reshape(shape)


def bits(a):
    """The bytes of an array, whatever its dtype (bf16 as ml_dtypes or uint16)."""
    return np.ascontiguousarray(a).tobytes()


class TestCommand(unittest.TestCase):
    def test_version(self):
        p = run_cllm("--version")
        self.assertEqual(p.stdout.strip(), f"cllm {cllm.__version__}")

    def test_help(self):
        p = run_cllm("--help")
        self.assertIn("Usage: cllm", p.stdout)
        self.assertIn("pack", p.stdout)

    def test_exit_codes(self):
        self.assertEqual(run_cllm("verify", FIX.containers["lossless"], check=False).returncode, 0)
        # A usage error: clap's exit code 2.
        p = run_cllm("--no-such-flag", check=False)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("--no-such-flag", p.stderr)
        # An I/O error: 2, naming the file.
        missing = os.path.join(FIX.tmp, "missing.cllm")
        p = run_cllm("verify", missing, check=False)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("missing.cllm", p.stderr)
        # A verification failure: 1.
        bad = corrupt_frame(FIX.containers["lossless"], "bad-cmd.cllm")[0]
        p = run_cllm("verify", bad, check=False)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("FAILED", p.stdout + p.stderr)

    def test_python_dash_m(self):
        p = subprocess.run([sys.executable, "-m", "cllm", "--version"], capture_output=True, text=True)
        self.assertEqual((p.returncode, p.stdout.strip()), (0, f"cllm {cllm.__version__}"))

    def test_inspect_json(self):
        p = run_cllm("inspect", FIX.containers["int8g"], "--json")
        self.assertTrue(json.loads(p.stdout))


def largest_tensor(model):
    return max(model.tensors.values(), key=lambda t: t.stored_bytes)


def corrupt_frame(path, out_name, tensor=None):
    """A copy of container `path` with one byte flipped in the middle of a frame of `tensor` (by
    default the largest): (the copy's path, the tensor's name, the frame's number)."""
    m = cllm.open(path)
    name = tensor or largest_tensor(m).name
    entry = next(t for t in m.index["tensors"] if t["name"] == name)
    frames = entry["streams"][0]["frames"]
    k = len(frames) // 2
    f = frames[k]
    with open(path, "rb") as fh:
        blob = bytearray(fh.read())
    blob[f["offset"] + f["stored"] // 2] ^= 0x40
    out = os.path.join(FIX.tmp, out_name)
    with open(out, "wb") as fh:
        fh.write(blob)
    return out, name, k


class TestOpen(unittest.TestCase):
    def test_index_policy_provenance_files(self):
        m = cllm.open(FIX.containers["int8g"])
        self.assertEqual(m.path, FIX.containers["int8g"])
        self.assertEqual(m.shards, [FIX.containers["int8g"]])
        self.assertEqual(m.index["format"], "cllm")
        self.assertEqual(m.policy["preset"], "mlp-only")
        self.assertEqual(m.policy["quant"], "int8")
        self.assertEqual(m.policy["group_size"], 32)
        self.assertTrue(m.provenance["tool"].startswith("cllm"))
        srcs = {f["name"] for f in m.provenance["source_files"]}
        self.assertIn("model.safetensors", srcs)
        self.assertIn("config.json", m.files)
        with open(os.path.join(FIX.src, "config.json"), "rb") as fh:
            self.assertEqual(m.read_file("config.json"), fh.read())
        self.assertEqual(m.config["model_type"], "llama")
        with self.assertRaises(KeyError):
            m.read_file("no-such-file.json")
        self.assertIn("tensors", repr(m))

    def test_tensor_table(self):
        m = cllm.open(FIX.containers["int8g"])
        self.assertEqual(set(m), set(FIX.source))
        self.assertEqual(list(m), sorted(FIX.source))
        self.assertEqual(len(m), len(FIX.source))
        for name, info in m.tensors.items():
            st_dtype, shape, _ = FIX.source[name]
            self.assertEqual(info.dtype, st_dtype.lower())
            self.assertEqual(info.shape, shape)
            if "mlp" in name and name.endswith("proj.weight"):
                self.assertEqual((info.codec, info.group_size), ("int8g", 32), name)
                self.assertEqual([r for r, _ in info.streams], ["data", "scales"])
            else:
                self.assertTrue(info.lossless, name)
        self.assertNotIn("no.such.tensor", m)
        with self.assertRaises(KeyError):
            m.tensor("no.such.tensor")

    def test_lossless_bit_identical(self):
        m = cllm.open(FIX.containers["lossless"])
        have_ml_dtypes = _has_ml_dtypes()
        for name, arr in m.items():
            st_dtype, shape, raw = FIX.source[name]
            self.assertEqual(arr.shape, shape)
            self.assertEqual(bits(arr), raw, name)
            if st_dtype == "BF16" and not have_ml_dtypes:
                self.assertEqual(arr.dtype, np.uint16)
            # The raw form of a lossless tensor is the same array.
            self.assertEqual(bits(m.tensor(name, dequantize=False)["data"]), raw)
            # float32: exact.
            if st_dtype == "BF16":
                f32 = m.tensor(name, dtype="float32")
                self.assertEqual(f32.dtype, np.float32)
                np.testing.assert_array_equal(
                    f32.view(np.uint32), source_array(name).astype(np.uint32) << 16
                )
        # Arrays are writable (torch.from_numpy takes them without a warning).
        self.assertTrue(m[name].flags.writeable)

    def test_quantized_equal_to_unpack(self):
        for kind in ("int8g", "int8row", "int4", "int4s"):
            m = cllm.open(FIX.containers[kind])
            unpacked = FIX.unpacked(kind)
            quantized = 0
            for name, info in m.tensors.items():
                arr = m.tensor(name)
                self.assertEqual(bits(arr), unpacked[name][2], f"{kind} {name}")
                if info.lossless:
                    self.assertEqual(bits(arr), FIX.source[name][2], f"{kind} {name}")
                else:
                    quantized += 1
                    self.assertNotEqual(bits(arr), FIX.source[name][2], f"{kind} {name}")
            self.assertGreater(quantized, 0, kind)

    def test_raw_codes_and_scales(self):
        for kind in ("int8g", "int8row", "int4", "int4s"):
            m = cllm.open(FIX.containers[kind])
            for name, info in m.tensors.items():
                if info.lossless:
                    continue
                rows, cols = info.shape
                raw = m.tensor(name, dequantize=False)
                if info.codec == "int4":
                    g = info.group_size
                    self.assertEqual(set(raw), {"data", "scales", "mins"})
                    self.assertEqual((raw["data"].dtype, raw["data"].shape), (np.uint8, (rows, cols // 2)))
                    for role in ("scales", "mins"):
                        self.assertEqual((raw[role].dtype, raw[role].shape), (np.float16, (rows, cols // g)))
                    q = cllm.unpack_int4(raw["data"]).astype(np.float32).reshape(rows, cols // g, g)
                    s = raw["scales"].astype(np.float32)[..., None]
                    mn = raw["mins"].astype(np.float32)[..., None]
                    x = (q * s).astype(np.float32) + mn
                elif info.codec == "int4s":
                    g = info.group_size
                    self.assertEqual(set(raw), {"data", "factors", "subs"})
                    s16, m16 = cllm.expand_int4s(raw["factors"], raw["subs"], rows, cols // g)
                    self.assertEqual((s16.dtype, s16.shape), (np.float16, (rows, cols // g)))
                    self.assertTrue((m16.astype(np.float32) <= 0).all())
                    q = cllm.unpack_int4(raw["data"]).astype(np.float32).reshape(rows, cols // g, g)
                    s = s16.astype(np.float32)[..., None]
                    x = (q * s).astype(np.float32) + m16.astype(np.float32)[..., None]
                else:
                    g = info.group_size or cols
                    self.assertEqual(set(raw), {"data", "scales"})
                    self.assertEqual((raw["data"].dtype, raw["data"].shape), (np.int8, (rows, cols)))
                    self.assertEqual((raw["scales"].dtype, raw["scales"].shape), (np.float32, (rows, cols // g)))
                    q = raw["data"].astype(np.float32).reshape(rows, cols // g, g)
                    x = q * raw["scales"][..., None]
                # The spec's dequantization (spec/FORMAT.md section 4), rounded to bf16, is what
                # the Rust codecs give.
                self.assertEqual(info.dtype, "bf16")
                expect = f32_to_bf16_bits(x.reshape(rows, cols).astype(np.float32))
                np.testing.assert_array_equal(expect, m.tensor(name).view(np.uint16), f"{kind} {name}")

    def test_verify(self):
        for path in FIX.containers.values():
            r = cllm.open(path).verify()
            self.assertTrue(r.ok, r.failures)
            self.assertTrue(r)
            self.assertEqual(r.failures, [])
            self.assertGreater(r.frames, 0)

    def test_verify_names_the_flipped_frame(self):
        for kind in ("lossless", "int4"):
            bad, name, k = corrupt_frame(FIX.containers[kind], f"bad-{kind}.cllm")
            m = cllm.open(bad)  # the index is intact: it opens
            r = m.verify()
            self.assertFalse(r.ok)
            self.assertFalse(r)
            self.assertTrue(any(name in f and f"frame {k}" in f for f in r.failures), r.failures)
            self.assertTrue(all(f.startswith(bad) for f in r.failures), r.failures)
            with self.assertRaises(cllm.VerificationError) as e:
                m.verify(raise_on_failure=True)
            self.assertIn(name, str(e.exception))
            self.assertIs(e.exception.report.ok, False)
            # Reading that tensor fails, naming the file, tensor and frame; the others read.
            with self.assertRaises(cllm.CllmError) as e:
                m.tensor(name)
            self.assertIn(name, str(e.exception))
            self.assertIn(f"frame {k}", str(e.exception))
            self.assertIn("bad-", str(e.exception))
            with self.assertRaises(cllm.CllmError):
                m.tensor(name, dequantize=False)
            other = next(n for n in m if n != name)
            self.assertEqual(bits(m.tensor(other)), FIX.unpacked(kind)[other][2])

    def test_shard_set(self):
        # The smallest of these shard sizes that holds the largest tensor: a set of several.
        for size in ("96KiB", "128KiB", "160KiB"):
            out = os.path.join(FIX.tmp, f"set-{size}", "m.cllm")
            os.makedirs(os.path.dirname(out))
            p = run_cllm("pack", FIX.src, "-o", out, "-q", "--frame-kib", "16", "--max-shard-size",
                         size, "--policy", "mlp-only", check=False)
            if p.returncode == 0:
                break
        self.assertEqual(p.returncode, 0, p.stderr)
        shards = sorted(os.listdir(os.path.dirname(out)))
        self.assertGreater(len(shards), 1, shards)
        first = os.path.join(os.path.dirname(out), shards[0])
        one = os.path.join(FIX.tmp, "set-single.cllm")
        run_cllm("pack", FIX.src, "-o", one, "-q", "--frame-kib", "16", "--policy", "mlp-only")
        single = cllm.open(one)
        for named in (first, os.path.join(os.path.dirname(out), shards[-1])):
            m = cllm.open(named)
            self.assertEqual(len(m.shards), len(shards))
            self.assertEqual(list(m), sorted(FIX.source))
            for name, info in m.tensors.items():
                arr = m.tensor(name)
                self.assertEqual(bits(arr), bits(single.tensor(name)), name)
                if info.lossless:
                    self.assertEqual(bits(arr), FIX.source[name][2], name)
                else:
                    raw = m.tensor(name, dequantize=False)
                    self.assertEqual(raw["data"].shape, info.shape)
            r = m.verify()
            self.assertTrue(r.ok, r.failures)
            self.assertEqual(len(r.shards), len(shards))
            self.assertEqual(r.tensors, len(FIX.source))
        self.assertEqual(m.policy["preset"], "mlp-only")
        self.assertEqual(m.files, single.files)

    def test_open_errors(self):
        with self.assertRaises(FileNotFoundError) as e:
            cllm.open(os.path.join(FIX.tmp, "missing.cllm"))
        self.assertIn("missing.cllm", str(e.exception))
        # A truncated container: an error naming the file, never a crash.
        with open(FIX.containers["lossless"], "rb") as fh:
            blob = fh.read()
        short = os.path.join(FIX.tmp, "short.cllm")
        with open(short, "wb") as fh:
            fh.write(blob[: len(blob) - 100])
        with self.assertRaises(cllm.CllmError) as e:
            cllm.open(short)
        self.assertIn("short.cllm", str(e.exception))

    def test_bf16_helpers(self):
        b = np.array([0x3F80, 0xC000, 0x0000, 0x7F80], dtype=np.uint16)
        np.testing.assert_array_equal(cllm.bf16_to_float32(b), np.array([1.0, -2.0, 0.0, np.inf], np.float32))
        packed = np.array([[0x21, 0xF0]], dtype=np.uint8)
        np.testing.assert_array_equal(cllm.unpack_int4(packed), [[1, 2, 0, 15]])

    def test_torch_is_not_imported(self):
        self.assertNotIn("torch", sys.modules)


def _has_ml_dtypes():
    try:
        import ml_dtypes  # noqa: F401

        return True
    except ImportError:
        return False


if __name__ == "__main__":
    unittest.main()
