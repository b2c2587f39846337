// Matrix-vector products for decode (one token) and prefill (NT tokens per block), with the
// weight dequantized in registers and a fused epilogue per use in a Llama layer.
//
// Work unit: one warp computes two weight rows (A and B) against the block's NT tokens. Lane
// `l` reads the 16-byte weight vectors l, l + 32, l + 64, ... of a row (coalesced, UNROLL loads
// in flight per row), accumulates each token's partial dot product in float32 in vector order
// and element order, and the warp combines the 32 lane sums with a fixed xor butterfly. That
// order depends only on the row length: the same row gets the same bits for any NT.
//
// RMSNorm is folded in by linearity: the producer of a normed input writes `xw = w_norm * h`
// and per-block partial sums of `h^2`; the consumer sums the partials in block order, forms
// `inv = 1 / sqrt(sum / dim + eps)` and scales each dot product by it.
//
// Modes (the unit -> rows mapping and the epilogue):
//   QKV:    units are (row, row + head_dim/2) pairs of the q, k, v projections; the epilogue
//           applies the norm, the bias, RoPE (rotate-half, q and k) and writes q to `out`, k and
//           v to the layer's KV cache at the token's position.
//   RESID:  units are rows (2u, 2u+1); h += W x (+ bias); xw = w_next_norm * h; block partials
//           of h^2 for the next norm.
//   GATEUP: units are (gate row u, up row u); act = silu(g) * u.
//   LOGITS: units are rows (2u, 2u+1); logits = inv * W x, and a running argmax per token.

#define MODE_QKV 0
#define MODE_RESID 1
#define MODE_GATEUP 2
#define MODE_LOGITS 3

// Must match `GemvArgs` in kernels/src/cuda/launch.rs.
struct GemvArgs {
    WDesc w[3];
    const float* x;           // input rows [ntok][x_stride]
    const float* partial;     // norm partials [ntok][PSTRIDE], or null (no norm)
    const float* norm_next;   // RESID: f32 weight of the next norm [rows]
    const float* rope_cos;    // QKV: [capacity][head_dim / 2]
    const float* rope_sin;
    const int* pos;           // position of token 0
    float* out;               // QKV: q [ntok][out_stride]; RESID: h; GATEUP: act; LOGITS: logits
    float* xw_out;            // RESID: xw [ntok][out_stride]
    float* partial_out;       // RESID: [ntok][PSTRIDE]
    float* kcache;            // QKV: this layer's keys [kv_heads][capacity][head_dim]
    float* vcache;
    u64* argmax;              // LOGITS: [ntok], or null
    int* pos_inc;             // LOGITS: if set, block 0 adds ntok to it at the end
    int mode;
    int ntok;
    int x_stride;
    int out_stride;
    int nparts;
    int norm_dim;
    float eps;
    int units;
    int u1;                   // QKV: first unit of k; GATEUP/RESID/LOGITS: unused
    int u2;                   // QKV: first unit of v
    int head_dim;
    int capacity;
};

