// Matrix-vector products for decode (one token) and prefill (NT tokens per block), with the
// weight dequantized in registers and a fused epilogue per use in a Llama layer.
//
// Work unit: `ksplit` warps compute two weight rows (A and B) against the block's NT tokens.
// Lane `l` of the unit's warp `k` reads the 16-byte weight vectors 32k + l, 32k + l + 32 ksplit,
// ... of a row (coalesced, UNROLL loads in flight per row; the quantized forms' vectors of a
// whole chunk of 32 are read word-wise, see word_chunk), accumulates each token's partial dot
// product in float32 in vector order and element order; each warp combines its 32 lane sums
// with a fixed xor butterfly, and the unit's first warp adds the ksplit warp sums in warp order.
// The host picks ksplit from the weight's shape alone, so the order depends only on the weight:
// the same row gets the same bits for any NT (prefill or decode). One-token launches whose
// weights share a kind stream instead (gemv_stream, at the end): the same units and reductions,
// with each block running several blocks' units. int8 launches (per row, or int8g in groups of
// whole 64-column steps) mostly take the integer tensor cores instead (gemv_mma.cu), prefill and
// decode alike.
//
// RMSNorm is folded in by linearity: the producer of a normed input writes `xw = w_norm * h`
// and per-block partial sums of `h^2`; the consumer sums the partials in a fixed order, forms
// `inv = 1 / sqrt(sum / dim + eps)` and scales each dot product by it.
//
// Modes (the unit -> rows mapping and the epilogue):
//   QKV:    units are (row, row + head_dim/2) pairs of the q, k, v projections; the epilogue
//           applies the norm, the bias, RoPE (rotate-half, q and k; left to the head_norm_rope
//           launch of misc.cu where `rope_cos` is null) and writes q to `out`, k and v to the
//           layer's KV cache at the token's position.
//   RESID:  units are rows (2u, 2u+1); h += W x (+ bias); xw = w_next_norm * h; block partials
//           of h^2 for the next norm.
//   GATEUP: units are (gate row u, up row u); act = silu(g) * u, or gelu_tanh(g) * u (`act`).
//   LOGITS: units are rows (2u, 2u+1); logits = inv * W x, and a running argmax per token.

#define MODE_QKV 0
#define MODE_RESID 1
#define MODE_GATEUP 2
#define MODE_LOGITS 3

// GATEUP's activation (`act`).
#define ACT_SILU 0
#define ACT_GELU_TANH 1

// Must match `GemvArgs` in kernels/src/cuda/gemv.rs.
struct GemvArgs {
    WDesc w[3];
    const float* x;           // input rows [ntok][x_stride]
    const float* partial;     // [ntok][PSTRIDE]: the producer's block partials of h^2, or null
    const float* norm_next;   // RESID: f32 weight of the next norm [rows]
    const float* rope_cos;    // QKV: [capacity][head_dim / 2]
    const float* rope_sin;
    const int* pos;           // position of token 0
    float* out;               // QKV: q [ntok][out_stride]; RESID: h; GATEUP: act; LOGITS: logits
    float* xw_out;            // RESID: xw [ntok][out_stride]
    float* partial_out;       // RESID: [ntok][PSTRIDE] block partials of h^2
    float* kcache;            // QKV: this layer's keys [kv_heads][capacity][head_dim]
    float* vcache;
    u64* argmax;              // LOGITS: [ntok], or null
    int* pos_inc;             // LOGITS: if set, block 0 adds ntok to it at the end
    unsigned char* xq;        // batches on the tensor cores (gemv_mma.cu): x's pieces [ntok][cols * 4]
    int* xq_shift;            // and each token's shift S [ntok]
    int mode;
    int ntok;
    int x_stride;
    int out_stride;
    int nparts;               // partials per token in `partial`
    int norm_dim;             // the input norm's width
    float eps;                // the input norm's epsilon
    int units;
    int u1;                   // QKV: first unit of k
    int u2;                   // QKV: first unit of v
    int head_dim;
    int capacity;
    int ksplit;               // warps per unit: 1, 2 or 4
    int pipe;                 // one token: 0 or 1 = batches of 8 vectors per row, loaded after
                              // each batch's products; 2 / 3 = batches of 4 / 2, the next batch's
                              // loads issued before this batch's products (same order, same bits)
    int act;                  // GATEUP: ACT_SILU or ACT_GELU_TANH
    int kv_stage;             // QKV: 1 = k and v go to a staging area of `capacity` token rows,
                              // row = the token's index in the launch (kv_store rounds them into
                              // the cache); 0 = into the f32 cache at the token's position
};

// One-token launches whose weights include a float form may get a copy of the token's x in
// dynamic shared memory (see gemv_body).
extern __shared__ float4 gemv_x[];

// Float forms' x vectors for NT tokens. One token: `xs[1]` is the shared copy, or the global
// row where the launch has none, read with generic loads; more: global memory through the
// read-only cache. The int8 and int4 forms read global memory always: in shared memory their
// wider x per weight vector (16 or 32 floats per lane, so lanes 64 or 128 bytes apart) met bank
// conflicts (docs/decisions/0008).
template <int NT>
__device__ __forceinline__ const float4* float_x(const float* const* xs, int t, size_t col) {
    return (const float4*)(xs[NT == 1 ? 1 : t] + col);
}
template <int NT>
__device__ __forceinline__ float4 ldx(const float4* p) {
    if (NT == 1) return *p;
    return __ldg(p);
}

// Weight elements per 16-byte vector.
template <int KIND>
__device__ constexpr int elements_per_vector() {
    return KIND == KIND_F32 ? 4
           : ((KIND == KIND_INT8 || KIND == KIND_INT8G) ? 16 : (KIND == KIND_INT4 ? 32 : 8));
}

