//! CUDA C programs, compiled with NVRTC, and the on-disk cache of compiled code.
//!
//! A program (CUDA C sources concatenated with `#line` markers, so NVRTC's messages name the
//! right file) is compiled for the device's own architecture (`sm_90` on H100/H200) to a cubin,
//! cached as `<cache>/kernels/<hash>.cubin`, where `<hash>` covers the source, the options, the
//! architecture and the NVRTC version; `<cache>` is `$CLLM_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/cllm`, else `$HOME/.cache/cllm`. A cached cubin needs no NVRTC at all.
//!
//! Numerics: every program is compiled with `--fmad=false`, so the compiler never contracts a
//! multiply and an add (kernels write their fused multiply-adds explicitly).

use std::ffi::{CStr, CString};
use std::path::PathBuf;

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use crate::error::CudaError;

/// One CUDA C source of a program.
#[derive(Clone, Debug)]
pub struct Source {
    /// The name NVRTC's messages give it (`gemv.cu`).
    pub name: String,
    pub text: String,
}

/// CUDA C sources compiled as one program (no file includes another), and the macros it is
/// compiled with.
#[derive(Clone, Debug, Default)]
pub struct Program {
    pub sources: Vec<Source>,
    /// `NAME` or `NAME=VALUE`, passed as `-D`.
    pub defines: Vec<String>,
}

impl Program {
    /// The sources concatenated, each after a `#line` marker naming it.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for src in &self.sources {
            s.push_str(&format!("#line 1 \"{}\"\n", src.name));
            s.push_str(&src.text);
            s.push('\n');
        }
        s
    }
}

/// `<cache>/kernels`.
pub fn kernel_cache_dir() -> PathBuf {
    let var = |n: &str| {
        std::env::var_os(n)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = var("CLLM_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("cllm")))
        .or_else(|| var("HOME").map(|p| p.join(".cache").join("cllm")))
        .unwrap_or_else(|| PathBuf::from(".cache").join("cllm"));
    base.join("kernels")
}

/// FNV-1a, twice with different offsets: a 128-bit cache key (not a security boundary: the
/// cache holds our own compiler output).
fn cache_key(parts: &[&[u8]]) -> String {
    let mut out = String::new();
    for offset in [0xcbf29ce484222325u64, 0x84222325cbf29ce4u64] {
        let mut h = offset;
        for p in parts {
            for &b in p.iter().chain((p.len() as u64).to_le_bytes().iter()) {
                h ^= b as u64;
                h = h.wrapping_mul(0x100000001b3);
            }
        }
        out.push_str(&format!("{h:016x}"));
    }
    out
}

fn options(arch: &str, program: &Program) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={arch}"),
        "--fmad=false".to_string(),
        "--std=c++17".to_string(),
        "-default-device".to_string(),
        "-lineinfo".to_string(),
    ];
    o.extend(program.defines.iter().map(|d| format!("-D{d}")));
    if std::path::Path::new("/usr/local/cuda/include").is_dir() {
        o.push("-I/usr/local/cuda/include".to_string());
    }
    o
}

fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { nvrtc_sys::is_culib_present() }
}

