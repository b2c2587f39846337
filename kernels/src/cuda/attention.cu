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
// The cache stores keys and values as f32, bf16 or int8 with one f32 scale per vector (`kv`,
// runtime/src/kv.rs defines the rounding): kv_store rounds the launch's new keys and values from
// the QKV launch's staging area into the cache, and the attention reads every key and value back
// as f32 (bf16 exactly, int8 as q * scale), so prefill and decode read the same stored form.

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
    const float* kscale;   // KV_INT8: this layer's scales [kv_heads][capacity]
    const float* vscale;
};

// Element d of cached row `row` as f32, from the stored form KV.
template <int KV>
__device__ __forceinline__ float kv_at(const void* base, const float* scale, size_t row, int hd,
                                       int d) {
    if (KV == KV_BF16)
        return __uint_as_float((u32)((const unsigned short*)base)[row * hd + d] << 16);
    if (KV == KV_INT8)
        return __fmul_rn((float)((const signed char*)base)[row * hd + d], scale[row]);
    return ((const float*)base)[row * hd + d];
}

// q . k of cached key `row` over head_dim in order (one fmaf per element, as the f32 path).
template <int KV>
__device__ __forceinline__ float kv_score(const void* K, const float* ks, size_t row, int hd,
                                          const float* s_q) {
    float acc = 0.0f;
    if (KV == KV_INT8 && hd % 16 == 0) {
        const uint4* r = (const uint4*)((const signed char*)K + row * hd);
        const float sc = ks[row];
        for (int b = 0; b < hd / 16; b++) {
            const uint4 w = r[b];
            const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
            for (int j = 0; j < 16; j++) {
                const float x = (float)(signed char)(ws[j >> 2] >> (8 * (j & 3)));
                acc = fmaf(s_q[16 * b + j], __fmul_rn(x, sc), acc);
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
    for (int d = 0; d < hd; d++) acc = fmaf(s_q[d], kv_at<KV>(K, ks, row, hd, d), acc);
    return acc;
}

// o[i] += e_j * v_j[lane + 32 i] over this warp's keys j = warp, warp + 4, ... < nk, in key
// order, from a rounded cache (rows k0 + j).
template <int KV>
__device__ __forceinline__ void kv_values(const void* V, const float* vs, int k0, int nk, int hd,
                                          int warp, int lane, const float* s_e, float* o) {
#pragma unroll 4
    for (int j = warp; j < nk; j += 4) {
        const float e = s_e[j];
#pragma unroll
        for (int i = 0; i < ATT_MAX_HD / 32; i++)
            if (lane + 32 * i < hd) o[i] = fmaf(e, kv_at<KV>(V, vs, k0 + j, hd, lane + 32 * i), o[i]);
    }
}

// Must match `KvStoreArgs` in kernels/src/cuda/attention.rs.
struct KvStoreArgs {
    const float* kstage;   // [kv_heads][nstage][head_dim]: the launch's new keys, row = token
    const float* vstage;
    void* kcache;          // this layer: [kv_heads][capacity][head_dim] of the `kv` form
    void* vcache;
    float* kscale;         // KV_INT8: this layer's scales [kv_heads][capacity]
    float* vscale;
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

// Rounds one vector x of hd values into cache row `row` (one warp, lane = threadIdx.x & 31):
// bf16, or int8 with scale = max|x| / 127, q = rint(x / scale) clamped to [-127, 127] (0 where
// the scale is 0) into scales[row], as runtime/src/kv.rs (the max is exact in any order).
__device__ __forceinline__ void kv_round_row(const float* x, void* cache, float* scales,
                                             size_t row, int hd, int kv, int lane) {
    if (kv == KV_BF16) {
        unsigned short* o = (unsigned short*)cache + row * hd;
        for (int i = lane; i < hd; i += 32) o[i] = bf16_rn(x[i]);
        return;
    }
    float m = 0.0f;
    for (int i = lane; i < hd; i += 32) m = fmaxf(m, fabsf(x[i]));
    m = warp_max(m);
    const float scale = __fdiv_rn(m, 127.0f);
    signed char* o = (signed char*)cache + row * hd;
    for (int i = lane; i < hd; i += 32) {
        const float r = scale == 0.0f ? 0.0f : rintf(__fdiv_rn(x[i], scale));
        o[i] = (signed char)(int)fminf(fmaxf(r, -127.0f), 127.0f);
    }
    if (lane == 0) scales[row] = scale;
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
    const float* KS = a.kscale + (a.kv == KV_INT8 ? (size_t)kvh * a.capacity : 0);
    const float* VS = a.vscale + (a.kv == KV_INT8 ? (size_t)kvh * a.capacity : 0);
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

    for (int d = tid; d < hd; d += ATT_THREADS) s_q[d] = a.q[qo + d];
    __syncthreads();
    TRACE_MARK(1);

    // Scores.
    const int k = k0 + tid;
    float s = CLLM_NEG_INF;
    if (a.kv != KV_F32) {
        if (k < k1) {
            const float acc = a.kv == KV_BF16 ? kv_score<KV_BF16>(K, KS, k, hd, s_q)
                                              : kv_score<KV_INT8>(K, KS, k, hd, s_q);
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
    if (a.kv == KV_BF16) kv_values<KV_BF16>(V, VS, k0, nk, hd, warp, lane, s_e, o);
    else if (a.kv == KV_INT8) kv_values<KV_INT8>(V, VS, k0, nk, hd, warp, lane, s_e, o);
    else attention_values(V + (size_t)k0 * hd, nk, hd, warp, lane, s_e, o);
#pragma unroll
    for (int i = 0; i < ATT_MAX_HD / 32; i++)
        if (lane + 32 * i < hd) s_o[warp][lane + 32 * i] = o[i];
    __syncthreads();
    TRACE_MARK(4);
    for (int d = tid; d < hd; d += ATT_THREADS) {
        float od = ((s_o[0][d] + s_o[1][d]) + s_o[2][d]) + s_o[3][d];
        if (nch == 1) a.out[qo + d] = od / l;
        else a.part_o[slot * hd + d] = od;
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
    for (int d = tid; d < hd; d += ATT_THREADS) {
        float o = 0.0f;
        for (int cc = c_first; cc <= c_last; cc++) {
            float w = expf(__ldcg(&a.part_ml[(base + cc) * 2]) - M);
            o = fmaf(w, __ldcg(&a.part_o[(base + cc) * hd + d]), o);
        }
        a.out[qo + d] = o / L;
    }
    if (tid == 0) a.counters[tok * a.heads + head] = 0;
}
