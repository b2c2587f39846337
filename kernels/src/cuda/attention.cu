// Grouped-query attention of NT tokens over the KV cache, split into chunks of a fixed number
// of key positions (ATT_CHUNK, aligned to absolute positions).
//
// Block (chunk c, head, token): the query at position p sees keys from..p (from = 0, or the
// sliding window's start); chunk c covers keys [c*ATT_CHUNK, (c+1)*ATT_CHUNK) of that range.
// Thread i scores key i of the chunk (dot over head_dim in order, then times the scale, as
// transformers' eager order), the block takes the max and the sum of exp(s - max) with a fixed
// tree, and thread d accumulates sum_i e_i v_i[d] in key order. A query whose keys fit in one
// chunk finishes there (out = o / l). Otherwise every chunk writes (o, max, sum) and the last
// block to finish (an atomic ticket) combines the chunks in chunk order. The arithmetic depends
// only on the position, so a query gets the same bits in prefill and in decode.
//
// The cache stores keys and values as f32, bf16 or int8 (`kv`; runtime/src/kv.rs defines the
// rounding): kv_store rounds the launch's new keys and values from the QKV launch's staging area
// into the cache, and the attention reads every key and value back as f32 (bf16 exactly, int8 as
// q * scale), so prefill and decode read the same stored form. int8 stores blocks of B values
// (kv_block) rotated by the Walsh-Hadamard transform, each with a bf16 scale; the attention
// rotates the query's blocks (times 1/B) before its scores and the output's blocks (times 1/B)
// after its sum of values, as the CPU does.

#define KV_F32 0
#define KV_BF16 1
#define KV_INT8 2

#define ATT_THREADS 128
#define ATT_CHUNK 128
#define ATT_MAX_HD 256

// Must match `AttnArgs` in kernels/src/cuda/attention.rs.
struct AttnArgs {
    const float* q;        // [ntok][heads * head_dim]
    const void* kcache;    // this layer: [kv_heads][capacity][head_dim] of the `kv` form
    const void* vcache;
    float* out;            // [ntok][heads * head_dim]
    float* part_o;         // [ntok][heads][cmax][head_dim]
    float* part_ml;        // [ntok][heads][cmax][2]
    int* counters;         // [ntok][heads], zero between uses
    const int* pos;        // position of token 0
    int ntok;
    int heads;
    int kv_heads;
    int head_dim;
    int capacity;
    int window;            // 0: none
    int cmax;              // chunks per (token, head) in the scratch layout
    float scale;
    int prefetch;          // 2: the L2 fetches the chunk's keys and values before the launch wait
    int kv;                // KV_F32, KV_BF16 or KV_INT8
    const unsigned short* kscale;  // KV_INT8: this layer's bf16 scales [kv_heads][capacity][hd/B]
    const unsigned short* vscale;
};

// The f32 value of bf16 bits (exact).
__device__ __forceinline__ float bf16_f32(unsigned short b) { return __uint_as_float((u32)b << 16); }

// Values per int8 block (runtime/src/kv.rs's int8_block): 32, or the largest power of two
// dividing hd where that is smaller.
__device__ __forceinline__ int kv_block(int hd) { return min(32, hd & -hd); }
// Its log2: blocks are indexed by shifts (a division by a runtime value costs tens of
// instructions per element).
__device__ __forceinline__ int kv_block_log2(int hd) { return 31 - __clz(kv_block(hd)); }

// Blocks of B lanes (B a power of two up to 32; lane l holds element l % B of its block) rotated
// by the unnormalized Walsh-Hadamard transform, runtime/src/kv.rs's hadamard: at distances 1, 2,
// 4, ... < B the lower element of each pair becomes a + b and the higher a - b. The whole warp
// must call it.
__device__ __forceinline__ float hadamard_lanes(float v, int lane, int B) {
    for (int h = 1; h < B; h <<= 1) {
        const float p = __shfl_xor_sync(0xffffffffu, v, h);
        v = (lane & h) ? __fsub_rn(p, v) : __fadd_rn(v, p);
    }
    return v;
}