// Quantized rows are read in chunks of 32 vectors (512 int8 or 1024 int4 columns), one chunk
// per warp and step. Lane l's 16 bytes of a whole chunk are the chunk's 4-byte words l, l + 32,
// l + 64 and l + 96, so each of the lane's x reads (4 columns of int8, 8 of int4 per word) is
// part of one contiguous warp-wide read. With each lane's 16 contiguous bytes (what a partial
// last chunk still reads), lanes' x lay 64 or 128 bytes apart and every warp-wide x load touched
// 16 or 32 L1 lines: the x reads, not the weights, bounded the int8 and int4 forms
// (docs/decisions/0005).
// GEMV_COAL=0 (a define, for measuring) reads every chunk the partial way.
#ifndef GEMV_COAL
#define GEMV_COAL 1
#endif

// Whether vector v of a row of nvec vectors lies in a whole chunk read word-wise (the same on
// every lane of the warp: lanes read vectors 32 c + lane).
template <int KIND>
__device__ __forceinline__ bool word_chunk(int v, int nvec) {
    return GEMV_COAL && (KIND == KIND_INT8 || KIND == KIND_INT8G || KIND == KIND_INT4) &&
           (v | 31) < nvec;
}

// The first column of word j of vector v (within its row): word-wise chunks put lane l's words
// 32 words apart, partial chunks keep them contiguous.
template <int KIND>
__device__ __forceinline__ int word_col(int v, bool words, int j) {
    const int EPW = KIND == KIND_INT4 ? 8 : 4;  // elements per 4-byte word
    return words ? (v & ~31) * (4 * EPW) + (v & 31) * EPW + 32 * EPW * j : v * (4 * EPW) + EPW * j;
}

// acc[r][t] += row_r[vector v] . x_t[vector v], for R rows of one form sharing the x loads.
// `wv[r]` is the vector of row r; int8g's `sv[r][j]` is the scale of word j's group, loaded with
// it (see load_vecs). `words`: v lies in a word-wise chunk (see word_chunk).
template <int NT, int KIND, int R>
__device__ __forceinline__ void vec_fma(const uint4* wv, const float (*sv)[4], int v, bool words,
                                        const WDesc* const* w, const int* row, int groups,
                                        int gshift, const float* const* xs, float (*acc)[NT]) {
    if (KIND == KIND_INT4) {
        // s, m: each word's group (one group for the whole vector in a partial chunk)
        float s[R][4], m[R][4];
        float q[R][32];
#pragma unroll
        for (int r = 0; r < R; r++) {
            const unsigned short* sc = (const unsigned short*)w[r]->scales + (size_t)row[r] * groups;
            const unsigned short* mn = (const unsigned short*)w[r]->mins + (size_t)row[r] * groups;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                if (words || j == 0) {
                    const int g = word_col<KIND>(v, words, j) >> gshift;
                    s[r][j] = f16_to_f32(sc[g]);
                    m[r][j] = f16_to_f32(mn[g]);
                }
            }
            u32 ww[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                u32 lo = ww[j] & 0x0f0f0f0fu;
                u32 hi = (ww[j] >> 4) & 0x0f0f0f0fu;
#pragma unroll
                for (int b = 0; b < 4; b++) {
                    // 0x4B0000nn is 2^23 + nn: subtracting 2^23 gives the nibble exactly.
                    q[r][8 * j + 2 * b] =
                        __uint_as_float(__byte_perm(lo, 0x4B000000u, 0x7540 + b)) - 8388608.0f;
                    q[r][8 * j + 2 * b + 1] =
                        __uint_as_float(__byte_perm(hi, 0x4B000000u, 0x7540 + b)) - 8388608.0f;
                }
            }
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            // Eight independent chains (one per float4 of x), then a fixed tree per group: short
            // dependency chains keep the multiply-adds off the critical path.
            float qc[R][8], sc[8];
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const float4 xv =
                    __ldg((const float4*)(xs[t] + word_col<KIND>(v, words, k >> 1)) + (k & 1));
#pragma unroll
                for (int r = 0; r < R; r++) {
                    float c = q[r][4 * k] * xv.x;
                    c = fmaf(q[r][4 * k + 1], xv.y, c);
                    c = fmaf(q[r][4 * k + 2], xv.z, c);
                    qc[r][k] = fmaf(q[r][4 * k + 3], xv.w, c);
                }
                sc[k] = (xv.x + xv.y) + (xv.z + xv.w);
            }
            if (words) {
                // One scale and min per word (8 columns, one group).
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const float sx = sc[2 * j] + sc[2 * j + 1];
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        acc[r][t] = fmaf(s[r][j], qc[r][2 * j] + qc[r][2 * j + 1], acc[r][t]);
                        acc[r][t] = fmaf(m[r][j], sx, acc[r][t]);
                    }
                }
            } else {
                float sx = ((sc[0] + sc[1]) + (sc[2] + sc[3])) + ((sc[4] + sc[5]) + (sc[6] + sc[7]));
#pragma unroll
                for (int r = 0; r < R; r++) {
                    float qx = ((qc[r][0] + qc[r][1]) + (qc[r][2] + qc[r][3])) +
                               ((qc[r][4] + qc[r][5]) + (qc[r][6] + qc[r][7]));
                    acc[r][t] = fmaf(s[r][0], qx, acc[r][t]);
                    acc[r][t] = fmaf(m[r][0], sx, acc[r][t]);
                }
            }
        }
    } else if (KIND == KIND_INT8 || KIND == KIND_INT8G) {
        float q[R][16];
#pragma unroll
        for (int r = 0; r < R; r++) {
            u32 ww[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                u32 b = ww[j] ^ 0x80808080u;  // two's complement -> biased by 128
#pragma unroll
                for (int k = 0; k < 4; k++)
                    q[r][4 * j + k] =
                        __uint_as_float(__byte_perm(b, 0x4B000000u, 0x7540 + k)) - 8388736.0f;
            }
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            // Four independent chains (one per word, 4 columns of x), then a fixed tree.
            float c[R][4];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const float4 xv = __ldg((const float4*)(xs[t] + word_col<KIND>(v, words, k)));
#pragma unroll
                for (int r = 0; r < R; r++) {
                    float d = q[r][4 * k] * xv.x;
                    d = fmaf(q[r][4 * k + 1], xv.y, d);
                    d = fmaf(q[r][4 * k + 2], xv.z, d);
                    c[r][k] = fmaf(q[r][4 * k + 3], xv.w, d);
                }
            }
#pragma unroll
            for (int r = 0; r < R; r++) {
                if (KIND == KIND_INT8G && words) {
                    // Each word in its own group, scaled here.
#pragma unroll
                    for (int k = 0; k < 4; k++) acc[r][t] = fmaf(sv[r][k], c[r][k], acc[r][t]);
                } else {
                    float d = (c[r][0] + c[r][1]) + (c[r][2] + c[r][3]);
                    // int8g in a partial chunk: the vector's 16 columns lie in one group, scaled
                    // here; int8: the row scale multiplies the whole dot product in the epilogue.
                    if (KIND == KIND_INT8G) acc[r][t] = fmaf(sv[r][0], d, acc[r][t]);
                    else acc[r][t] = acc[r][t] + d;
                }
            }
        }
    } else if (KIND == KIND_F32) {
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float4 xv = ldx<NT>(float_x<NT>(xs, t, (size_t)v * 4));
#pragma unroll
            for (int r = 0; r < R; r++) {
                acc[r][t] = fmaf(__uint_as_float(wv[r].x), xv.x, acc[r][t]);
                acc[r][t] = fmaf(__uint_as_float(wv[r].y), xv.y, acc[r][t]);
                acc[r][t] = fmaf(__uint_as_float(wv[r].z), xv.z, acc[r][t]);
                acc[r][t] = fmaf(__uint_as_float(wv[r].w), xv.w, acc[r][t]);
            }
        }
    } else {
        float f[R][8];
#pragma unroll
        for (int r = 0; r < R; r++) {
            u32 ww[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                if (KIND == KIND_BF16) {
                    f[r][2 * j] = bf16_lo(ww[j]);
                    f[r][2 * j + 1] = bf16_hi(ww[j]);
                } else {
                    f[r][2 * j] = f16_to_f32((unsigned short)(ww[j] & 0xffffu));
                    f[r][2 * j + 1] = f16_to_f32((unsigned short)(ww[j] >> 16));
                }
            }
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            // Two independent chains (one per float4 of x), then their sum.
            const float4* xp = float_x<NT>(xs, t, (size_t)v * 8);
            float4 xa = ldx<NT>(xp);
            float4 xb = ldx<NT>(xp + 1);
#pragma unroll
            for (int r = 0; r < R; r++) {
                float c0 = f[r][0] * xa.x;
                c0 = fmaf(f[r][1], xa.y, c0);
                c0 = fmaf(f[r][2], xa.z, c0);
                c0 = fmaf(f[r][3], xa.w, c0);
                float c1 = f[r][4] * xb.x;
                c1 = fmaf(f[r][5], xb.y, c1);
                c1 = fmaf(f[r][6], xb.z, c1);
                c1 = fmaf(f[r][7], xb.w, c1);
                acc[r][t] = acc[r][t] + (c0 + c1);
            }
        }
    }
}