// acc[t] += row . x[t] for the lane's vectors. Returns nothing; caller reduces across the warp.
template <int NT, int KIND>
__device__ __forceinline__ void dot_row(const WDesc& w, int row, const float* const* xs,
                                        float* acc) {
    const int lane = threadIdx.x & 31;
    // Elements per 16-byte vector.
    const int EPV = KIND == KIND_F32 ? 4 : (KIND == KIND_INT8 ? 16 : (KIND == KIND_INT4 ? 32 : 8));
    const int nvec = w.cols / EPV;
    const size_t row_bytes = KIND == KIND_INT4 ? (size_t)w.cols / 2
                             : (KIND == KIND_INT8 ? (size_t)w.cols
                                : (KIND == KIND_F32 ? (size_t)w.cols * 4 : (size_t)w.cols * 2));
    const uint4* wr = (const uint4*)((const char*)w.data + (size_t)row * row_bytes);
    int groups = 1;
    if (KIND == KIND_INT4) groups = w.cols / w.group;
    for (int v0 = lane; v0 < nvec; v0 += 32 * UNROLL) {
        uint4 wv[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int v = v0 + 32 * u;
            if (v < nvec) wv[u] = ld_stream(wr + v);
            else wv[u] = make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int v = v0 + 32 * u;
            if (v >= nvec) break;
            u32 ww[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
            if (KIND == KIND_INT4) {
                int g = (v * 32) / w.group;
                float s = f16_to_f32(((const unsigned short*)w.scales)[(size_t)row * groups + g]);
                float m = f16_to_f32(((const unsigned short*)w.mins)[(size_t)row * groups + g]);
                float q[32];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    u32 lo = ww[j] & 0x0f0f0f0fu;
                    u32 hi = (ww[j] >> 4) & 0x0f0f0f0fu;
#pragma unroll
                    for (int b = 0; b < 4; b++) {
                        // 0x4B0000nn is 2^23 + nn: subtracting 2^23 gives the nibble exactly.
                        q[8 * j + 2 * b] =
                            __uint_as_float(__byte_perm(lo, 0x4B000000u, 0x7540 + b)) - 8388608.0f;
                        q[8 * j + 2 * b + 1] =
                            __uint_as_float(__byte_perm(hi, 0x4B000000u, 0x7540 + b)) - 8388608.0f;
                    }
                }
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const float4* xp = (const float4*)(xs[t] + (size_t)v * 32);
                    float qx = 0.0f, sx = 0.0f;
#pragma unroll
                    for (int k = 0; k < 8; k++) {
                        float4 xv = __ldg(xp + k);
                        qx = fmaf(q[4 * k], xv.x, qx);
                        qx = fmaf(q[4 * k + 1], xv.y, qx);
                        qx = fmaf(q[4 * k + 2], xv.z, qx);
                        qx = fmaf(q[4 * k + 3], xv.w, qx);
                        sx = sx + xv.x;
                        sx = sx + xv.y;
                        sx = sx + xv.z;
                        sx = sx + xv.w;
                    }
                    acc[t] = fmaf(s, qx, acc[t]);
                    acc[t] = fmaf(m, sx, acc[t]);
                }
            } else if (KIND == KIND_INT8) {
                float q[16];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    u32 b = ww[j] ^ 0x80808080u;  // two's complement -> biased by 128
#pragma unroll
                    for (int k = 0; k < 4; k++)
                        q[4 * j + k] =
                            __uint_as_float(__byte_perm(b, 0x4B000000u, 0x7540 + k)) - 8388736.0f;
                }
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const float4* xp = (const float4*)(xs[t] + (size_t)v * 16);
#pragma unroll
                    for (int k = 0; k < 4; k++) {
                        float4 xv = __ldg(xp + k);
                        acc[t] = fmaf(q[4 * k], xv.x, acc[t]);
                        acc[t] = fmaf(q[4 * k + 1], xv.y, acc[t]);
                        acc[t] = fmaf(q[4 * k + 2], xv.z, acc[t]);
                        acc[t] = fmaf(q[4 * k + 3], xv.w, acc[t]);
                    }
                }
            } else if (KIND == KIND_F32) {
                float f[4] = {__uint_as_float(ww[0]), __uint_as_float(ww[1]),
                              __uint_as_float(ww[2]), __uint_as_float(ww[3])};
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    float4 xv = __ldg((const float4*)(xs[t] + (size_t)v * 4));
                    acc[t] = fmaf(f[0], xv.x, acc[t]);
                    acc[t] = fmaf(f[1], xv.y, acc[t]);
                    acc[t] = fmaf(f[2], xv.z, acc[t]);
                    acc[t] = fmaf(f[3], xv.w, acc[t]);
                }
            } else {
                float f[8];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    if (KIND == KIND_BF16) {
                        f[2 * j] = bf16_lo(ww[j]);
                        f[2 * j + 1] = bf16_hi(ww[j]);
                    } else {
                        f[2 * j] = f16_to_f32((unsigned short)(ww[j] & 0xffffu));
                        f[2 * j + 1] = f16_to_f32((unsigned short)(ww[j] >> 16));
                    }
                }
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const float4* xp = (const float4*)(xs[t] + (size_t)v * 8);
                    float4 xa = __ldg(xp);
                    float4 xb = __ldg(xp + 1);
                    acc[t] = fmaf(f[0], xa.x, acc[t]);
                    acc[t] = fmaf(f[1], xa.y, acc[t]);
                    acc[t] = fmaf(f[2], xa.z, acc[t]);
                    acc[t] = fmaf(f[3], xa.w, acc[t]);
                    acc[t] = fmaf(f[4], xb.x, acc[t]);
                    acc[t] = fmaf(f[5], xb.y, acc[t]);
                    acc[t] = fmaf(f[6], xb.z, acc[t]);
                    acc[t] = fmaf(f[7], xb.w, acc[t]);
                }
            }
        }
    }
}