// Element d of cached row `row` as f32, from the stored form KV (lb: kv_block_log2(hd)).
template <int KV>
__device__ __forceinline__ float kv_at(const void* base, const unsigned short* scale, size_t row,
                                       int hd, int d, int lb) {
    if (KV == KV_BF16)
        return __uint_as_float((u32)((const unsigned short*)base)[row * hd + d] << 16);
    if (KV == KV_INT8)
        return __fmul_rn((float)((const signed char*)base)[row * hd + d],
                         bf16_f32(scale[row * (hd >> lb) + (d >> lb)]));
    return ((const float*)base)[row * hd + d];
}

// q . k of cached key `row` over head_dim in order (one fmaf per element, as the f32 path).
template <int KV>
__device__ __forceinline__ float kv_score(const void* K, const unsigned short* ks, size_t row,
                                          int hd, int lb, const float* s_q) {
    float acc = 0.0f;
    if (KV == KV_INT8 && hd % 16 == 0) {
        const uint4* r = (const uint4*)((const signed char*)K + row * hd);
        const unsigned short* sr = ks + row * (hd >> lb);
        for (int b = 0; b < hd / 16; b++) {
            // Blocks of 8 put two scales in one 16-byte load.
            const float sc0 = bf16_f32(sr[(16 * b) >> lb]);
            const float sc1 = lb >= 4 ? sc0 : bf16_f32(sr[(16 * b + 8) >> lb]);
            const uint4 w = r[b];
            const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
            for (int j = 0; j < 16; j++) {
                const float x = (float)(signed char)(ws[j >> 2] >> (8 * (j & 3)));
                acc = fmaf(s_q[16 * b + j], __fmul_rn(x, j < 8 ? sc0 : sc1), acc);
            }
        }
        return acc;
    }
    if (KV == KV_BF16 && hd % 8 == 0) {
        const uint4* r = (const uint4*)((const unsigned short*)K + row * hd);
        for (int b = 0; b < hd / 8; b++) {
            const uint4 w = r[b];
            const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const u32 h = (j & 1) ? (ws[j >> 1] & 0xffff0000u) : (ws[j >> 1] << 16);
                acc = fmaf(s_q[8 * b + j], __uint_as_float(h), acc);
            }
        }
        return acc;
    }
    for (int d = 0; d < hd; d++) acc = fmaf(s_q[d], kv_at<KV>(K, ks, row, hd, d, lb), acc);
    return acc;
}

// o[i] += e_j * v_j[lane + 32 i] over this warp's keys j = warp, warp + 4, ... < nk, in key
// order, from a rounded cache (rows k0 + j).
template <int KV>
__device__ __forceinline__ void kv_values(const void* V, const unsigned short* vs, int k0, int nk,
                                          int hd, int lb,
                                          int warp, int lane, const float* s_e, float* o) {
#pragma unroll 4
    for (int j = warp; j < nk; j += 4) {
        const float e = s_e[j];
#pragma unroll
        for (int i = 0; i < ATT_MAX_HD / 32; i++)
            if (lane + 32 * i < hd)
                o[i] = fmaf(e, kv_at<KV>(V, vs, k0 + j, hd, lane + 32 * i, lb), o[i]);
    }
}

// Must match `KvStoreArgs` in kernels/src/cuda/attention.rs.
struct KvStoreArgs {
    const float* kstage;   // [kv_heads][nstage][head_dim]: the launch's new keys, row = token
    const float* vstage;
    void* kcache;          // this layer: [kv_heads][capacity][head_dim] of the `kv` form
    void* vcache;
    unsigned short* kscale;  // KV_INT8: this layer's bf16 scales [kv_heads][capacity][hd/B]
    unsigned short* vscale;
    const int* pos;        // position of token 0
    int ntok;
    int kv_heads;
    int head_dim;
    int capacity;
    int nstage;
    int kv;                // KV_BF16 or KV_INT8
};