fn nvrtc_version() -> Option<(i32, i32)> {
    if !nvrtc_present() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; out-pointers are valid.
    let r = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    (r == nvrtc_sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// What compiling (or finding) the kernels did.
#[derive(Clone, Debug)]
pub struct CompileReport {
    pub cache_hit: bool,
    pub seconds: f64,
    pub path: PathBuf,
}

/// The cubin of `program` for `arch` (`sm_90`), from the cache or freshly compiled (then cached).
pub(crate) fn cubin(arch: &str, program: &Program) -> Result<(Vec<u8>, CompileReport), CudaError> {
    let t = std::time::Instant::now();
    let src = program.text();
    let opts = options(arch, program);
    let ver = nvrtc_version();
    let opt_s = opts.join(" ");
    // Without NVRTC, a cached cubin compiled by any version is still usable.
    let dir = kernel_cache_dir();
    let key = cache_key(&[src.as_bytes(), opt_s.as_bytes(), arch.as_bytes()]);
    let path = dir.join(format!("{key}.cubin"));
    if let Ok(bytes) = std::fs::read(&path) {
        if !bytes.is_empty() {
            return Ok((
                bytes,
                CompileReport {
                    cache_hit: true,
                    seconds: t.elapsed().as_secs_f64(),
                    path,
                },
            ));
        }
    }
    if ver.is_none() {
        return Err(CudaError::Compile(format!(
            "NVRTC (libnvrtc.so.13) could not be loaded, and no cached kernels exist at {}: \
             add the CUDA toolkit's library folder (usually /usr/local/cuda/lib64) to \
             LD_LIBRARY_PATH",
            path.display()
        )));
    }
    let bin = compile(&src, &opts)?;
    // Cache atomically: write a temporary file, then rename it into place.
    if std::fs::create_dir_all(&dir).is_ok() {
        let tmp = dir.join(format!("{key}.cubin.tmp{}", std::process::id()));
        if std::fs::write(&tmp, &bin).is_ok() && std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok((
        bin,
        CompileReport {
            cache_hit: false,
            seconds: t.elapsed().as_secs_f64(),
            path,
        },
    ))
}

/// `src` compiled with `opts`, the kernels optimized in parallel (`--split-compile`: each kernel
/// gets the same code, the first compile is several times faster: docs/decisions/0006); an NVRTC
/// that does not know the option compiles them one by one.
fn compile(src: &str, opts: &[String]) -> Result<Vec<u8>, CudaError> {
    let mut split = opts.to_vec();
    split.push("--split-compile=0".to_string());
    match compile_with(src, &split) {
        Err(CudaError::Compile(m)) if m.contains("INVALID_OPTION") => compile_with(src, opts),
        r => r,
    }
}

fn compile_with(src: &str, opts: &[String]) -> Result<Vec<u8>, CudaError> {
    let csrc = CString::new(src).expect("kernel source has no NUL");
    let name = CString::new("cllm.cu").expect("no NUL");
    let err = |what: &str, e: cudarc::nvrtc::result::NvrtcError| {
        CudaError::Compile(format!("NVRTC {what}: {e:?}"))
    };
    let prog = nvrtc::create_program(&csrc, Some(&name)).map_err(|e| err("create", e))?;
    // SAFETY: `prog` is a live program; options are valid C strings.
    let compiled = unsafe { nvrtc::compile_program(prog, opts) };
    // SAFETY: as above.
    let log = unsafe { nvrtc::get_program_log(prog) }
        .ok()
        .map(|l| {
            // SAFETY: NVRTC returns a NUL-terminated log.
            unsafe { CStr::from_ptr(l.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    if let Err(e) = compiled {
        // SAFETY: destroys the program we created.
        let _ = unsafe { nvrtc::destroy_program(prog) };
        return Err(CudaError::Compile(format!(
            "NVRTC could not compile the kernels ({e:?}):\n{log}"
        )));
    }
    let mut size = 0usize;
    // SAFETY: compiled program; out-pointer valid.
    let r = unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) };
    if r != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        // SAFETY: destroys the program we created.
        let _ = unsafe { nvrtc::destroy_program(prog) };
        return Err(CudaError::Compile(format!("NVRTC gave no cubin ({r:?})")));
    }
    let mut bin = vec![0u8; size];
    // SAFETY: `bin` holds `size` bytes.
    let r = unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut _) };
    // SAFETY: destroys the program we created.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    if r != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::Compile(format!(
            "NVRTC cubin copy failed ({r:?})"
        )));
    }
    Ok(bin)
}

/// Compiles `program` for `arch` without a GPU (tests): the cubin's size, or the error.
/// `None` where NVRTC cannot be loaded.
pub fn compile_check(arch: &str, program: &Program) -> Option<Result<usize, CudaError>> {
    nvrtc_version()?;
    Some(compile(&program.text(), &options(arch, program)).map(|b| b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_depends_on_every_part() {
        let a = cache_key(&[b"x", b"y"]);
        assert_eq!(a.len(), 32);
        assert_ne!(a, cache_key(&[b"xy", b""]));
        assert_ne!(a, cache_key(&[b"x", b"z"]));
        assert_eq!(a, cache_key(&[b"x", b"y"]));
    }
}