// Vector v of R rows (zeros past the row's end; see word_chunk for which bytes a lane reads) and,
// for int8g, the f32 scales of its words' groups: both weights, never written by a kernel, so
// they are loaded together, also before the programmatic-launch wait (a scale load that waited
// for its vector's dot product would put a dependent load on the critical path). A column's
// group is col >> gshift (groups of 32, 64 or 128 columns, checked by the host): a word-wise
// vector has 4 groups (its words are 128 columns apart), a contiguous one 1. Past the row's end
// the scale load reads the row's first group (a valid address, unconditional), not used.
template <int KIND, int R>
__device__ __forceinline__ void load_vecs(const uint4* const* wr, const float* const* gs, int v,
                                          int nvec, int gshift, uint4* wv, float (*sv)[4]) {
    const bool words = word_chunk<KIND>(v, nvec);
    if (words) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            const u32* c = (const u32*)(wr[r] + (v & ~31)) + (v & 31);
            wv[r] = make_uint4(ld_stream32(c), ld_stream32(c + 32), ld_stream32(c + 64),
                               ld_stream32(c + 96));
        }
    } else {
        const bool in = v < nvec;
#pragma unroll
        for (int r = 0; r < R; r++) wv[r] = in ? ld_stream(wr[r] + v) : make_uint4(0, 0, 0, 0);
    }
    if (KIND == KIND_INT8G) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if (words || j == 0) {
                const int g = v < nvec ? word_col<KIND>(v, words, j) >> gshift : 0;
#pragma unroll
                for (int r = 0; r < R; r++) sv[r][j] = __ldg(gs[r] + g);
            }
        }
    }
}