// bf16 bits of x, round-to-nearest-even (a NaN stays a quiet NaN): runtime/src/kv.rs.
__device__ __forceinline__ unsigned short bf16_rn(float x) {
    const u32 b = __float_as_uint(x);
    if (isnan(x)) return (unsigned short)((b >> 16) | 0x40);
    return (unsigned short)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

// x rounded up to the next bf16 (x >= 0 and not NaN), as its bits: runtime/src/kv.rs.
__device__ __forceinline__ unsigned short bf16_up(float x) {
    const u32 b = __float_as_uint(x);
    return (unsigned short)(((b & 0xffffu) ? (b | 0xffffu) + 1u : b) >> 16);
}

// Rounds one vector x of hd values into cache row `row` (one warp, lane = threadIdx.x & 31):
// bf16, or int8 per block of B = kv_block(hd): the block rotated (hadamard_lanes), then
// scale = max|y| / 127 rounded up to bf16, q = rint(y / scale) clamped to [-127, 127] (0 where
// the scale is 0), the scale's bits into scales[row][block], as runtime/src/kv.rs (the max is
// exact in any order, and skips NaNs as the CPU's does).
__device__ __forceinline__ void kv_round_row(const float* x, void* cache, unsigned short* scales,
                                             size_t row, int hd, int kv, int lane) {
    if (kv == KV_BF16) {
        unsigned short* o = (unsigned short*)cache + row * hd;
        for (int i = lane; i < hd; i += 32) o[i] = bf16_rn(x[i]);
        return;
    }
    signed char* o = (signed char*)cache + row * hd;
    const int B = kv_block(hd);
    for (int base = 0; base < hd; base += 32) {  // warp-uniform: every lane shuffles
        const int i = base + lane;
        const float y = hadamard_lanes(i < hd ? x[i] : 0.0f, lane, B);
        float m = fmaxf(0.0f, fabsf(y));
        for (int h = 1; h < B; h <<= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, h));
        const unsigned short bits = bf16_up(__fdiv_rn(m, 127.0f));
        const float scale = bf16_f32(bits);
        const float r = scale == 0.0f ? 0.0f : rintf(__fdiv_rn(y, scale));
        if (i < hd) {
            o[i] = (signed char)(int)fminf(fmaxf(r, -127.0f), 127.0f);
            if ((lane & (B - 1)) == 0) scales[row * (hd / B) + i / B] = bits;
        }
    }
}

// Rounds the launch's new keys and values into the cache: block (kv head, token, k or v), one
// warp a vector. (Where the family norms or rotates the heads in their own launch,
// head_norm_rope does this instead, one launch fewer.)
extern "C" __global__ void __launch_bounds__(32) kv_store(KvStoreArgs a) {
    pdl_wait();
    pdl_launch_dependents();
    const int g = blockIdx.x, tok = blockIdx.y, is_v = blockIdx.z, lane = threadIdx.x;
    if (tok >= a.ntok) return;
    const int hd = a.head_dim;
    const float* x = (is_v ? a.vstage : a.kstage) + ((size_t)g * a.nstage + tok) * hd;
    const size_t row = (size_t)g * a.capacity + *a.pos + tok;
    kv_round_row(x, is_v ? a.vcache : a.kcache, is_v ? a.vscale : a.kscale, row, hd, a.kv, lane);
}

__device__ __forceinline__ float block_max128(float v, float* red) {
    v = warp_max(v);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float m = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
    return m;
}

__device__ __forceinline__ float block_sum128(float v, float* red) {
    v = warp_sum(v);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    return (red[0] + red[1]) + (red[2] + red[3]);
}

// Keys per warp with loads in flight in the output sum (a measuring knob; same bits for any).
#ifndef ATT_V_UNROLL
#define ATT_V_UNROLL 4
#endif

// o[i] += e_j * v_j[lane + 32 i] over this warp's keys j = warp, warp + 4, ... < nk, in key
// order, for a head width of 32 DPL known at compile time: the loads are unconditional, so
// the unrolled keys' loads are all in flight at once.
template <int DPL>
__device__ __forceinline__ void attention_values_w(const float* vbase, int nk, int warp, int lane,
                                                   const float* s_e, float* o) {
#pragma unroll ATT_V_UNROLL
    for (int j = warp; j < nk; j += 4) {
        const float e = s_e[j];
        const float* vr = vbase + (size_t)j * (32 * DPL);
#pragma unroll
        for (int i = 0; i < DPL; i++) o[i] = fmaf(e, vr[lane + 32 * i], o[i]);
    }
}

