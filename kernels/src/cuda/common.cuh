// Shared definitions of the cllm CUDA kernels. The Rust side (kernels/src/cuda/program.rs)
// concatenates a generated header (the weight kinds, KIND_*), common.cuh, gemv.cu, gemv_mma.cu,
// attention.cu, misc.cu, sample.cu and the generated list of entry points into one NVRTC
// program, so no file includes another and no CUDA header is needed.
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

// Weight kinds (KIND_F32, KIND_BF16, ..., KIND_INT8G): the storage forms of spec/FORMAT.md
// section 4, defined by the generated header from `cllm_format::WeightForm`.

// One weight matrix resident on the GPU (rows x cols, row-major). Must match `WDesc` in
// kernels/src/cuda/gemv.rs.
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

// Asks the L2 for the 128-byte line holding p (no register, no wait).
__device__ __forceinline__ void l2_prefetch(const void* p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

__device__ __forceinline__ u32 ld_stream32(const u32* p) {
    u32 r;
    asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r) : "l"(p));
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

// Programmatic dependent launch: a kernel may start while its predecessor finishes; it streams
// its first weights (which no kernel writes) and then waits for the predecessor's results.
__device__ __forceinline__ void pdl_launch_dependents() {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

// Block timelines, a measurement aid compiled in only with -DCLLM_TRACE (for example
// CLLM_NVRTC_DEFINES=-DCLLM_TRACE; read back by kernels/src/cuda/trace.rs): each traced block's
// thread 0 appends one record of TRACE_WORDS words to `cllm_trace`: the kernel's tag, SM and
// block index; its start on the global timer (ns); then the offsets from the start of its
// programmatic-launch wait's return, of its end, and of up to four marks (TRACE_MARK(i), i in
// 1..4, placed by the kernel at points of interest; 0: not reached).
#ifdef CLLM_TRACE
#define CLLM_TRACE_CAP 262144
#define TRACE_WORDS 5
__device__ u64 cllm_trace[CLLM_TRACE_CAP * TRACE_WORDS];
__device__ u32 cllm_trace_n;
__device__ __forceinline__ u64 global_ns() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
// Thread 0's times of this block: the wait's return, then marks 1..4.
__device__ __forceinline__ u64* trace_slots() {
    __shared__ u64 s[5];
    return s;
}
struct BlockTrace {
    u64 t0;
    int tag;
    __device__ BlockTrace(int tag_) : tag(tag_) {
        t0 = global_ns();
        if (threadIdx.x == 0)
            for (int i = 0; i < 5; i++) trace_slots()[i] = t0;
    }
    __device__ ~BlockTrace() {
        if (threadIdx.x != 0) return;
        const u64 t2 = global_ns();
        u32 sm;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
        const u32 i = atomicAdd(&cllm_trace_n, 1u);
        if (i >= CLLM_TRACE_CAP) return;
        u64* r = cllm_trace + (size_t)i * TRACE_WORDS;
        const u64* m = trace_slots();
        r[0] = (u64)(tag & 0xff) | ((u64)(sm & 0xff) << 8) | ((u64)(blockIdx.x & 0xffffff) << 16) |
               ((u64)blockIdx.y << 40);
        r[1] = t0;
        r[2] = ((m[0] - t0) << 32) | (t2 - t0);
        r[3] = ((m[1] - t0) << 32) | (m[2] - t0);
        r[4] = ((m[3] - t0) << 32) | (m[4] - t0);
    }
};
#define TRACE_BLOCK(tag) BlockTrace cllm_block_trace(tag)
#define TRACE_MARK(i) \
    if (threadIdx.x == 0) trace_slots()[i] = global_ns()
__device__ __forceinline__ void pdl_wait() {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (threadIdx.x == 0) trace_slots()[0] = global_ns();
}
#else
#define TRACE_BLOCK(tag)
#define TRACE_MARK(i)
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
#endif