// The lane's share of R rows' dot products (same form and width, and group size): vectors
// 32 wk + lane + 32 ks i in order, U vectors of each row in flight (int8g: with their group
// scales). The first batch is loaded before the programmatic-launch wait (weights are never
// written by a kernel).
template <int NT, int KIND, int R, int U, bool PIPE, class F>
__device__ __forceinline__ void dot_rows(const WDesc* const* w, const int* row,
                                         const float* const* xs, int wk, int ks,
                                         float (*acc)[NT], bool& waited, F& after_wait) {
    const int lane = threadIdx.x & 31;
    constexpr int EPV = elements_per_vector<KIND>();
    const int nvec = w[0]->cols / EPV;
    const size_t row_bytes = (size_t)nvec * 16;
    const uint4* wr[R];
#pragma unroll
    for (int r = 0; r < R; r++) wr[r] = (const uint4*)((const char*)w[r]->data + (size_t)row[r] * row_bytes);
    const int groups = KIND == KIND_INT4 ? w[0]->cols / w[0]->group : 1;
    // int4, int8g: the group of column c is c >> gshift; int8g's row r's scales start at gs[r].
    const int gshift = KIND == KIND_INT8G || KIND == KIND_INT4 ? __ffs(w[0]->group) - 1 : 0;
    const float* gs[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        gs[r] = KIND == KIND_INT8G
                    ? (const float*)w[r]->scales + (size_t)row[r] * (size_t)(w[0]->cols >> gshift)
                    : (const float*)w[r]->scales;
    const int step = 32 * ks;
    int v0 = 32 * wk + lane;
    uint4 wv[U][R];
    float sv[U][R][4];  // int8g: the group scales of wv[u][r]'s words (unused by the other forms)
#pragma unroll
    for (int u = 0; u < U; u++) load_vecs<KIND, R>(wr, gs, v0 + step * u, nvec, gshift, wv[u], sv[u]);
    if (!waited) {
        pdl_wait();
        pdl_launch_dependents();
        after_wait();
        TRACE_MARK(2);
        waited = true;
    }
    // PIPE: the next batch streams in while this one is multiplied, so the products of a burst
    // of arriving weights overlap the transfer of the next; otherwise the next batch is loaded
    // after the products. The products are in the same order either way.
    uint4 wn[PIPE ? U : 1][R];
    float sn[PIPE ? U : 1][R][4];
    while (v0 < nvec) {
        const int v1 = v0 + step * U;
        const bool more = v1 < nvec;
        if (PIPE && more) {
#pragma unroll
            for (int u = 0; u < U; u++) load_vecs<KIND, R>(wr, gs, v1 + step * u, nvec, gshift, wn[u], sn[u]);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int v = v0 + step * u;
            if (v < nvec)
                vec_fma<NT, KIND, R>(wv[u], sv[u], v, word_chunk<KIND>(v, nvec), w, row, groups,
                                     gshift, xs, acc);
        }
        if (!more) break;
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (PIPE) {
#pragma unroll
                for (int r = 0; r < R; r++) {
                    wv[u][r] = wn[u][r];
#pragma unroll
                    for (int j = 0; j < 4; j++) sv[u][r][j] = sn[u][r][j];
                }
            } else {
                load_vecs<KIND, R>(wr, gs, v1 + step * u, nvec, gshift, wv[u], sv[u]);
            }
        }
        v0 = v1;
    }
    TRACE_MARK(3);
}

template <int NT, int R, int U, bool PIPE, int FK, class F>
__device__ __forceinline__ void dot_rows_u(int kind, const WDesc* const* w, const int* row,
                                           const float* const* xs, int wk, int ks,
                                           float (*acc)[NT], bool& waited, F& after_wait) {
    switch (FK >= 0 ? FK : kind) {
    case KIND_F32: dot_rows<NT, KIND_F32, R, U, PIPE>(w, row, xs, wk, ks, acc, waited, after_wait); break;
    case KIND_BF16: dot_rows<NT, KIND_BF16, R, U, PIPE>(w, row, xs, wk, ks, acc, waited, after_wait); break;
    case KIND_F16: dot_rows<NT, KIND_F16, R, U, PIPE>(w, row, xs, wk, ks, acc, waited, after_wait); break;
    case KIND_INT8: dot_rows<NT, KIND_INT8, R, U, PIPE>(w, row, xs, wk, ks, acc, waited, after_wait); break;
    case KIND_INT8G: dot_rows<NT, KIND_INT8G, R, U, PIPE>(w, row, xs, wk, ks, acc, waited, after_wait); break;
    default: dot_rows<NT, KIND_INT4, R, U, PIPE>(w, row, xs, wk, ks, acc, waited, after_wait); break;
    }
}

template <int NT, int R, int FK, class F>
__device__ __forceinline__ void dot_rows_kind(int kind, int pipe, const WDesc* const* w,
                                              const int* row, const float* const* xs, int wk,
                                              int ks, float (*acc)[NT], bool& waited,
                                              F& after_wait) {
    if (NT == 1 && pipe == 2) {
        dot_rows_u<NT, R, 4, true, FK>(kind, w, row, xs, wk, ks, acc, waited, after_wait);
    } else if (NT == 1 && pipe == 3) {
        dot_rows_u<NT, R, 2, true, FK>(kind, w, row, xs, wk, ks, acc, waited, after_wait);
    } else {
        constexpr int U = NT == 1 ? 8 : (NT == 2 ? 4 : 2);
        dot_rows_u<NT, R, U, false, FK>(kind, w, row, xs, wk, ks, acc, waited, after_wait);
    }
}

// This warp's share of rows A and B (B optional) for the NT tokens: the warp sums, on every
// lane. Rows of the same form stream together and share the x loads.
template <int NT, int FK, class F>
__device__ __forceinline__ void row_dots2(const WDesc* wa, int ra, const WDesc* wb, int rb,
                                          bool has_b, int pipe, const float* const* xs, int wk,
                                          int ks,
                                          float* da, float* db, F& after_wait) {
    float acc[2][NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        acc[0][t] = 0.0f;
        acc[1][t] = 0.0f;
    }
    bool waited = false;
    if (has_b && (FK >= 0 || wa->kind == wb->kind) && wa->cols == wb->cols &&
        ((wa->kind != KIND_INT4 && wa->kind != KIND_INT8G) || wa->group == wb->group)) {
        const WDesc* w2[2] = {wa, wb};
        const int r2[2] = {ra, rb};
        dot_rows_kind<NT, 2, FK>(wa->kind, pipe, w2, r2, xs, wk, ks, acc, waited, after_wait);
    } else {
        dot_rows_kind<NT, 1, FK>(wa->kind, pipe, &wa, &ra, xs, wk, ks, acc, waited, after_wait);
        if (has_b)
            dot_rows_kind<NT, 1, FK>(wb->kind, pipe, &wb, &rb, xs, wk, ks, acc + 1, waited, after_wait);
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        da[t] = warp_sum(acc[0][t]);
        db[t] = warp_sum(acc[1][t]);
    }
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

// GELU's tanh approximation, in PyTorch's order: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
__device__ __forceinline__ float gelu_tanh(float x) {
    const float beta = 0.7978845608028654f, kappa = 0.044715f;
    const float cube = __fmul_rn(__fmul_rn(x, x), x);
    const float inner = __fmul_rn(beta, __fadd_rn(x, __fmul_rn(kappa, cube)));
    return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, tanhf(inner)));
}

