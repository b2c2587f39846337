//! Run-time choice of the instruction set that hot loops are compiled for.
//!
//! The project builds for baseline x86-64 (SSE2); AVX2 doubles the vector width. Both compiled
//! versions perform the same lane-wise IEEE operations, so the choice changes speed, never bits
//! (tests check this). `CLLM_CPU_ISA=baseline` forces the baseline version.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

pub(crate) fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(detect)
}

fn detect() -> Isa {
    if std::env::var("CLLM_CPU_ISA").is_ok_and(|v| v == "baseline") {
        return Isa::Baseline;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// Every ISA this machine can run, for tests that compare them.
#[cfg(test)]
pub(crate) fn available() -> Vec<Isa> {
    let mut v = vec![Isa::Baseline];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
        v.push(Isa::Avx2);
    }
    v
}

/// Defines `$name(isa, args..)` that runs the `#[inline(always)]` function `$generic` compiled
/// for the chosen ISA. `$generic` takes a [`Lanes`](super::dot::Lanes) first: `Portable` for the
/// baseline copy, `Avx2` inside a `#[target_feature]` wrapper that inlines the same body.
macro_rules! multiversion {
    ($vis:vis fn $name:ident => $generic:ident ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)?) => {
        $vis fn $name(isa: $crate::cpu::isa::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,f16c")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: this function only runs after AVX2 was detected.
                $generic(unsafe { $crate::cpu::dot::Avx2::new_unchecked() }, $($arg),*)
            }
            match isa {
                $crate::cpu::isa::Isa::Baseline => $generic($crate::cpu::dot::Portable, $($arg),*),
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx2` is only produced after detecting AVX2 and F16C at run time.
                $crate::cpu::isa::Isa::Avx2 => unsafe { avx2($($arg),*) },
            }
        }
    };
}
pub(crate) use multiversion;
