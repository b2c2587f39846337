// Embedding lookup (with the first norm's inputs), the per-head norm and RoPE of q and k, the
// normed residual add, the residency hash, and a read-bandwidth probe.

// Must match `EmbedArgs` in kernels/src/cuda/misc.rs.
struct EmbedArgs {
    WDesc w;
    const int* tokens;     // [ntok], or null: the token is decoded from argmax_in[0]
    const u64* argmax_in;
    u64* argmax_reset;     // nreset slots zeroed by block 0 after reading argmax_in
    const float* norm_w;   // f32 [hidden]: the first layer's input norm weight
    float* h;              // [ntok][hidden]
    float* xw;             // [ntok][hidden]: norm_w * h
    float* partial;        // [ntok][PSTRIDE]: slot 0 gets sum(h^2) (the first norm's input)
    int* err;              // set to 1 + the token id of an out-of-range token
    int ntok;
    int nreset;
    int hidden;
    int vocab;
    float scale;           // the embedding's scale (1 where the family has none)
    int pad_;
};

extern "C" __global__ void __launch_bounds__(256) embed(EmbedArgs a) {
    TRACE_BLOCK(5);
    __shared__ int s_tok;
    __shared__ float s_red[8];
    const int t = blockIdx.x, tid = threadIdx.x;
    pdl_wait();
    pdl_launch_dependents();
    if (tid == 0) {
        int id;
        if (a.tokens != 0) id = a.tokens[t];
        else id = (int)(~(u32)(a.argmax_in[0] & 0xffffffffull));
        if (id < 0 || id >= a.vocab) {
            atomicExch(a.err, 1 + id);
            id = 0;
        }
        s_tok = id;
    }
    __syncthreads();
    if (t == 0 && tid == 0 && a.argmax_reset != 0)
        for (int i = 0; i < a.nreset; i++) a.argmax_reset[i] = 0;
    const int id = s_tok;
    float sq = 0.0f;
    float* h = a.h + (size_t)t * a.hidden;
    float* xw = a.xw + (size_t)t * a.hidden;
    for (int c = tid; c < a.hidden; c += 256) {
        const float v = __fmul_rn(weight_element(a.w, id, c), a.scale);
        h[c] = v;
        xw[c] = a.norm_w[c] * v;
        sq = sq + v * v;
    }
    sq = warp_sum(sq);
    if ((tid & 31) == 0) s_red[tid >> 5] = sq;
    __syncthreads();
    if (tid == 0) {
        float s = 0.0f;
        for (int w = 0; w < 8; w++) s = s + s_red[w];
        a.partial[(size_t)t * PSTRIDE] = s;
    }
}

// Must match `HeadArgs` in kernels/src/cuda/misc.rs.
struct HeadArgs {
    float* q;               // [ntok][heads * head_dim]
    float* kcache;          // this layer's keys [kv_heads][capacity][head_dim]
    const float* q_norm;    // f32 [head_dim], or null: no per-head norm
    const float* k_norm;
    const float* rope_cos;  // [capacity][rotary_dim / 2]
    const float* rope_sin;
    const int* pos;         // position of token 0
    int ntok;
    int heads;
    int kv_heads;
    int head_dim;
    int rotary_dim;
    int capacity;
    float eps;
    int kv_stage;           // 1: kcache is the staging area, row = the token's index (GemvArgs),
                            // and this launch also rounds the new keys and values into the cache
    const float* vstage;    // kv_stage: the new values [kv_heads][capacity][head_dim]
    void* kq;               // kv_stage: this layer's cache [kv_heads][cache_capacity][head_dim]
    void* vq;               //   in the stored form `kv` (attention.cu's kv_store)
    unsigned short* kscale; // KV_INT8: this layer's bf16 scales [kv_heads][cache_capacity][hd/B]
    unsigned short* vscale;
    int kv;
    int cache_capacity;
};

// Where the QKV launch leaves RoPE out (q/k norms, partial rotary): each query head of each token
// and each new key in the cache, one warp a head: the head's RMSNorm (lane l sums elements
// l, l + 32, ... in order, then the butterfly: the same order for any batch), then rotate-half
// over the first rotary_dim elements. Block (head, token); heads past `heads` are key heads, and
// with kv_stage the key heads also round their result into the cache, and blocks past those
// round the value heads (kv_round_row).
extern "C" __global__ void __launch_bounds__(32) head_norm_rope(HeadArgs a) {
    pdl_wait();
    pdl_launch_dependents();
    const int head = blockIdx.x, tok = blockIdx.y, lane = threadIdx.x;
    if (tok >= a.ntok) return;
    const bool is_q = head < a.heads;
    const int p = *a.pos + tok;
    if (head >= a.heads + a.kv_heads) {
        const int g = head - a.heads - a.kv_heads;
        kv_round_row(a.vstage + ((size_t)g * a.capacity + tok) * a.head_dim, a.vq, a.vscale,
                     (size_t)g * a.cache_capacity + p, a.head_dim, a.kv, lane);
        return;
    }
    float* x = is_q ? a.q + ((size_t)tok * a.heads + head) * a.head_dim
                    : a.kcache + ((size_t)(head - a.heads) * a.capacity + (a.kv_stage ? tok : p)) *
                                     a.head_dim;
    const float* w = is_q ? a.q_norm : a.k_norm;
    if (w != 0) {
        float s = 0.0f;
        for (int i = lane; i < a.head_dim; i += 32) s = __fadd_rn(s, __fmul_rn(x[i], x[i]));
        s = warp_sum(s);
        const float inv =
            __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(s, (float)a.head_dim), a.eps)));
        for (int i = lane; i < a.head_dim; i += 32) x[i] = __fmul_rn(w[i], __fmul_rn(x[i], inv));
        __syncwarp();
    }
    const int half = a.rotary_dim >> 1;
    const float* c = a.rope_cos + (size_t)p * half;
    const float* sn = a.rope_sin + (size_t)p * half;
    for (int i = lane; i < half; i += 32) {
        const float xa = x[i], xb = x[i + half];
        x[i] = __fsub_rn(__fmul_rn(xa, c[i]), __fmul_rn(xb, sn[i]));
        x[i + half] = __fadd_rn(__fmul_rn(xb, c[i]), __fmul_rn(xa, sn[i]));
    }
    if (!is_q && a.kv_stage) {
        __syncwarp();  // every lane's writes of x are seen
        const int g = head - a.heads;
        kv_round_row(x, a.kq, a.kscale, (size_t)g * a.cache_capacity + p, a.head_dim, a.kv, lane);
    }
}

