// Shared definitions of the cllm CUDA kernels. The Rust side (kernels/src/cuda/compile.rs)
// concatenates common.cuh, gemv.cu, attention.cu, misc.cu and sample.cu into one NVRTC program, so
// no file includes another and no CUDA header is needed.
//
// Determinism: the program is compiled with --fmad=false, so the compiler never contracts a
// multiply and an add; every fused multiply-add is an explicit fmaf(). Floating-point sums are
// never reassociated by the compiler. Every reduction below has a fixed order that depends only
// on the problem (row length, number of keys, position), never on the batch size, the grid or
// timing, so a row computed in a batch (prefill) gets the bits it gets alone (decode).

typedef unsigned int u32;
typedef unsigned long long u64;

#define CLLM_NEG_INF __int_as_float(0xff800000u)

#define WARPS 4                 // warps per GEMV block
#define GEMV_THREADS (WARPS * 32)
#define PSTRIDE 4096            // norm partial sums per token (max blocks of a residual GEMV)

// Weight kinds: the storage forms of spec/FORMAT.md section 4.
#define KIND_F32 0
#define KIND_BF16 1
#define KIND_F16 2
#define KIND_INT8 3
#define KIND_INT4 4
#define KIND_INT8G 5

// One weight matrix resident on the GPU (rows x cols, row-major). Must match `WDesc` in
// kernels/src/cuda/launch.rs.
struct WDesc {
    const void* data;     // payload (f32/bf16/f16 values, int8 codes, packed int4 nibbles)
    const void* scales;   // int8: f32 per row; int8g: f32 per group; int4: f16 per group
    const void* mins;     // int4: f16 per group
    const float* bias;    // f32 per row, or null
    int kind;
    int rows;
    int cols;
    int group;            // int4 and int8g group size (32, 64 or 128 columns)
};

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ float bf16_lo(u32 w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(u32 w) { return __uint_as_float(w & 0xffff0000u); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = v + __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// One element of a weight, dequantized exactly as spec/FORMAT.md defines it (the CPU's
// `Weight::dequantize_row`): int8 and int8g `q * scale` (one rounding), int4
// `(nibble * scale) + min`, two roundings.
__device__ __forceinline__ float weight_element(const WDesc& w, int row, int col) {
    size_t i = (size_t)row * (size_t)w.cols + (size_t)col;
    switch (w.kind) {
    case KIND_F32:
        return ((const float*)w.data)[i];
    case KIND_BF16:
        return __uint_as_float(((u32)((const unsigned short*)w.data)[i]) << 16);
    case KIND_F16:
        return f16_to_f32(((const unsigned short*)w.data)[i]);
    case KIND_INT8:
        return (float)((const signed char*)w.data)[i] * ((const float*)w.scales)[row];
    case KIND_INT8G: {
        size_t g = (size_t)row * (size_t)(w.cols / w.group) + (size_t)(col / w.group);
        return (float)((const signed char*)w.data)[i] * ((const float*)w.scales)[g];
    }
    default: {
        unsigned char b = ((const unsigned char*)w.data)[i >> 1];
        u32 nib = (col & 1) ? (b >> 4) : (b & 15);
        int groups = (w.cols + w.group - 1) / w.group;
        size_t g = (size_t)row * groups + col / w.group;
        float s = f16_to_f32(((const unsigned short*)w.scales)[g]);
        float m = f16_to_f32(((const unsigned short*)w.mins)[g]);
        return __fadd_rn(__fmul_rn((float)nib, s), m);
    }
    }
}

// Orders floats as unsigned integers (larger float, larger key); -0.0 counts as +0.0.
__device__ __forceinline__ u64 argmax_key(float v, u32 idx) {
    if (v == 0.0f) v = 0.0f;
    u32 b = __float_as_uint(v);
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    // Ties go to the lowest index (the CPU's `argmax`): a larger key for a smaller index.
    return ((u64)b << 32) | (u64)(~idx);
}