// The same for any head width (multiples of 32 up to ATT_MAX_HD take the fixed-width loop, several
// times faster than the predicated loop of the other widths: docs/decisions/0010).
__device__ __forceinline__ void attention_values(const float* vbase, int nk, int hd, int warp,
                                                 int lane, const float* s_e, float* o) {
    switch (hd) {
    case 32: attention_values_w<1>(vbase, nk, warp, lane, s_e, o); return;
    case 64: attention_values_w<2>(vbase, nk, warp, lane, s_e, o); return;
    case 96: attention_values_w<3>(vbase, nk, warp, lane, s_e, o); return;
    case 128: attention_values_w<4>(vbase, nk, warp, lane, s_e, o); return;
    case 160: attention_values_w<5>(vbase, nk, warp, lane, s_e, o); return;
    case 192: attention_values_w<6>(vbase, nk, warp, lane, s_e, o); return;
    case 224: attention_values_w<7>(vbase, nk, warp, lane, s_e, o); return;
    case 256: attention_values_w<8>(vbase, nk, warp, lane, s_e, o); return;
    default: break;
    }
#pragma unroll ATT_V_UNROLL
    for (int j = warp; j < nk; j += 4) {
        const float e = s_e[j];
        const float* vr = vbase + (size_t)j * hd;
#pragma unroll
        for (int i = 0; i < ATT_MAX_HD / 32; i++)
            if (lane + 32 * i < hd) o[i] = fmaf(e, vr[lane + 32 * i], o[i]);
    }
}

// Scores through shared memory (a measuring knob: 0 reads each key's row on its own thread).
#ifndef ATT_STAGED
#define ATT_STAGED 1
#endif
#define ATT_SLICE 32  // dimensions per staged slice