// Unit `unit`'s two rows and their weights (see the modes above); seg: QKV's q, k or v.
__device__ __forceinline__ void unit_rows(const GemvArgs& a, int unit, int& seg, int& ra, int& rb,
                                          const WDesc*& wa, const WDesc*& wb) {
    seg = 0;
    if (a.mode == MODE_QKV) {
        int uu = unit;
        if (unit >= a.u2) { seg = 2; uu = unit - a.u2; }
        else if (unit >= a.u1) { seg = 1; uu = unit - a.u1; }
        const int half = a.head_dim >> 1;
        ra = (uu / half) * a.head_dim + uu % half;
        rb = ra + half;
        wa = &a.w[seg];
        wb = &a.w[seg];
    } else if (a.mode == MODE_GATEUP) {
        ra = unit; rb = unit;
        wa = &a.w[0];
        wb = &a.w[1];
    } else {
        ra = 2 * unit; rb = 2 * unit + 1;
        wa = &a.w[0];
        wb = &a.w[0];
    }
}

// A one-token block's copy of x into dynamic shared memory, every thread's loads in flight at
// once (the caller's barrier completes it).
__device__ __forceinline__ void copy_x_shared(const float* x, int cols) {
    const float4* gx = (const float4*)x;
    const int n4 = cols >> 2;
    for (int i0 = threadIdx.x; i0 < n4; i0 += 8 * GEMV_THREADS) {
        float4 v[8];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int i = i0 + k * GEMV_THREADS;
            if (i < n4) v[k] = __ldg(gx + i);
        }
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int i = i0 + k * GEMV_THREADS;
            if (i < n4) gemv_x[i] = v[k];
        }
    }
}

// The warp's sum of one token's norm partials `p[0..nparts)`: thread (w, l) sums partials
// i = 32 w + l (mod 128) in order, eight in flight (the padding zeros come after every real
// partial of the thread and add exactly: the partials are sums of squares), then the butterfly.
__device__ __forceinline__ float partials_sum(const float* p, int nparts) {
    float s = 0.0f;
    for (int i0 = threadIdx.x; i0 < nparts; i0 += 8 * GEMV_THREADS) {
        float v[8];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int i = i0 + k * GEMV_THREADS;
            v[k] = i < nparts ? p[i] : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < 8; k++) s = s + v[k];
    }
    return warp_sum(s);
}

// The input norm's factor from the block's warp sums, added in warp order.
__device__ __forceinline__ float norm_inv(const GemvArgs& a, const float* warp_sums, int stride) {
    float tot = warp_sums[0];
    for (int w = 1; w < WARPS; w++) tot = tot + warp_sums[w * stride];
    const float mean = __fdiv_rn(tot, (float)a.norm_dim);
    return __fdiv_rn(1.0f, __fsqrt_rn(mean + a.eps));
}

// The epilogue's inputs that do not depend on the products: RESID the residual rows h[ra], h[rb]
// and the next norm's weights at ra, rb (a, b, c, d); QKV the RoPE factors cos, sin (a, b).
struct EpiIn { float a, b, c, d; };

__device__ __forceinline__ void epi_load(const GemvArgs& a, int tok, int pos, int seg, int ra,
                                         int rb, bool has_b, EpiIn& in) {
    if (a.mode == MODE_RESID) {
        const float* h = a.out + (size_t)tok * a.out_stride;
        in.a = h[ra];
        in.c = a.norm_next[ra];
        if (has_b) {
            in.b = h[rb];
            in.d = a.norm_next[rb];
        }
    } else if (a.mode == MODE_QKV && seg < 2 && a.rope_cos != 0) {
        const size_t at = (size_t)pos * (a.head_dim >> 1) + ra % a.head_dim;
        in.a = a.rope_cos[at];
        in.b = a.rope_sin[at];
    }
}

// A unit's epilogue for token `tok` at position `pos`, from its rows' dot products (per-row int8
// scales already applied): the norm factor `inv` where the input is normed, the bias, then the
// mode's work. RESID returns h^2 over the rows in `sq`; LOGITS raises `key` to the rows' argmax.
__device__ __forceinline__ void epi_store(const GemvArgs& a, int tok, int pos, int seg, int ra,
                                          int rb, bool has_b, const WDesc* wa, const WDesc* wb,
                                          float ya, float yb, float inv, const EpiIn& in,
                                          float& sq, u64& key) {
    if (a.partial != 0) {
        ya = ya * inv;
        yb = yb * inv;
    }
    if (wa->bias != 0) ya = ya + wa->bias[ra];
    if (has_b && wb->bias != 0) yb = yb + wb->bias[rb];
    if (a.mode == MODE_QKV) {
        const int half = a.head_dim >> 1;
        const int i = ra % a.head_dim;
        if (seg < 2 && a.rope_cos != 0) {
            const float na = __fsub_rn(__fmul_rn(ya, in.a), __fmul_rn(yb, in.b));
            const float nb = __fadd_rn(__fmul_rn(yb, in.a), __fmul_rn(ya, in.b));
            ya = na; yb = nb;
        }
        if (seg == 0) {
            float* o = a.out + (size_t)tok * a.out_stride;
            o[ra] = ya;
            o[rb] = yb;
        } else {
            const int kvh = ra / a.head_dim;
            const int row = a.kv_stage ? tok : pos;
            float* c = (seg == 1 ? a.kcache : a.vcache) + ((size_t)kvh * a.capacity + row) * a.head_dim;
            c[i] = ya;
            c[i + half] = yb;
        }
    } else if (a.mode == MODE_RESID) {
        float* h = a.out + (size_t)tok * a.out_stride;
        float* xw = a.xw_out + (size_t)tok * a.out_stride;
        const float ha = in.a + ya;
        h[ra] = ha;
        xw[ra] = in.c * ha;
        sq = ha * ha;
        if (has_b) {
            const float hb = in.b + yb;
            h[rb] = hb;
            xw[rb] = in.d * hb;
            sq = sq + hb * hb;
        }
    } else if (a.mode == MODE_GATEUP) {
        const float g = a.act == ACT_GELU_TANH ? gelu_tanh(ya) : silu(ya);
        a.out[(size_t)tok * a.out_stride + ra] = g * yb;
    } else {
        float* o = a.out + (size_t)tok * a.out_stride;
        o[ra] = ya;
        u64 k = argmax_key(ya, (u32)ra);
        if (has_b) {
            o[rb] = yb;
            const u64 kb = argmax_key(yb, (u32)rb);
            k = kb > k ? kb : k;
        }
        key = k > key ? k : key;
    }
}

