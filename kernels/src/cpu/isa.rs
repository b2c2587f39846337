//! Run-time choice of the instruction set that hot loops are compiled for.
//!
//! The project builds for baseline x86-64 (SSE2); AVX2 doubles the vector width and AVX-512
//! doubles it again. Every compiled version performs the same lane-wise IEEE operations, so the
//! choice changes speed, never bits (tests compare every version this machine can run).
//! `CLLM_CPU_ISA=baseline|avx2|avx512` caps the choice (for comparisons and benchmarks);
//! `avx512` leaves out VNNI, which only the int8 products use (decision record 0025).

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512 with VNNI: the AVX-512 copies, and VNNI's integer dot products for int8 weights.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

pub(crate) fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(detect)
}

fn detect() -> Isa {
    let cap = std::env::var("CLLM_CPU_ISA").ok();
    let best = available().into_iter().max().unwrap_or(Isa::Baseline);
    match cap.as_deref() {
        Some("baseline") => Isa::Baseline,
        #[cfg(target_arch = "x86_64")]
        Some("avx2") => best.min(Isa::Avx2),
        #[cfg(target_arch = "x86_64")]
        Some("avx512") => best.min(Isa::Avx512),
        _ => best,
    }
}

/// Every ISA this machine can run, in increasing order.
pub(crate) fn available() -> Vec<Isa> {
    #[allow(unused_mut)]
    let mut v = vec![Isa::Baseline];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("f16c") {
            v.push(Isa::Avx2);
            if has!("avx512f") && has!("avx512bw") {
                v.push(Isa::Avx512);
                if super::fixed::has_vnni() {
                    v.push(Isa::Avx512Vnni);
                }
            }
        }
    }
    v
}

/// Defines `$name(isa, args..)` that runs the `#[inline(always)]` function `$generic` compiled
/// for the chosen ISA. `$generic` takes a [`Lanes`](super::dot::Lanes) first: `Portable` for the
/// baseline copy, `Avx2` or `Avx512` inside a `#[target_feature]` wrapper that inlines the same
/// body.
macro_rules! multiversion {
    ($vis:vis fn $name:ident => $generic:ident ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)?) => {
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(isa: $crate::cpu::isa::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,f16c")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: this function only runs after AVX2 was detected.
                $generic(unsafe { $crate::cpu::dot::Avx2::new_unchecked() }, $($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: this function only runs after AVX-512 F/BW was detected.
                $generic(unsafe { $crate::cpu::dot::Avx512::new_unchecked() }, $($arg),*)
            }
            match isa {
                $crate::cpu::isa::Isa::Baseline => $generic($crate::cpu::dot::Portable, $($arg),*),
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx2` is only produced after detecting AVX2 and F16C at run time.
                $crate::cpu::isa::Isa::Avx2 => unsafe { avx2($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx512` is only produced after detecting AVX-512 F/BW (and AVX2,
                // F16C) at run time.
                $crate::cpu::isa::Isa::Avx512 | $crate::cpu::isa::Isa::Avx512Vnni => unsafe {
                    avx512($($arg),*)
                },
            }
        }
    };
}
pub(crate) use multiversion;
