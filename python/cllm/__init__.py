"""cllm: LLM weights packed into a verified ``.cllm`` container, from Python.

    import cllm
    m = cllm.open("model.cllm")            # a container, or a shard set by its first shard
    m.tensors["model.norm.weight"]         # TensorInfo: dtype, shape, codec, group size, streams
    m.policy, m.provenance, m.files        # as packed; m.read_file("config.json") -> bytes
    w = m.tensor("model.layers.0.mlp.down_proj.weight")                    # dequantized, source dtype
    w32 = m.tensor("model.layers.0.mlp.down_proj.weight", dtype="float32")
    raw = m.tensor("model.layers.0.mlp.down_proj.weight", dequantize=False)  # codes, scales, mins
    m.verify()                             # every byte checked; .ok, .failures
    model = m.to_transformers()            # or m.load_state_dict(model), m.state_dict()

The ``cllm`` command comes with the package (``cllm --help``). Decoding is done by the Rust
codecs in the extension module ``cllm._cllm``, with every frame and stream hash checked; errors
raise ``CllmError`` naming the file, tensor and frame. bf16 tensors come as
``ml_dtypes.bfloat16`` arrays when ml_dtypes is installed, else as ``uint16`` bit patterns;
``dtype="float32"`` converts exactly.
"""

from ._cllm import CllmError, __version__
from ._model import (
    Model,
    TensorInfo,
    VerificationError,
    VerifyReport,
    bf16_to_float32,
    expand_int4s,
    open,
    unpack_int4,
)

__all__ = [
    "CllmError",
    "Model",
    "TensorInfo",
    "VerificationError",
    "VerifyReport",
    "__version__",
    "bf16_to_float32",
    "expand_int4s",
    "open",
    "unpack_int4",
]