template <int NT, int FK>
__device__ __forceinline__ void gemv_body(const GemvArgs& a) {
    TRACE_BLOCK(a.mode);
    __shared__ float s_part[WARPS][2][NT];
    __shared__ float s_norm[WARPS][NT];
    __shared__ float s_red[WARPS][NT];
    __shared__ u64 s_key[NT];  // LOGITS: the block's argmax per token
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int ks = a.ksplit, upb = WARPS / a.ksplit;
    const int wu = warp / ks, wk = warp % ks;
    const int tok0 = blockIdx.y * NT;
    const int unit = blockIdx.x * upb + wu;
    for (int t = threadIdx.x; t < NT; t += GEMV_THREADS) s_key[t] = 0;

    // Token input rows (tokens past ntok read token 0 of the block and are discarded).
    // One token: xs[1] is where the float forms read x (see float_x).
    const float* xs[NT + 1];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        int tok = tok0 + t < a.ntok ? tok0 + t : tok0;
        xs[t] = a.x + (size_t)tok * a.x_stride;
    }
    // One token with float weights in a launch of one wave: the host gives the block dynamic
    // shared memory for the token's x, copied there right after the programmatic-launch wait
    // with all its loads in flight at once, so the products read it at shared-memory latency.
    // Read from global memory inside the products' loop, its loads waited a round trip per
    // batch of vectors (docs/decisions/0008).
    u32 smem_bytes = 0;
    if (NT == 1) asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(smem_bytes));
    const bool x_shared = NT == 1 && smem_bytes >= (u32)a.w[0].cols * 4u;
    xs[NT] = x_shared ? (const float*)gemv_x : xs[0];

    int seg, ra, rb;
    const WDesc* wa;
    const WDesc* wb;
    unit_rows(a, unit, seg, ra, rb, wa, wb);
    // What each warp does once, right after the programmatic-launch wait, while its first
    // weight loads are in flight: the copy of x (above), the epilogue's inputs and the norm sums.
    // The input's norm factor per token, from the producer's block partials. Fixed order for
    // any NT: thread (w, l) sums partials i = 32 w + l (mod 128) in order, each warp adds its 32
    // lanes with the butterfly, and the epilogue adds the 4 warp sums in warp order.
    // One token: the epilogue's inputs that do not depend on the products (the residual rows and
    // the next norm's weights, or the position and its RoPE factors) are loaded by the epilogue's
    // lane right after the wait, while the weights stream, instead of as a round trip after them.
    EpiIn pre = {0.0f, 0.0f, 0.0f, 0.0f};
    int pre_p = 0;
    auto after_wait = [&]() {
        if (NT == 1 && wk == 0 && lane == 0 && unit < a.units && tok0 < a.ntok) {
            if (a.mode == MODE_QKV) pre_p = *a.pos + tok0;
            epi_load(a, tok0, pre_p, seg, ra, rb, rb < wb->rows, pre);
        }
        if (x_shared) copy_x_shared(xs[0], a.w[0].cols);
        if (a.partial != 0) {
#pragma unroll
            for (int t = 0; t < NT; t++) {
                int tok = tok0 + t < a.ntok ? tok0 + t : tok0;
                const float s = partials_sum(a.partial + (size_t)tok * PSTRIDE, a.nparts);
                if (lane == 0) s_norm[warp][t] = s;
            }
        }
        // Every warp calls this once (valid units after their first weight loads, others
        // right away): the copy of x is complete after the barrier.
        if (x_shared) __syncthreads();
    };
    const bool valid = unit < a.units;
    const bool has_b = valid && rb < wb->rows;
    if (valid) {
        float da[NT], db[NT];
        row_dots2<NT, FK>(wa, ra, wb, rb, has_b, a.pipe, xs, wk, ks, da, db, after_wait);
        if (lane == 0) {
#pragma unroll
            for (int t = 0; t < NT; t++) {
                s_part[warp][0][t] = da[t];
                s_part[warp][1][t] = has_b ? db[t] : 0.0f;
            }
        }
    } else {
        pdl_wait();
        pdl_launch_dependents();
        after_wait();
    }

    TRACE_MARK(1);
    __syncthreads();

    float sq = 0.0f;  // RESID: this lane's token's h^2 over the unit's rows
    if (valid && wk == 0) {
        // Epilogue: lane t handles token t.
#pragma unroll
        for (int t = 0; t < NT; t++) {
            int tok = tok0 + t;
            if (lane != t || tok >= a.ntok) continue;
            float ya = s_part[warp][0][t], yb = s_part[warp][1][t];
            for (int k = 1; k < ks; k++) {
                ya = ya + s_part[warp + k][0][t];
                yb = yb + s_part[warp + k][1][t];
            }
            // Per-row int8 only: int8g's group scales were applied per vector.
            if (wa->kind == KIND_INT8) ya = ya * ((const float*)wa->scales)[ra];
            if (has_b && wb->kind == KIND_INT8) yb = yb * ((const float*)wb->scales)[rb];
            const float inv = a.partial != 0 ? norm_inv(a, &s_norm[0][t], NT) : 1.0f;
            const int p = a.mode != MODE_QKV ? 0 : (NT == 1 ? pre_p : *a.pos + tok);
            EpiIn in = pre;
            if (NT > 1) epi_load(a, tok, p, seg, ra, rb, has_b, in);
            u64 key = 0;
            epi_store(a, tok, p, seg, ra, rb, has_b, wa, wb, ya, yb, inv, in, sq, key);
            if (a.mode == MODE_LOGITS) atomicMax(&s_key[t], key);
        }
    }

    if (a.mode == MODE_RESID) {
        // Block partial of h^2 per token: units in order.
        if (wk == 0 && lane < NT) s_red[wu][lane] = sq;
        __syncthreads();
        if (threadIdx.x < NT) {
            int tok = tok0 + threadIdx.x;
            if (tok < a.ntok) {
                float s = 0.0f;
                for (int u = 0; u < upb; u++) s = s + s_red[u][threadIdx.x];
                a.partial_out[(size_t)tok * PSTRIDE + blockIdx.x] = s;
            }
        }
    }
    if (a.mode == MODE_LOGITS) {
        __syncthreads();
        if (threadIdx.x < NT && tok0 + threadIdx.x < a.ntok && a.argmax != 0)
            atomicMax(&a.argmax[tok0 + threadIdx.x], s_key[threadIdx.x]);
        if (a.pos_inc != 0 && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0)
            atomicAdd(a.pos_inc, a.ntok);
    }
}

