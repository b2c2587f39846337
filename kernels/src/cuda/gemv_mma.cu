// int8 GEMVs on the integer tensor cores: per-row int8 (gemv_m1 for one token, gemv_m2 / m4 / m8
// for batches, whose x goes through the x_pieces pre-pass first) and group-wise int8g with groups
// of a multiple of 64 columns (gemv_g1 / g2 / g4 / g8), in every mode of gemv.cu with its
// epilogue. gemv.rs `Kernels::gemv_mma` says which launches take them.
//
// Arithmetic. A token's x row becomes the fixed-point vector X = rint(x 2^S), with
// S = 29 - floor(log2 max|x|), so |X| < 2^30 (an element of at least max|x| 2^-6 keeps every
// bit). X is written in base 256 with signed digits, the pieces P_0 (most significant) to P_3,
// each in [-128, 127]: the bytes of (X + 0x80808080) ^ 0x80808080 (adding 128 to every digit
// with its carries, then taking 128 off each one again). A row of int8 codes q then has the
// exact integer dot product
//   T = sum_k q_k X_k = sum_j 2^(24 - 8 j) D_j,   D_j = sum_k q_k P_jk,
// where the D_j are s8 x s8 -> s32 tensor-core products (mma m16n8k32): exact, so T depends on
// neither how the columns are split among warps nor the order partial sums are added in, nor the
// batch. The row's dot product is y = (float)T 2^-S, one rounding (the row scale follows in the
// epilogue, as in gemv.cu). |q| <= 128 and |P| <= 128 bound |D_j| by 2^14 per column, so the
// host takes this path for rows of at most 65536 columns, a multiple of 64. A row of x with an
// infinity or a NaN gives NaN dot products.
//
// Tiles. A warp computes a tile of 8 units (16 rows: unit g's rows A and B are the tile's rows g
// and g + 8) over a part of the columns. Lane (g, t) loads 16 bytes of each of its unit's rows per
// step of 64 columns (columns 16 t .. 16 t + 15 of the step): the A operands of two mma (k runs
// over the columns in a permuted order, the same for A and B). Column n of B holds piece n
// (n < 4) of the same columns, the others zeros, so lane (g, 0) gets D_0 and D_1 of its rows,
// lane (g, 1) D_2 and D_3. The `ksplit` warps of a block (of MMA_WARPS warps) split a tile's
// 64-column steps and add their integer sums; with one warp per tile, a block's tiles are
// strided (see gemv_mma_body).
//
// x pieces: per group of 16 columns, 64 bytes: piece j's 16 bytes (one per column) at 16 j.
//
// Group-wise int8g. A step of 64 columns lies in one group, so each step's sums are scaled by its
// group's scale c before they are added up, in f32. Lane (g, t < 2) turns its two sums of a row's
// step (|D_j| < 2^20, exact as floats) into L_0 = fma(D_0, 2^24, 2^16 D_1) or
// L_1 = fma(D_2, 2^8, D_3), one rounding each, and accumulates acc_t = fma(L_t, c, acc_t) step
// after step. The ksplit warps' accumulators are added in warp order, then
// y = ((acc_0 + acc_1) 2^-S) (two exact steps, as above). So a row is rounded about as often as
// a float dot product with one product per 64 columns, and its bits depend on ksplit, which
// gemv.rs takes from the weight's shape and the device alone, never from the batch: prefill and
// decode agree bit for bit. A quad's lanes load the scales of U consecutive steps, one each, and
// pass them round.

#define MMA_NAN_SHIFT 0x40000000  // the shift of a row of x that is not finite
#define MMA_WARPS 8                // warps per block of the kernels below
#define MMA_THREADS (MMA_WARPS * 32)