// The chain q . k of key k0 + tid (tid < nk; the others' results are unused) for a head width
// of 4 NF (a multiple of ATT_SLICE, at most 128): every thread first issues all its loads of
// the chunk's rows, coalesced (eight lanes take one key's 128 bytes of a slice), then the slices
// pass through shared memory one at a time (rows padded to 36 floats: no bank conflicts), and
// thread tid continues key tid's chain over each slice in dimension order. The same bits as
// reading the row on the thread: the order of the multiply-adds is the same. Each thread reading
// its own row, the uncoalesced loads queued in the L1 (docs/decisions/0010).
template <int NF>
__device__ __forceinline__ float attention_scores_staged(const float* K, int k0, int nk,
                                                         const float* s_q,
                                                         float (*s_k)[ATT_SLICE + 4]) {
    constexpr int NS = NF / (ATT_SLICE / 4), PER = ATT_CHUNK * (ATT_SLICE / 4) / ATT_THREADS;
    const int tid = threadIdx.x;
    float4 r[NS][PER];
#pragma unroll
    for (int sl = 0; sl < NS; sl++)
#pragma unroll
        for (int i = 0; i < PER; i++) {
            const int f = tid + ATT_THREADS * i, key = f >> 3;  // float4 f & 7 of the key's slice
            r[sl][i] = key < nk
                           ? ((const float4*)(K + (size_t)(k0 + key) * (4 * NF)))[8 * sl + (f & 7)]
                           : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    float acc = 0.0f;
#pragma unroll
    for (int sl = 0; sl < NS; sl++) {
        __syncthreads();  // the previous slice is read
#pragma unroll
        for (int i = 0; i < PER; i++) {
            const int f = tid + ATT_THREADS * i;
            *(float4*)&s_k[f >> 3][4 * (f & 7)] = r[sl][i];
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < ATT_SLICE / 4; j++) {
            const float4 kv = *(const float4*)&s_k[tid][4 * j];
            const float* q = s_q + ATT_SLICE * sl + 4 * j;
            acc = fmaf(q[0], kv.x, acc);
            acc = fmaf(q[1], kv.y, acc);
            acc = fmaf(q[2], kv.z, acc);
            acc = fmaf(q[3], kv.w, acc);
        }
    }
    return acc;
}

extern "C" __global__ void __launch_bounds__(ATT_THREADS) attention(AttnArgs a) {
    TRACE_BLOCK(4);
    __shared__ float s_q[ATT_MAX_HD];
    __shared__ float s_e[ATT_CHUNK];
    __shared__ float s_o[4][ATT_MAX_HD];
    __shared__ __align__(16) float s_k[ATT_CHUNK][ATT_SLICE + 4];
    __shared__ float s_red[4];
    __shared__ int s_last;
    const int c = blockIdx.x, head = blockIdx.y, tok = blockIdx.z;
    const int tid = threadIdx.x;
    const int hd = a.head_dim;
    const int kvh = head / (a.heads / a.kv_heads);
    const int esize = a.kv == KV_F32 ? 4 : a.kv == KV_BF16 ? 2 : 1;
    const float* K = (const float*)((const char*)a.kcache + (size_t)kvh * a.capacity * hd * esize);
    const float* V = (const float*)((const char*)a.vcache + (size_t)kvh * a.capacity * hd * esize);
    const int lb = a.kv == KV_INT8 ? kv_block_log2(hd) : 0;
    const size_t scale_row0 = a.kv == KV_INT8 ? ((size_t)kvh * a.capacity * hd) >> lb : 0;
    const unsigned short* KS = a.kscale + scale_row0;
    const unsigned short* VS = a.vscale + scale_row0;
    // The position is only advanced by a step's last kernel, which finished before this
    // launch's predecessor started, so it may be read before the wait.
    const int p = *a.pos + tok;
    const int from = a.window > 0 ? max(0, p + 1 - a.window) : 0;
    const int c_first = from / ATT_CHUNK, c_last = p / ATT_CHUNK;
    if (c < c_first || c > c_last) return;
    const int nch = c_last - c_first + 1;
    const int k0 = max(c * ATT_CHUNK, from), k1 = min(c * ATT_CHUNK + ATT_CHUNK, p + 1);
    if (a.prefetch == 2 && tid == 0 && k1 <= a.capacity && (hd * esize) % 16 == 0) {
        // The chunk's cache rows before the token's own (which the predecessor writes) are old:
        // they stream into the L2 while the predecessor finishes, so the loads below, on the
        // critical path, hit the L2 instead of memory (docs/decisions/0010). A hint only: no
        // value depends on it.
        const u32 bytes = (u32)((k1 - k0) * hd * esize);
        const char* kp = (const char*)K + (size_t)k0 * hd * esize;
        const char* vp = (const char*)V + (size_t)k0 * hd * esize;
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(kp), "r"(bytes) : "memory");
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(vp), "r"(bytes) : "memory");
    }
    pdl_wait();
    pdl_launch_dependents();
    const size_t qo = ((size_t)tok * a.heads + head) * hd;

    // int8's cache holds rotated blocks: the query's blocks are rotated to match (times 1/B,
    // exact); the loops over dimensions step whole warps, whose lanes shuffle together.
    const bool rotated = a.kv == KV_INT8;
    const int B = rotated ? kv_block(hd) : 1;
    const float inv_b = 1.0f / (float)B;
    for (int base = tid & ~31; base < hd; base += ATT_THREADS) {
        const int d = base + (tid & 31);
        const float x = d < hd ? a.q[qo + d] : 0.0f;
        const float y = rotated ? __fmul_rn(hadamard_lanes(x, tid & 31, B), inv_b) : x;
        if (d < hd) s_q[d] = y;
    }
    __syncthreads();
    TRACE_MARK(1);

    // Scores.
    const int k = k0 + tid;
    float s = CLLM_NEG_INF;
    if (a.kv != KV_F32) {
        if (k < k1) {
            const float acc = a.kv == KV_BF16 ? kv_score<KV_BF16>(K, KS, k, hd, lb, s_q)
                                              : kv_score<KV_INT8>(K, KS, k, hd, lb, s_q);
            s = acc * a.scale;
        }
    } else if (ATT_STAGED && hd % 32 == 0 && hd <= 128) {
        // Block-uniform: the staged form's barriers need every thread.
        float acc = 0.0f;
        switch (hd) {
        case 32: acc = attention_scores_staged<8>(K, k0, k1 - k0, s_q, s_k); break;
        case 64: acc = attention_scores_staged<16>(K, k0, k1 - k0, s_q, s_k); break;
        case 96: acc = attention_scores_staged<24>(K, k0, k1 - k0, s_q, s_k); break;
        default: acc = attention_scores_staged<32>(K, k0, k1 - k0, s_q, s_k); break;
        }
        if (k < k1) s = acc * a.scale;
    } else if (k < k1) {
        const float4* kr = (const float4*)(K + (size_t)k * hd);
        float acc = 0.0f;
        for (int d4 = 0; d4 < hd / 4; d4++) {
            float4 kv = kr[d4];
            acc = fmaf(s_q[4 * d4], kv.x, acc);
            acc = fmaf(s_q[4 * d4 + 1], kv.y, acc);
            acc = fmaf(s_q[4 * d4 + 2], kv.z, acc);
            acc = fmaf(s_q[4 * d4 + 3], kv.w, acc);
        }
        s = acc * a.scale;
    }
    TRACE_MARK(2);
    const float m = block_max128(s, s_red);
    const float e = k < k1 ? expf(s - m) : 0.0f;
    s_e[tid] = e;
    const float l = block_sum128(e, s_red);  // its barriers also publish s_e
    TRACE_MARK(3);

    // Output: warp w accumulates keys w, w + 4, ... (lane: dims lane, lane + 32, ...), then the
    // four warp sums are added in warp order.
    const int nk = k1 - k0;
    const size_t slot = ((size_t)tok * a.heads + head) * a.cmax + c;
    const int warp = tid >> 5, lane = tid & 31;
    float o[ATT_MAX_HD / 32];
