//! [`Kernels`]: the compiled program on one GPU, and its kernels by what they compute, each a
//! handle typed by its argument struct. The launches themselves are methods of `Kernels` in the
//! files beside this one (gemv.rs, attention.rs, misc.rs).

use std::sync::Arc;

use cllm_cuda::{CompileReport, CudaError, Gpu, Kernel, Module};
use cllm_format::WeightForm;

use super::attention::{AttnArgs, KvStoreArgs};
use super::gemv::{own_kernel, streams, GemvArgs, MMA_TOKENS, TOKENS};
use super::misc::{EmbedArgs, HashArgs, HeadArgs, NormResidArgs, ReadArgs};
use super::program::{
    defines_from_env, mixed_kernel_name, mma_kernel_name, own_kernel_name, program,
    stream_kernel_name,
};
use super::sample::SampleArgs;

/// A kernel name for the driver: the program's names are few and live as long as the process.
fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

/// The kernels by what they compute.
pub(crate) struct Funcs {
    /// GEMVs for any mix of weight forms, 1, 2, 4 and 8 tokens per block.
    pub mixed: [Kernel<GemvArgs>; 4],
    /// One-token GEMVs compiled for one form each, by form code.
    pub own: Vec<Option<Kernel<GemvArgs>>>,
    /// Their streaming forms, by form code.
    pub stream: Vec<Option<Kernel<GemvArgs>>>,
    /// Per-row int8 and int8g on the integer tensor cores, 1, 2, 4 and 8 tokens per block,
    /// and their batches' x pre-pass.
    pub mma_row: [Kernel<GemvArgs>; 4],
    pub mma_group: [Kernel<GemvArgs>; 4],
    pub x_pieces: Kernel<GemvArgs>,
    pub attention: Kernel<AttnArgs>,
    pub kv_store: Kernel<KvStoreArgs>,
    pub embed: Kernel<EmbedArgs>,
    pub head_norm_rope: Kernel<HeadArgs>,
    pub norm_residual: Kernel<NormResidArgs>,
    pub sample: Kernel<SampleArgs>,
    pub hash_words: Kernel<HashArgs>,
    pub read_bw: Kernel<ReadArgs>,
}

impl Funcs {
    fn load(m: &Module) -> Result<Funcs, CudaError> {
        let by_form = |has: fn(WeightForm) -> bool, name: fn(WeightForm) -> String| {
            WeightForm::ALL
                .into_iter()
                .map(|f| {
                    has(f)
                        .then(|| m.kernel::<GemvArgs>(leak(name(f))))
                        .transpose()
                })
                .collect::<Result<Vec<_>, CudaError>>()
        };
        let four = |name: &dyn Fn(usize) -> String, tokens: [usize; 4]| {
            let k = |i: usize| m.kernel::<GemvArgs>(leak(name(tokens[i])));
            Ok::<_, CudaError>([k(0)?, k(1)?, k(2)?, k(3)?])
        };
        Ok(Funcs {
            mixed: four(&mixed_kernel_name, TOKENS)?,
            own: by_form(own_kernel, own_kernel_name)?,
            stream: by_form(streams, stream_kernel_name)?,
            mma_row: four(&|nt| mma_kernel_name(false, nt), MMA_TOKENS)?,
            mma_group: four(&|nt| mma_kernel_name(true, nt), MMA_TOKENS)?,
            x_pieces: m.kernel("x_pieces")?,
            attention: m.kernel("attention")?,
            kv_store: m.kernel("kv_store")?,
            embed: m.kernel("embed")?,
            head_norm_rope: m.kernel("head_norm_rope")?,
            norm_residual: m.kernel("norm_residual")?,
            sample: m.kernel("sample_token")?,
            hash_words: m.serial_kernel("hash_words")?,
            read_bw: m.serial_kernel("read_bw")?,
        })
    }

    fn of(
        kernels: &[Option<Kernel<GemvArgs>>],
        form: WeightForm,
        what: &str,
    ) -> Result<Kernel<GemvArgs>, CudaError> {
        kernels
            .get(form.code())
            .copied()
            .flatten()
            .ok_or_else(|| CudaError::Kernel(format!("no {what} GEMV kernel for {}", form.name())))
    }

    /// The one-token GEMV compiled for `form` alone.
    pub fn own_kernel(&self, form: WeightForm) -> Result<Kernel<GemvArgs>, CudaError> {
        Funcs::of(&self.own, form, "one-form")
    }

    /// The streaming one-token GEMV of `form`.
    pub fn stream_kernel(&self, form: WeightForm) -> Result<Kernel<GemvArgs>, CudaError> {
        Funcs::of(&self.stream, form, "streaming")
    }
}

/// The kernels on one GPU: the program compiled for it (or taken from the on-disk cache) and
/// loaded, with each kernel's launch limits.
pub struct Kernels {
    module: Module,
    pub(crate) f: Funcs,
    /// Bytes of dynamic shared memory a one-token GEMV block may take for its copy of x.
    pub(crate) gemv_x_smem: u32,
    /// Bytes of dynamic shared memory a `gemv_m1` or `gemv_g1` block may take for x's pieces.
    pub(crate) gemv_mma_smem: u32,
    defines: Vec<String>,
    gpu: Arc<Gpu>,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernels({:?} on {})", self.module, self.gpu.info().name)
    }
}

impl Kernels {
    /// The kernels on `gpu`, compiled with the defines of `CLLM_NVRTC_DEFINES` (a measurement
    /// aid; none by default).
    pub fn new(gpu: &Arc<Gpu>) -> Result<Arc<Kernels>, CudaError> {
        Kernels::with_defines(gpu, defines_from_env())
    }

    /// The kernels on `gpu`, compiled with `defines` (`NAME` or `NAME=VALUE`).
    pub fn with_defines(gpu: &Arc<Gpu>, defines: Vec<String>) -> Result<Arc<Kernels>, CudaError> {
        let module = Module::load(gpu, &program(defines.clone()))?;
        let f = Funcs::load(&module)?;
        let gemv_x_smem = std::iter::once(&f.mixed[0])
            .chain(f.own.iter().flatten())
            .chain(f.stream.iter().flatten())
            .map(|k| k.raise_shared_limit(gpu))
            .min()
            .unwrap_or(0);
        let gemv_mma_smem = f.mma_row[0]
            .raise_shared_limit(gpu)
            .min(f.mma_group[0].raise_shared_limit(gpu));
        Ok(Arc::new(Kernels {
            module,
            f,
            gemv_x_smem,
            gemv_mma_smem,
            defines,
            gpu: gpu.clone(),
        }))
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Where the compiled kernels came from (the disk cache or NVRTC) and how long that took.
    pub fn compile_report(&self) -> &CompileReport {
        self.module.report()
    }

    /// The defines the kernels were compiled with.
    pub fn defines(&self) -> &[String] {
        &self.defines
    }

    pub(crate) fn module(&self) -> &Module {
        &self.module
    }
}