__device__ __forceinline__ void mma_s8s8(int* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// |v| as ordered bits: every NaN above infinity above every finite value.
__device__ __forceinline__ u32 abs_bits(float v) { return __float_as_uint(v) & 0x7fffffffu; }

__device__ __forceinline__ u32 abs_bits4(float4 v) {
    return max(max(abs_bits(v.x), abs_bits(v.y)), max(abs_bits(v.z), abs_bits(v.w)));
}

// The largest abs_bits of a row's elements tid, tid + n, ... (float4 at a time).
__device__ __forceinline__ u32 row_abs_max(const float* x, int cols, int tid, int n) {
    const float4* x4 = (const float4*)x;
    u32 m = 0;
    for (int i = tid; i < (cols >> 2); i += n) m = max(m, abs_bits4(__ldg(x4 + i)));
    return m;
}

// S from the row's largest abs_bits.
__device__ __forceinline__ int mma_shift(u32 mbits) {
    if (mbits >= 0x7f800000u) return MMA_NAN_SHIFT;
    if (mbits == 0) return 0;
    return 29 - ilogbf(__uint_as_float(mbits));
}

// S of a row from each thread's largest abs_bits, over a block of MMA_THREADS (`s_max`: one slot
// per warp; the block's barrier is inside).
__device__ __forceinline__ int block_shift(u32 m, u32* s_max) {
    m = __reduce_max_sync(0xffffffffu, m);
    if ((threadIdx.x & 31) == 0) s_max[threadIdx.x >> 5] = m;
    __syncthreads();
    u32 mb = 0;
    for (int w = 0; w < MMA_WARPS; w++) mb = max(mb, s_max[w]);
    return mma_shift(mb);
}

// 2^e for e in [-126, 127].
__device__ __forceinline__ float pow2f(int e) { return __int_as_float((e + 127) << 23); }

// The pieces (signed digits) of four consecutive columns: word j holds piece j of each (column
// order in bytes).
// x 2^S is formed by two exact multiplications (S ranges over [-98, 178]).
__device__ __forceinline__ void mma_pieces4(float4 v, int s, u32* p) {
    const float sa = pow2f(s >> 1), sb = pow2f(s - (s >> 1));
    u32 w[4];
    const float e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) w[i] = ((u32)__float2int_rn((e[i] * sa) * sb) + 0x80808080u) ^ 0x80808080u;
    const u32 lo01 = __byte_perm(w[0], w[1], 0x5140), hi01 = __byte_perm(w[0], w[1], 0x7362);
    const u32 lo23 = __byte_perm(w[2], w[3], 0x5140), hi23 = __byte_perm(w[2], w[3], 0x7362);
    p[0] = __byte_perm(hi01, hi23, 0x7632);  // bits 24..31
    p[1] = __byte_perm(hi01, hi23, 0x5410);  // bits 16..23
    p[2] = __byte_perm(lo01, lo23, 0x7632);  // bits 8..15
    p[3] = __byte_perm(lo01, lo23, 0x5410);  // bits 0..7
}

// The pieces of float4 `f` of a row (columns 4 f .. 4 f + 3) into the row's pieces at `dst`.
__device__ __forceinline__ void store_pieces(float4 v, int s, unsigned char* dst, int f) {
    u32 p[4];
    mma_pieces4(s == MMA_NAN_SHIFT ? make_float4(0.f, 0.f, 0.f, 0.f) : v, s, p);
    u32* o = (u32*)(dst + 64 * (f >> 2) + 4 * (f & 3));
#pragma unroll
    for (int j = 0; j < 4; j++) o[4 * j] = p[j];
}

// A row's pieces (threads tid, tid + n, ... take a float4 each) into `dst` (shared or global).
__device__ __forceinline__ void row_pieces(const float* x, int cols, int s, unsigned char* dst,
                                           int tid, int n) {
    const float4* x4 = (const float4*)x;
    for (int f = tid; f < (cols >> 2); f += n) store_pieces(__ldg(x4 + f), s, dst, f);
}

// An integer of magnitude below 2^22 as a float, exactly, with an integer add and a float add
// instead of a conversion (which sm_90 issues at a fraction of their rate): 1.5 2^23 + d is a
// float whose last mantissa bit weighs 1.
__device__ __forceinline__ float small_int_float(int d) {
    return __int_as_float(0x4b400000 + d) - 12582912.0f;
}

// y = v 2^-S (two exact steps), or NaN for a row of x that is not finite.
__device__ __forceinline__ float mma_unshift(float v, int s) {
    if (s == MMA_NAN_SHIFT) return __int_as_float(0x7fffffff);
    return (v * pow2f(-(s >> 1))) * pow2f(-(s - (s >> 1)));
}

// y = T 2^-S as a float, from the tile lane's pieces sums (see gemv_mma_body).
__device__ __forceinline__ float mma_dot(int d0, int d1, int e0, int e1, int s) {
    const long long t =
        ((long long)d0 << 24) + ((long long)d1 << 16) + ((long long)e0 << 8) + (long long)e1;
    return mma_unshift(__ll2float_rn(t), s);
}