// Four resident blocks per multiprocessor: the register cap made batched prefill faster with
// decode unchanged (docs/decisions/0006).
// FK: the weights' kind where every weight of the launch has it, or -1 for any mix. A one-token
// launch whose weights share a kind may take that kind's own kernel: the same code with the other
// kinds' loops left out, and registers of its own instead of the union's. The entry points are
// generated (kernels/src/cuda/program.rs, from gemv.rs's list of kinds that have one).
#define GEMV_ENTRY(NAME, NT, FK) \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS, 4) NAME(GemvArgs a) { gemv_body<NT, FK>(a); }

// ---------------------------------------------------------------------------------------------
// Streaming one-token GEMV (gemv_s1_k{kind}): the grid holds at most one wave of blocks, and each
// block runs the launch's virtual blocks blockIdx.x, blockIdx.x + gridDim.x, ... (a virtual block
// is what one block of gemv_t1 does: WARPS / ksplit units). Each warp streams its units' vectors
// as one sequence, the next batch's loads (the next unit's first batch at a unit's end) issued
// before this batch's products, so a warp pays the memory round trip and its fixed work (the
// arguments, the wait, the norm sums, the copy of x) once per launch instead of once per unit.
// Every row is reduced as in gemv_t1 (lane sums in vector order, the butterfly, the ksplit warp
// sums in warp order), and the norm partials are per virtual block, so the bits are gemv_t1's.
// Vectors per row and batch, per kind: STREAM_U_F for the float forms, STREAM_U_I8, STREAM_U_I4
// (defines, for measuring; the values are docs/decisions/0007's).
#ifndef STREAM_U
#define STREAM_U 4
#endif
#ifndef STREAM_U_F
#define STREAM_U_F STREAM_U
#endif
#ifndef STREAM_U_I8
#define STREAM_U_I8 2
#endif
#ifndef STREAM_U_I4
#define STREAM_U_I4 2
#endif
#define STREAM_MAXV 16  // virtual blocks per block of a residual launch (the host keeps to it)

// A unit as a streaming warp holds it: its rows and weights, where its vectors start, and the
// epilogue's inputs (see stream_epi).
struct SUnit {
    const WDesc* w[2];
    int row[2];           // rows read (row[1] = ra where the unit has no second row)
    const uint4* wr[2];
    int seg, ra, rb;
    bool has_b;
    EpiIn in;
    float sa, sb;         // per-row int8: the rows' scales
};

template <int EPV>
__device__ __forceinline__ void stream_unit(const GemvArgs& a, int unit, SUnit& s) {
    unit_rows(a, unit, s.seg, s.ra, s.rb, s.w[0], s.w[1]);
    s.has_b = s.rb < s.w[1]->rows;
    s.row[0] = s.ra;
    s.row[1] = s.has_b ? s.rb : s.ra;
    const size_t row_bytes = (size_t)(a.w[0].cols / EPV) * 16;
#pragma unroll
    for (int r = 0; r < 2; r++)
        s.wr[r] = (const uint4*)((const char*)s.w[r]->data + (size_t)s.row[r] * row_bytes);
}

// The unit's epilogue inputs, loaded by the epilogue's lane after the wait, when the unit's first
// weights are requested: epi_load's, and the per-row int8 scales.
template <int KIND>
__device__ __forceinline__ void stream_epi(const GemvArgs& a, int pos, SUnit& s) {
    epi_load(a, 0, pos, s.seg, s.ra, s.rb, s.has_b, s.in);
    if (KIND == KIND_INT8) {
        s.sa = ((const float*)s.w[0]->scales)[s.ra];
        if (s.has_b) s.sb = ((const float*)s.w[1]->scales)[s.rb];
    }
}