// The finished dot products of one row for the NT tokens, on every lane: the warp sum, then
// the int8 row scale.
template <int NT>
__device__ __forceinline__ void row_dots(const WDesc& w, int row, const float* const* xs,
                                         float* out) {
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    switch (w.kind) {
    case KIND_F32: dot_row<NT, KIND_F32>(w, row, xs, acc); break;
    case KIND_BF16: dot_row<NT, KIND_BF16>(w, row, xs, acc); break;
    case KIND_F16: dot_row<NT, KIND_F16>(w, row, xs, acc); break;
    case KIND_INT8: dot_row<NT, KIND_INT8>(w, row, xs, acc); break;
    default: dot_row<NT, KIND_INT4>(w, row, xs, acc); break;
    }
    float scale = w.kind == KIND_INT8 ? ((const float*)w.scales)[row] : 1.0f;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float s = warp_sum(acc[t]);
        if (w.kind == KIND_INT8) s = s * scale;
        out[t] = s;
    }
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

template <int NT>
__device__ __forceinline__ void gemv_body(const GemvArgs& a) {
    __shared__ float s_inv[NT];
    __shared__ float s_red[WARPS][NT];
    __shared__ u64 s_key[NT];  // LOGITS: the block's argmax per token
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int tok0 = blockIdx.y * NT;
    const int unit = blockIdx.x * WARPS + warp;

    // The norm factor of each token: warp t sums token t's partials (lane-strided, then the
    // fixed butterfly).
    if (warp < NT) {
        float inv = 1.0f;
        int tok = tok0 + warp;
        if (a.partial != 0 && tok < a.ntok) {
            const float* p = a.partial + (size_t)tok * PSTRIDE;
            float s = 0.0f;
            for (int i = lane; i < a.nparts; i += 32) s = s + p[i];
            s = warp_sum(s);
            float mean = __fdiv_rn(s, (float)a.norm_dim);
            inv = __fdiv_rn(1.0f, __fsqrt_rn(mean + a.eps));
        }
        if (lane == 0) {
            s_inv[warp] = inv;
            s_key[warp] = 0;
        }
    }
    __syncthreads();

    // Token input rows (tokens past ntok read token 0 of the block and are discarded).
    const float* xs[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        int tok = tok0 + t < a.ntok ? tok0 + t : tok0;
        xs[t] = a.x + (size_t)tok * a.x_stride;
    }

    float sq = 0.0f;  // RESID: this lane's token's h^2 over the warp's rows
    if (unit < a.units) {
        int seg = 0, ra = 0, rb = 0;
        const WDesc* wa;
        const WDesc* wb;
        if (a.mode == MODE_QKV) {
            int uu = unit;
            if (unit >= a.u2) { seg = 2; uu = unit - a.u2; }
            else if (unit >= a.u1) { seg = 1; uu = unit - a.u1; }
            int half = a.head_dim >> 1;
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
        bool has_b = rb < wb->rows;
        float da[NT], db[NT];
        row_dots<NT>(*wa, ra, xs, da);
        if (has_b) row_dots<NT>(*wb, rb, xs, db);
        else {
#pragma unroll
            for (int t = 0; t < NT; t++) db[t] = 0.0f;
        }
        // Epilogue: lane t handles token t.
#pragma unroll
        for (int t = 0; t < NT; t++) {
            int tok = tok0 + t;
            if (lane != t || tok >= a.ntok) continue;
            float inv = s_inv[t];
            float ya = da[t], yb = db[t];
            if (a.partial != 0) { ya = ya * inv; yb = yb * inv; }
            if (wa->bias != 0) ya = ya + wa->bias[ra];
            if (has_b && wb->bias != 0) yb = yb + wb->bias[rb];
            if (a.mode == MODE_QKV) {
                int p = *a.pos + tok;
                int half = a.head_dim >> 1;
                int i = ra % a.head_dim;
                if (seg < 2) {
                    float c = a.rope_cos[(size_t)p * half + i];
                    float s = a.rope_sin[(size_t)p * half + i];
                    float na = __fsub_rn(__fmul_rn(ya, c), __fmul_rn(yb, s));
                    float nb = __fadd_rn(__fmul_rn(yb, c), __fmul_rn(ya, s));
                    ya = na; yb = nb;
                }
                if (seg == 0) {
                    float* o = a.out + (size_t)tok * a.out_stride;
                    o[ra] = ya;
                    o[rb] = yb;
                } else {
                    int kvh = ra / a.head_dim;
                    float* c = (seg == 1 ? a.kcache : a.vcache) +
                               ((size_t)kvh * a.capacity + p) * a.head_dim;
                    c[i] = ya;
                    c[i + half] = yb;
                }
            } else if (a.mode == MODE_RESID) {
                float* h = a.out + (size_t)tok * a.out_stride;
                float* xw = a.xw_out + (size_t)tok * a.out_stride;
                float ha = h[ra] + ya;
                h[ra] = ha;
                xw[ra] = a.norm_next[ra] * ha;
                sq = ha * ha;
                if (has_b) {
                    float hb = h[rb] + yb;
                    h[rb] = hb;
                    xw[rb] = a.norm_next[rb] * hb;
                    sq = sq + hb * hb;
                }
            } else if (a.mode == MODE_GATEUP) {
                a.out[(size_t)tok * a.out_stride + ra] = silu(ya) * yb;
            } else {
                float* o = a.out + (size_t)tok * a.out_stride;
                o[ra] = ya;
                u64 key = argmax_key(ya, (u32)ra);
                if (has_b) {
                    o[rb] = yb;
                    u64 kb = argmax_key(yb, (u32)rb);
                    key = kb > key ? kb : key;
                }
                atomicMax(&s_key[t], key);
            }
        }
    }

    if (a.mode == MODE_RESID) {
        // Block partial of h^2 per token: warps in order.
        if (lane < NT) s_red[warp][lane] = sq;
        __syncthreads();
        if (threadIdx.x < NT) {
            int tok = tok0 + threadIdx.x;
            if (tok < a.ntok) {
                float s = 0.0f;
                for (int w = 0; w < WARPS; w++) s = s + s_red[w][threadIdx.x];
                a.partial_out[(size_t)tok * PSTRIDE + blockIdx.x] = s;
            }
        }
    }
    if (a.mode == MODE_LOGITS) {
        __syncthreads();
        if (threadIdx.x < NT && tok0 + threadIdx.x < a.ntok && a.argmax != 0)
            atomicMax(&a.argmax[tok0 + threadIdx.x], s_key[threadIdx.x]);
    }
    if (a.mode == MODE_LOGITS && a.pos_inc != 0 && blockIdx.x == 0 && blockIdx.y == 0 &&
        threadIdx.x == 0)
        atomicAdd(a.pos_inc, a.ntok);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_t1(GemvArgs a) { gemv_body<1>(a); }
extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_t2(GemvArgs a) { gemv_body<2>(a); }
extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_t4(GemvArgs a) { gemv_body<4>(a); }
extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_t8(GemvArgs a) { gemv_body<8>(a); }