// Batches: each token's S and pieces into xq (pieces [ntok][cols * 4 bytes], then S [ntok]), one
// block of MMA_THREADS per token.
extern "C" __global__ void __launch_bounds__(MMA_THREADS) x_pieces(GemvArgs a) {
    __shared__ u32 s_max[MMA_WARPS];
    const int tok = blockIdx.x, tid = threadIdx.x;
    const int cols = a.w[0].cols;
    const float* x = a.x + (size_t)tok * a.x_stride;
    pdl_wait();
    pdl_launch_dependents();
    const int s = block_shift(row_abs_max(x, cols, tid, MMA_THREADS), s_max);
    row_pieces(x, cols, s, a.xq + (size_t)tok * cols * 4, tid, MMA_THREADS);
    if (tid == 0) a.xq_shift[tok] = s;
}

// Steps of 64 columns in flight per warp, per batch size.
#ifndef MMA_U1
#define MMA_U1 4
#endif
#define MMA_UN 2
// float4 of x per thread kept in registers by one-token blocks (4: rows of up to 4096 columns).
#ifndef MMA_XR
#define MMA_XR 4
#endif
// int8g, one token: steps of each row asked of the L2 ahead of the register batches (0: none).
#ifndef MMA_PFD
#define MMA_PFD 8
#endif

// The N values per token of a lane of the ksplit warps of a tile (kp = 0 .. ks - 1), added to
// those of warp kp = 0 in warp order (`room`: MMA_WARPS x NT x N x 32 values; the block's barrier
// is inside).
template <int NT, int N, typename T>
__device__ __forceinline__ void ksplit_sum(T (&v)[NT][N], T* room, int warp, int kp, int ks, int lane) {
    if (kp != 0)
#pragma unroll
        for (int tt = 0; tt < NT; tt++)
#pragma unroll
            for (int i = 0; i < N; i++) room[((warp * NT + tt) * N + i) * 32 + lane] = v[tt][i];
    __syncthreads();
    if (kp == 0)
        for (int k = 1; k < ks; k++)
#pragma unroll
            for (int tt = 0; tt < NT; tt++)
#pragma unroll
                for (int i = 0; i < N; i++)
                    v[tt][i] = v[tt][i] + room[(((warp + k) * NT + tt) * N + i) * 32 + lane];
}