// Must match `NormResidArgs` in kernels/src/cuda/misc.rs.
struct NormResidArgs {
    const float* y;          // [ntok][hidden]: a projection's output
    const float* w;          // f32 [hidden]: the norm applied to it before the residual
    const float* norm_next;  // f32 [hidden]: the norm that reads h next
    float* h;                // [ntok][hidden]
    float* xw;               // [ntok][hidden]: norm_next * h
    float* partial;          // [ntok][PSTRIDE]: slot 0 gets sum(h^2) (the next norm's input)
    int ntok;
    int hidden;
    float eps;
    int pad_;
};

// The block's sum of each thread's `v`: the butterfly per warp, then the 8 warps in order.
__device__ __forceinline__ float block_sum_256(float v, float* s_red) {
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) s_red[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = s_red[0];
    for (int w = 1; w < 8; w++) s = __fadd_rn(s, s_red[w]);
    __syncthreads();
    return s;
}

// Gemma's norms around attention and MLP: h += w * (y * inv_rms(y)), then the next norm's inputs
// (as the embedding writes them). One block a token; fixed-order sums, so any batch gives the
// same bits.
extern "C" __global__ void __launch_bounds__(256) norm_residual(NormResidArgs a) {
    __shared__ float s_red[8];
    pdl_wait();
    pdl_launch_dependents();
    const int t = blockIdx.x, tid = threadIdx.x;
    const float* y = a.y + (size_t)t * a.hidden;
    float* h = a.h + (size_t)t * a.hidden;
    float* xw = a.xw + (size_t)t * a.hidden;
    float s = 0.0f;
    for (int c = tid; c < a.hidden; c += 256) s = __fadd_rn(s, __fmul_rn(y[c], y[c]));
    s = block_sum_256(s, s_red);
    const float inv =
        __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(s, (float)a.hidden), a.eps)));
    float sq = 0.0f;
    for (int c = tid; c < a.hidden; c += 256) {
        const float hn = __fadd_rn(h[c], __fmul_rn(a.w[c], __fmul_rn(y[c], inv)));
        h[c] = hn;
        xw[c] = __fmul_rn(a.norm_next[c], hn);
        sq = __fadd_rn(sq, __fmul_rn(hn, hn));
    }
    sq = block_sum_256(sq, s_red);
    if (tid == 0) a.partial[(size_t)t * PSTRIDE] = sq;
}

__device__ __forceinline__ u64 fmix64(u64 k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}

// The residency hash (kernels/src/cuda/hash.rs documents it and computes it on the CPU):
// sum over the 8-byte little-endian words w_i (the last one zero-padded) of
// fmix64(w_i ^ (i * 0x9E3779B97F4A7C15)), modulo 2^64. Integer addition makes it independent of
// the order of the terms; the host finishes with fmix64(sum ^ len).
// Must match `HashArgs` in kernels/src/cuda/misc.rs.
struct HashArgs {
    const unsigned char* p;
    u64 nbytes;
    u64* out;
};

extern "C" __global__ void hash_words(HashArgs a) {
    const unsigned char* p = a.p;
    const u64 nbytes = a.nbytes;
    u64* out = a.out;
    const u64 full = nbytes / 8, nwords = (nbytes + 7) / 8;
    const u64* w = (const u64*)p;
    u64 s = 0;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < nwords;
         i += (u64)gridDim.x * blockDim.x) {
        u64 v;
        if (i < full) v = w[i];
        else {
            v = 0;
            for (u64 b = i * 8; b < nbytes; b++) v |= (u64)p[b] << (8 * (b - i * 8));
        }
        s += fmix64(v ^ (i * 0x9E3779B97F4A7C15ull));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) atomicAdd(out, s);
}

// Must match `ReadArgs` in kernels/src/cuda/misc.rs.
struct ReadArgs {
    const uint4* p;
    u64 n;
    u32* sink;
};

// Reads n 16-byte vectors once (a grid-stride loop, four loads in flight per thread).
extern "C" __global__ void read_bw(ReadArgs a) {
    const uint4* p = a.p;
    const u64 n = a.n;
    u32* sink = a.sink;
    u32 acc = 0;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n; i += 4 * stride) {
        uint4 a = ld_stream(p + i), b = ld_stream(p + i + stride);
        uint4 c = ld_stream(p + i + 2 * stride), d = ld_stream(p + i + 3 * stride);
        acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w;
        acc ^= c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < n; i += stride) {
        uint4 a = ld_stream(p + i);
        acc ^= a.x ^ a.y ^ a.z ^ a.w;
    }
    if (acc == 0x9E3779B9u) atomicAdd(sink, 1u);
}