template <int KIND>
__device__ __forceinline__ void gemv_stream(const GemvArgs& a) {
    TRACE_BLOCK(a.mode);  // one record per block, not per virtual block
    constexpr int U = KIND == KIND_INT8 ? STREAM_U_I8 : KIND == KIND_INT4 ? STREAM_U_I4 : STREAM_U_F;
    constexpr int EPV = elements_per_vector<KIND>();
    __shared__ float s_norm[WARPS];
    __shared__ float s_part[2][WARPS][2];
    __shared__ float s_red[STREAM_MAXV][WARPS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int ks = a.ksplit, upb = WARPS / ks;
    const int wu = warp / ks, wk = warp % ks;
    const int nvb = (a.units + upb - 1) / upb;
    const int grid = gridDim.x;
    const int nmine = (nvb - (int)blockIdx.x + grid - 1) / grid;
    // Units grow with m, so the warp's valid ones are a prefix.
    int mv = nmine;
    if (mv > 0 && ((int)blockIdx.x + grid * (mv - 1)) * upb + wu >= a.units) mv--;
    const bool epi = wk == 0 && lane == 0;

    u32 smem_bytes = 0;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(smem_bytes));
    const bool x_shared = smem_bytes >= (u32)a.w[0].cols * 4u;
    const float* xs[2];
    xs[0] = a.x;
    xs[1] = x_shared ? (const float*)gemv_x : a.x;

    const int nvec = a.w[0].cols / EPV;
    const int step = 32 * ks;
    const int v0 = 32 * wk + lane;
    const int nb = (nvec + step * U - 1) / (step * U);  // batches per unit
    const int groups = KIND == KIND_INT4 ? a.w[0].cols / a.w[0].group : 1;
    const int gshift = KIND == KIND_INT4 ? __ffs(a.w[0].group) - 1 : 0;
    const float* no_gs[2] = {0, 0};  // int8g's group scales: int8g does not stream

    SUnit cu, nu;
    uint4 wv[U][2], wn[U][2];
    float sv[U][2][4], sn[U][2][4];
    // The first unit's rows before the wait (the weights are never written by a kernel), its
    // epilogue's inputs after it.
    const int unit0 = (int)blockIdx.x * upb + wu;
    if (mv > 0) {
        stream_unit<EPV>(a, unit0, cu);
#pragma unroll
        for (int u = 0; u < U; u++) load_vecs<KIND, 2>(cu.wr, no_gs, v0 + step * u, nvec, gshift, wv[u], sv[u]);
    }
    pdl_wait();
    pdl_launch_dependents();
    const int pos = a.mode == MODE_QKV ? *a.pos : 0;
    if (mv > 0 && epi) stream_epi<KIND>(a, pos, cu);
    if (x_shared) copy_x_shared(a.x, a.w[0].cols);
    if (a.partial != 0) {
        const float s = partials_sum(a.partial, a.nparts);
        if (lane == 0) s_norm[warp] = s;
    }
    for (int i = threadIdx.x; i < STREAM_MAXV * WARPS; i += GEMV_THREADS) (&s_red[0][0])[i] = 0.0f;
    __syncthreads();
    const float inv = a.partial != 0 ? norm_inv(a, s_norm, 1) : 1.0f;

    float acc[2][1] = {{0.0f}, {0.0f}};
    u64 key = 0;
    int m = 0, b = 0;
    while (m < mv) {
        int b1 = b + 1, m1 = m;
        if (b1 == nb) { b1 = 0; m1 = m + 1; }
        const bool more = m1 < mv;
        if (more) {
            if (b1 == 0) {
                stream_unit<EPV>(a, ((int)blockIdx.x + grid * m1) * upb + wu, nu);
                if (epi) stream_epi<KIND>(a, pos, nu);
            }
            const uint4* lw[2] = {b1 == 0 ? nu.wr[0] : cu.wr[0], b1 == 0 ? nu.wr[1] : cu.wr[1]};
#pragma unroll
            for (int u = 0; u < U; u++)
                load_vecs<KIND, 2>(lw, no_gs, v0 + step * (U * b1 + u), nvec, gshift, wn[u], sn[u]);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int v = v0 + step * (U * b + u);
            if (v < nvec)
                vec_fma<1, KIND, 2>(wv[u], sv[u], v, word_chunk<KIND>(v, nvec), cu.w, cu.row, groups,
                                    gshift, xs, acc);
        }
        if (b == nb - 1) {
            // The unit's rows are done: the warp sums, the ksplit warps' sums in warp order.
            float ya = warp_sum(acc[0][0]), yb = warp_sum(acc[1][0]);
            acc[0][0] = 0.0f;
            acc[1][0] = 0.0f;
            if (ks > 1) {
                const int par = m & 1;
                if (lane == 0) {
                    s_part[par][warp][0] = ya;
                    s_part[par][warp][1] = cu.has_b ? yb : 0.0f;
                }
                asm volatile("bar.sync %0, %1;" ::"r"(1 + wu), "r"(ks * 32) : "memory");
                if (wk == 0) {
                    ya = s_part[par][warp][0];
                    yb = s_part[par][warp][1];
                    for (int k = 1; k < ks; k++) {
                        ya = ya + s_part[par][warp + k][0];
                        yb = yb + s_part[par][warp + k][1];
                    }
                }
            }
            if (epi) {
                if (KIND == KIND_INT8) {
                    ya = ya * cu.sa;
                    if (cu.has_b) yb = yb * cu.sb;
                }
                float sq = 0.0f;
                epi_store(a, 0, pos, cu.seg, cu.ra, cu.rb, cu.has_b, cu.w[0], cu.w[1], ya, yb, inv,
                          cu.in, sq, key);
                if (a.mode == MODE_RESID && m < STREAM_MAXV) s_red[m][wu] = sq;
            }
        }
        if (!more) break;
#pragma unroll
        for (int u = 0; u < U; u++) {
#pragma unroll
            for (int r = 0; r < 2; r++) {
                wv[u][r] = wn[u][r];
#pragma unroll
                for (int j = 0; j < 4; j++) sv[u][r][j] = sn[u][r][j];
            }
        }
        if (b1 == 0) cu = nu;
        m = m1;
        b = b1;
    }

    if (a.mode == MODE_RESID) {
        // Each virtual block's partial of h^2: its units in order (gemv_t1's block partial).
        __syncthreads();
        if ((int)threadIdx.x < nmine && threadIdx.x < STREAM_MAXV) {
            float s = 0.0f;
            for (int u = 0; u < upb; u++) s = s + s_red[threadIdx.x][u];
            a.partial_out[(size_t)blockIdx.x + (size_t)grid * threadIdx.x] = s;
        }
    }
    if (a.mode == MODE_LOGITS) {
        if (epi && key != 0 && a.argmax != 0) atomicMax(&a.argmax[0], key);
        if (a.pos_inc != 0 && blockIdx.x == 0 && threadIdx.x == 0) atomicAdd(a.pos_inc, a.ntok);
    }
}

// Entry points generated (kernels/src/cuda/program.rs) for the kinds that stream.
#define GEMV_STREAM_ENTRY(NAME, FK) \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS, 4) NAME(GemvArgs a) { gemv_stream<FK>(a); }