// G: group-wise int8g (group scales per step) instead of per-row int8.
template <int NT, bool G>
__device__ __forceinline__ void gemv_mma_body(const GemvArgs& a) {
    TRACE_BLOCK(a.mode);
    constexpr int U = NT == 1 ? MMA_U1 : MMA_UN;
    static_assert(!G || U <= 4, "int8g: a quad's lanes hold the scales of at most 4 steps");
    __shared__ float s_norm[WARPS][NT];
    __shared__ u32 s_max[MMA_WARPS];
    __shared__ int s_shift;
    __shared__ int s_d[MMA_WARPS][4 * NT][32];  // ksplit: the other warps' sums
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    // ksplit > 1: a block's tiles are consecutive. One warp per tile: block b's warp w takes tile
    // b + w gridDim.x, so a one-token launch of a whole wave of blocks (the host's choice where
    // there are many tiles) spreads them evenly over the multiprocessors (with blocks of 8
    // consecutive tiles, 172 blocks on 132 multiprocessors left some with twice the bytes).
    const int ks = a.ksplit, tpb = MMA_WARPS / ks;
    const int tile = ks == 1 ? blockIdx.x + gridDim.x * warp : blockIdx.x * tpb + warp / ks;
    const int kp = warp % ks;
    const int tok0 = blockIdx.y * NT;
    // Token tt's row (tokens past ntok read token 0 of the block and are discarded).
    auto row_tok = [&](int tt) { return tok0 + tt < a.ntok ? tok0 + tt : tok0; };
    const int cols = a.w[0].cols, steps = cols >> 6;
    // This warp's steps (per-row int8: any split gives the same integer sums).
    const int step0 = steps * kp / ks, nsteps = steps * (kp + 1) / ks - step0;
    const int kbase = 64 * step0;

    // The lane's unit (g) and the 16 columns per step it reads of both rows.
    const int unit = tile * 8 + g;
    const bool valid = unit < a.units;
    int seg = 0, ra = 0, rb = 0;
    const WDesc* wa = &a.w[0];
    const WDesc* wb = &a.w[0];
    if (valid) unit_rows(a, unit, seg, ra, rb, wa, wb);
    const bool has_b = valid && rb < wb->rows;
    const uint4* pa = valid ? (const uint4*)((const signed char*)wa->data + (size_t)ra * cols + kbase) + t : 0;
    const uint4* pb = has_b ? (const uint4*)((const signed char*)wb->data + (size_t)rb * cols + kbase) + t : 0;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    // int8g: the group scales of both rows from this warp's first step (a group of 64 << gsh
    // columns); lane t loads those of steps s0 + t % U, s0 + U + t % U, ...
    const float* ga = 0;
    const float* gb = 0;
    const int gsh = G ? __ffs(wa->group >> 6) - 1 : 0;
    if (G) {
        const size_t groups = (size_t)(cols >> (6 + gsh));
        if (valid) ga = (const float*)wa->scales + (size_t)ra * groups;
        if (has_b) gb = (const float*)wb->scales + (size_t)rb * groups;
    }
    auto group_scale = [&](const float* gp, int s) {
        return gp != 0 && s < nsteps ? __ldg(gp + ((step0 + s) >> gsh)) : 0.0f;
    };

    uint4 wva[U], wvb[U], nva[U], nvb[U];
    float gsa = 0.0f, gsb = 0.0f, ngsa = 0.0f, ngsb = 0.0f;
#pragma unroll
    for (int u = 0; u < U; u++) {
        wva[u] = pa != 0 && u < nsteps ? ld_stream(pa + 4 * u) : zero;
        wvb[u] = pb != 0 && u < nsteps ? ld_stream(pb + 4 * u) : zero;
    }
    if (G) {
        gsa = group_scale(ga, t % U);
        gsb = group_scale(gb, t % U);
    }
    // int8g, one token: the L2 is asked for steps [U, U + PFD) of the tile's rows before the
    // launch wait, then for U more steps per batch, PFD steps ahead of the register loads. Lane l
    // asks for row l / 2 of the tile (unit (l / 2) % 8's row A, then the B rows), every other
    // line of two steps. Hints only: the bits do not change. int8g gains, per-row int8 does not
    // (docs/decisions/0013).
    constexpr int PFD = NT == 1 && G ? MMA_PFD : 0;
    const char* pf_row = 0;
    if (PFD > 0) {
        // The rows' starts, formed again rather than shuffled from pa and pb (lane (unit, 0)'s
        // are the same addresses): shuffled, the schedule changed and the gain was lost
        // (docs/decisions/0013).
        const char* rowa = pa != 0 ? (const char*)wa->data + (size_t)ra * cols + kbase : 0;
        const char* rowb = pb != 0 ? (const char*)wb->data + (size_t)rb * cols + kbase : 0;
        const int r = lane >> 1, src = (r & 7) * 4;
        const char* fa = (const char*)__shfl_sync(0xffffffffu, (unsigned long long)rowa, src);
        const char* fb = (const char*)__shfl_sync(0xffffffffu, (unsigned long long)rowb, src);
        pf_row = r < 8 ? fa : fb;
    }
    // This lane's lines of steps [s, s + n).
    auto l2_ahead = [&](int s, int n) {
        if (pf_row == 0) return;
        for (int k = s + 2 * (lane & 1); k < s + n && k < nsteps; k += 4) l2_prefetch(pf_row + 64 * k);
    };
    if (PFD > 0) l2_ahead(U, PFD);
    // The epilogue's row scales (weights too, never written by a kernel).
    const bool epi = kp == 0 && t == 0 && valid;
    float sca = 0.0f, scb = 0.0f;
    if (!G && epi) {
        sca = ((const float*)wa->scales)[ra];
        if (has_b) scb = ((const float*)wb->scales)[rb];
    }
    // int8g: the wait behind a branch (always taken), else ptxas sinks the loads above past it
    // and the weights' first round trip begins after the predecessor has ended
    // (docs/decisions/0012). Per-row int8's schedule keeps them without it.
    if (!G || a.ntok > 0) pdl_wait();
    pdl_launch_dependents();

    // The epilogue's inputs (one token: loaded now, while the weights stream).
    EpiIn pre = {0.0f, 0.0f, 0.0f, 0.0f};
    int pos = 0;
    if (a.mode == MODE_QKV) pos = *a.pos + tok0;
    if (NT == 1 && epi) epi_load(a, tok0, pos, seg, ra, rb, has_b, pre);
    if (a.partial != 0 && warp < WARPS) {  // partials_sum's order is that of 4 warps
#pragma unroll
        for (int tt = 0; tt < NT; tt++) {
            const int tok = row_tok(tt);
            const float s = partials_sum(a.partial + (size_t)tok * PSTRIDE, a.nparts);
            if (lane == 0) s_norm[warp][tt] = s;
        }
    }
    // x's pieces: one token, this block's own copy in shared memory; a batch, x_pieces's.
    const unsigned char* xp[NT];
    int shift[NT];
    if (NT == 1) {
        // The first XR float4 of each thread stay in registers between the two passes, all
        // loads in flight at once (rows of up to 4096 columns: one round trip).
        constexpr int XR = MMA_XR;
        const float4* x4 = (const float4*)a.x;
        const int n4 = cols >> 2;
        float4 xr[XR];
        u32 m = 0;
#pragma unroll
        for (int k = 0; k < XR; k++) {
            const int f = threadIdx.x + k * MMA_THREADS;
            if (f < n4) xr[k] = __ldg(x4 + f);
        }
#pragma unroll
        for (int k = 0; k < XR; k++)
            if (threadIdx.x + k * MMA_THREADS < n4) m = max(m, abs_bits4(xr[k]));
        const int rest = threadIdx.x + XR * MMA_THREADS;  // the float4 past the registers
        const int s = block_shift(max(m, row_abs_max(a.x, cols, rest, MMA_THREADS)), s_max);
        unsigned char* xs = (unsigned char*)gemv_x;
#pragma unroll
        for (int k = 0; k < XR; k++) {
            const int f = threadIdx.x + k * MMA_THREADS;
            if (f < n4) store_pieces(xr[k], s, xs, f);
        }
        row_pieces(a.x, cols, s, xs, rest, MMA_THREADS);
        if (threadIdx.x == 0) s_shift = s;
        xp[0] = (const unsigned char*)gemv_x;
    } else {
#pragma unroll
        for (int tt = 0; tt < NT; tt++) {
            const int tok = row_tok(tt);
            xp[tt] = a.xq + (size_t)tok * cols * 4;
        }
    }
    __syncthreads();
    TRACE_MARK(2);
#pragma unroll
    for (int tt = 0; tt < NT; tt++) {
        const int tok = row_tok(tt);
        shift[tt] = NT == 1 ? s_shift : a.xq_shift[tok];
    }

    // B: lane (g, t) holds column n = g: piece g (g < 4) of its 16 columns, else zeros.
    const int boff = 64 * ((kbase >> 4) + t) + 16 * (g & 3);
    // int8g: lane t < 2's weights of its two sums (see the top).
    const float c0 = t == 0 ? 16777216.0f : 256.0f, c1 = t == 0 ? 65536.0f : 1.0f;
    int d[NT][4];
    float acc[NT][2];  // int8g: rows A and B
#pragma unroll
    for (int tt = 0; tt < NT; tt++) {
#pragma unroll
        for (int i = 0; i < 4; i++) d[tt][i] = 0;
        acc[tt][0] = acc[tt][1] = 0.0f;
    }
    if (tile * 8 < a.units) {
        for (int s0 = 0; s0 < nsteps; s0 += U) {
            const bool more = s0 + U < nsteps;
            if (PFD > 0) l2_ahead(s0 + U + PFD, U);
            if (more) {
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const bool in = s0 + U + u < nsteps;
                    nva[u] = pa != 0 && in ? ld_stream(pa + 4 * (s0 + U + u)) : zero;
                    nvb[u] = pb != 0 && in ? ld_stream(pb + 4 * (s0 + U + u)) : zero;
                }
                if (G) {
                    ngsa = group_scale(ga, s0 + U + t % U);
                    ngsb = group_scale(gb, s0 + U + t % U);
                }
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                if (s0 + u < nsteps) {
                    // int8g: step s0 + u's scales, from lane (g, u) of the quad
                    const float ca = G ? __shfl_sync(0xffffffffu, gsa, (lane & ~3) | u) : 0.0f;
                    const float cb = G ? __shfl_sync(0xffffffffu, gsb, (lane & ~3) | u) : 0.0f;
#pragma unroll
                    for (int tt = 0; tt < NT; tt++) {
                        uint4 bx = zero;
                        if (g < 4) {
                            const uint4* src = (const uint4*)(xp[tt] + boff + 256 * (s0 + u));
                            bx = NT == 1 ? *src : __ldg(src);
                        }
                        if (G) {
                            int e[4] = {0, 0, 0, 0};
                            mma_s8s8(e, wva[u].x, wvb[u].x, wva[u].y, wvb[u].y, bx.x, bx.y);
                            mma_s8s8(e, wva[u].z, wvb[u].z, wva[u].w, wvb[u].w, bx.z, bx.w);
                            const float la = fmaf(small_int_float(e[0]), c0, small_int_float(e[1]) * c1);
                            const float lb = fmaf(small_int_float(e[2]), c0, small_int_float(e[3]) * c1);
                            acc[tt][0] = fmaf(la, ca, acc[tt][0]);
                            acc[tt][1] = fmaf(lb, cb, acc[tt][1]);
                        } else {
                            mma_s8s8(d[tt], wva[u].x, wvb[u].x, wva[u].y, wvb[u].y, bx.x, bx.y);
                            mma_s8s8(d[tt], wva[u].z, wvb[u].z, wva[u].w, wvb[u].w, bx.z, bx.w);
                        }
                    }
                }
            }
            if (!more) break;
#pragma unroll
            for (int u = 0; u < U; u++) {
                wva[u] = nva[u];
                wvb[u] = nvb[u];
            }
            gsa = ngsa;
            gsb = ngsb;
        }
    }

    // The ksplit warps' sums (integers: any order gives the same; int8g: in warp order).
    if (ks > 1) {
        if (G)
            ksplit_sum<NT, 2>(acc, (float*)&s_d[0][0][0], warp, kp, ks, lane);
        else
            ksplit_sum<NT, 4>(d, &s_d[0][0][0], warp, kp, ks, lane);
    }
    TRACE_MARK(1);

    // Epilogue: lane (g, 0) of the tile's first warp finishes unit g, token by token.
    u64 key = 0;
