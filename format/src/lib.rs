//! cllm-format: the `.cllm` container (spec/FORMAT.md), its codecs and the packing policy.
//!
//! Everything here works over byte slices and `std::io::Write`; nothing touches the GPU or the
//! file system. `pack` writes a container, `Container::open` checks its structure, `verify` checks
//! every byte.

pub mod codec;
pub mod dtype;
pub mod encoding;
pub mod error;
pub mod form;
pub mod hash;
pub mod importance;
pub mod index;
pub mod layout;
pub mod limits;
pub mod pack;
pub mod policy;
pub mod project;
pub mod quant;
pub mod reader;
pub mod shard;
pub mod source;
pub mod tensor;
pub mod verify;

pub use codec::{Codec, Int4Fit};
pub use dtype::Dtype;
pub use error::{FormatError, Result};
pub use form::WeightForm;
pub use index::Index;
pub use limits::Limits;
pub use pack::{pack, pack_sharded, PackInput, PackOptions, PackSummary, Progress, ShardOut};
pub use policy::{Policy, Preset, Quant, Rule};
pub use project::{project, Projection};
pub use reader::Container;
pub use source::{SourceBytes, SourceTensor};
pub use verify::{lossless_source_failure, verify, verify_except_tensors, VerifyReport};
