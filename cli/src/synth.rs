//! `cllm synth`: writes a deterministic synthetic model, so benchmarks can make large ones where
//! they run instead of carrying them.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::builder::PossibleValuesParser;
use clap::Args;
use cllm_format::Dtype;
use cllm_synth::{shape, shape_names, ConfigStyle, SynthOptions};

use crate::progress::human_bytes;
use crate::CmdResult;

/// Write a synthetic model of a supported family (seeded normal weights) as a Hugging Face folder.
#[derive(Args)]
pub struct SynthArgs {
    /// Shape name.
    #[arg(long, value_parser = PossibleValuesParser::new(shape_names()))]
    pub shape: String,
    /// The folder to create.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Weight dtype: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of safetensors shards (0: one file for small models, ~2 GB shards for large ones).
    #[arg(long, default_value_t = 0)]
    pub shards: usize,
}

pub fn parse_dtype(s: &str) -> anyhow::Result<Dtype> {
    match s {
        "bf16" => Ok(Dtype::Bf16),
        "f16" => Ok(Dtype::F16),
        "f32" => Ok(Dtype::F32),
        _ => Err(anyhow!("dtype '{s}': expected bf16, f16 or f32")),
    }
}

pub fn run(a: SynthArgs) -> CmdResult {
    let sh = shape(&a.shape).ok_or_else(|| {
        anyhow!(
            "unknown shape '{}' (one of: {})",
            a.shape,
            shape_names().join(", ")
        )
    })?;
    let opts = SynthOptions {
        dtype: parse_dtype(&a.dtype)?,
        seed: a.seed,
        shards: a.shards,
        config_style: ConfigStyle::V4,
        ..SynthOptions::default()
    };
    let s = cllm_synth::write_model(&sh, &opts, &a.output)?;
    println!(
        "wrote {} ({} parameters, {}) to {}",
        a.shape,
        sh.parameter_count().unwrap_or(0),
        human_bytes(s.files.iter().map(|f| f.len).sum()),
        a.output.display()
    );
    Ok(())
}

/// A synthetic model as a pack source generated on the fly (`cllm pack synth:SHAPE`): its tensors
/// are computed a window at a time as the packer reads them, so a model larger than the disk (or
/// the memory) can be packed. Bytes as `cllm synth --shape SHAPE` writes them (bf16, seed 0).
pub struct Generated {
    shape: cllm_synth::ModelShape,
    specs: Vec<cllm_synth::TensorSpec>,
    opts: cllm_synth::SynthOptions,
}

type Fill = Box<dyn Fn(usize, &mut [u8]) + Sync>;

impl Generated {
    pub fn new(name: &str) -> anyhow::Result<Generated> {
        let shape = cllm_synth::shape(name).ok_or_else(|| {
            anyhow::anyhow!(
                "synth:{name}: no such shape (one of {})",
                shape_names().join(", ")
            )
        })?;
        let specs = shape.tensors();
        Ok(Generated {
            shape,
            specs,
            opts: cllm_synth::SynthOptions::default(),
        })
    }

    /// One generator per tensor, borrowed by [`Generated::pack_input`].
    pub fn fills(&self) -> Vec<Fill> {
        let (dtype, seed) = (self.opts.dtype, self.opts.seed);
        self.specs
            .iter()
            .map(|spec| {
                let spec = spec.clone();
                Box::new(move |off: usize, out: &mut [u8]| {
                    cllm_synth::fill_range(&spec, dtype, seed, off, out)
                }) as Fill
            })
            .collect()
    }

    pub fn pack_input<'a>(&'a self, fills: &'a [Fill]) -> cllm_format::PackInput<'a> {
        let dtype = self.opts.dtype;
        let tensors = self
            .specs
            .iter()
            .zip(fills)
            .map(|(spec, fill)| cllm_format::SourceTensor {
                name: spec.name.clone(),
                dtype,
                shape: spec.shape.clone(),
                bytes: cllm_format::SourceBytes::Generated {
                    len: spec.numel().unwrap_or(0) as usize * dtype.size(),
                    fill: fill.as_ref(),
                },
            })
            .collect();
        cllm_format::PackInput {
            tensors,
            files: cllm_synth::model_files(&self.shape, &self.opts),
            source_files: Vec::new(),
        }
    }
}