#pragma unroll
    for (int tt = 0; tt < NT; tt++) {
        // Lane (g, 1) holds pieces 2 and 3 (int8g: its accumulators).
        const int e0 = __shfl_down_sync(0xffffffffu, d[tt][0], 1);
        const int e1 = __shfl_down_sync(0xffffffffu, d[tt][1], 1);
        const int e2 = __shfl_down_sync(0xffffffffu, d[tt][2], 1);
        const int e3 = __shfl_down_sync(0xffffffffu, d[tt][3], 1);
        const float ta = acc[tt][0] + __shfl_down_sync(0xffffffffu, acc[tt][0], 1);
        const float tb = acc[tt][1] + __shfl_down_sync(0xffffffffu, acc[tt][1], 1);
        const int tok = tok0 + tt;
        float sq = 0.0f;
        if (epi && tok < a.ntok) {
            float ya, yb;
            if (G) {
                ya = mma_unshift(ta, shift[tt]);
                yb = mma_unshift(tb, shift[tt]);
            } else {
                ya = mma_dot(d[tt][0], d[tt][1], e0, e1, shift[tt]) * sca;
                yb = mma_dot(d[tt][2], d[tt][3], e2, e3, shift[tt]);
                if (has_b) yb = yb * scb;
            }
            const float inv = a.partial != 0 ? norm_inv(a, &s_norm[0][tt], NT) : 1.0f;
            EpiIn in = pre;
            const int p = pos + tt;
            if (NT > 1) epi_load(a, tok, p, seg, ra, rb, has_b, in);
            epi_store(a, tok, p, seg, ra, rb, has_b, wa, wb, ya, yb, inv, in, sq, key);
        }
        if (a.mode == MODE_RESID) {
            // The tile's partial of h^2: its units in order (lanes 0, 4, ..., 28).
            float s = 0.0f;
#pragma unroll
            for (int u = 0; u < 8; u++) s = s + __shfl_sync(0xffffffffu, sq, 4 * u);
            if (kp == 0 && lane == 0 && tok < a.ntok && tile * 8 < a.units)
                a.partial_out[(size_t)tok * PSTRIDE + tile] = s;
        }
        if (a.mode == MODE_LOGITS && epi && tok < a.ntok && a.argmax != 0) {
            atomicMax(&a.argmax[tok], key);
            key = 0;
        }
    }
    if (a.mode == MODE_LOGITS && a.pos_inc != 0 && blockIdx.x == 0 && blockIdx.y == 0 &&
        threadIdx.x == 0)
        atomicAdd(a.pos_inc, a.ntok);
}

// Entry points generated (kernels/src/cuda/program.rs): gemv_m{1,2,4,8} per-row int8,
// gemv_g{1,2,4,8} int8g.
#define GEMV_MMA_ENTRY(NAME, NT, G) \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS, 2) NAME(GemvArgs a) { gemv_mma_body<NT, G>(a); }