#pragma unroll
    for (int i = 0; i < ATT_MAX_HD / 32; i++) o[i] = 0.0f;
    if (a.kv == KV_BF16) kv_values<KV_BF16>(V, VS, k0, nk, hd, lb, warp, lane, s_e, o);
    else if (a.kv == KV_INT8) kv_values<KV_INT8>(V, VS, k0, nk, hd, lb, warp, lane, s_e, o);
    else attention_values(V + (size_t)k0 * hd, nk, hd, warp, lane, s_e, o);
#pragma unroll
    for (int i = 0; i < ATT_MAX_HD / 32; i++)
        if (lane + 32 * i < hd) s_o[warp][lane + 32 * i] = o[i];
    __syncthreads();
    TRACE_MARK(4);
    for (int base = tid & ~31; base < hd; base += ATT_THREADS) {
        const int d = base + (tid & 31);
        const float od = d < hd ? ((s_o[0][d] + s_o[1][d]) + s_o[2][d]) + s_o[3][d] : 0.0f;
        if (nch == 1) {
            const float r = od / l;
            const float y = rotated ? __fmul_rn(hadamard_lanes(r, tid & 31, B), inv_b) : r;
            if (d < hd) a.out[qo + d] = y;
        } else if (d < hd) {
            a.part_o[slot * hd + d] = od;
        }
    }
    if (nch == 1) return;
    if (tid == 0) {
        a.part_ml[slot * 2] = m;
        a.part_ml[slot * 2 + 1] = l;
    }
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        int ticket = atomicAdd(&a.counters[tok * a.heads + head], 1);
        s_last = ticket == nch - 1;
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    // The last block combines the chunks in order (L2 reads: other blocks wrote them).
    const size_t base = ((size_t)tok * a.heads + head) * a.cmax;
    float M = CLLM_NEG_INF;
    for (int cc = c_first; cc <= c_last; cc++) M = fmaxf(M, __ldcg(&a.part_ml[(base + cc) * 2]));
    float L = 0.0f;
    for (int cc = c_first; cc <= c_last; cc++) {
        float w = expf(__ldcg(&a.part_ml[(base + cc) * 2]) - M);
        L = fmaf(w, __ldcg(&a.part_ml[(base + cc) * 2 + 1]), L);
    }
    for (int dbase = tid & ~31; dbase < hd; dbase += ATT_THREADS) {
        const int d = dbase + (tid & 31);
        float o = 0.0f;
        if (d < hd) {
            for (int cc = c_first; cc <= c_last; cc++) {
                float w = expf(__ldcg(&a.part_ml[(base + cc) * 2]) - M);
                o = fmaf(w, __ldcg(&a.part_o[(base + cc) * hd + d]), o);
            }
        }
        const float r = o / L;
        const float y = rotated ? __fmul_rn(hadamard_lanes(r, tid & 31, B), inv_b) : r;
        if (d < hd) a.out[qo + d] = y;
    }
    if (tid == 0) a.counters[tok * a.heads + head] = 0;
}
