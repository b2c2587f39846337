// An experiment, not product code (BENCHMARKS.md, fourteenth session; run by run.sh beside it):
// does a decode step whose weights stream to the chip independently of the activations reach
// more of the HBM bandwidth than cllm's graph of programmatic-launch kernels?
//
// One persistent kernel per step, one block per SM, the step's bf16 matrices in order (TinyLlama
// or Llama-7B shapes: per layer q/k/v, a stand-in attention, o, gate/up, down; then the LM head).
// Warp 0's lane 0 is the producer: stage after stage it bulk-copies its block's rows
// (`cp.async.bulk` on an mbarrier) into a ring of shared-memory slots, never waiting on an
// activation. Warps 1..NC consume: a chunk of up to 4 rows per warp, x from a shared copy, one
// warp's sums per row (so not cllm's reduction order: this measures speed, not bits).
// Between stages the consumers wait for the previous stage everywhere: a counter in global memory
// (mode 0), or no counter at all, each activation carrying its stage's tag in its upper 32 bits
// and polled until the tag is the expected one (mode 4, the "LL" protocol).
// The stand-in attention: blocks 0..heads-1 read their head's q (head_dim values) and 2 x 144
// positions of keys and values, and write head_dim values.
//
//   stream-step SHAPE(tiny|7b) SLOT_KB STEPS MODE INFLIGHT
//   MODE: 0 counter barrier; +1 no barrier wait; +2 no products (consumers only release slots);
//         4 tagged activations instead of the counter. INFLIGHT: most slots in flight.
// Prints the step time against the bytes alone at the bandwidth measured by a read kernel, and
// from one traced step, per kind of stage: the spread of the blocks' finishing times, the lag
// from the last block's finish to the first block's release (mode 0) or input (mode 4), the
// stage's duration against its bytes alone, and how long before the consumers' finish the
// producer had issued the stage's last copy (the ring running ahead).
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
// u32, u64 and warp_sum are the product kernels' own.
#include "../../kernels/cuda/common.cuh"

#ifndef NC
#define NC 8              // consumer warps
#endif
#define MAXST 256
// The attention's warp sums in shared memory, rounded up so that x's copy after them is 16-byte
// aligned (it is read as float4).
#define RED_FLOATS ((NC + 3) & ~3)
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1);} } while (0)

struct Stage {
    const uint16_t* W;  // bf16 rows x cols, or null (a barrier-only stage: fake attention)
    const u64* x;       // tagged activations: (tag << 32) | float bits
    u64* y;
    int rows, cols;
    int attn;           // fake attention: blocks < attn read 'kv' and write y[block]
};

__device__ __forceinline__ u64 gtime() { u64 t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
struct Params {
    Stage st[MAXST];
    int nst;
    int slot_bytes;
    int nslots;
    u32* counter;
    u32 epoch_base;    // counter value at the start of this step
    const float* kv;   // fake attention's keys/values
    int kv_floats;     // per head
    int hd;            // head dim
    u32 step;          // tags: step * nst + stage + 1
    u64* trace;        // [3][MAXST][G]: consumers' finish, barrier release, producer's last issue
    int inflight;      // most slots in flight (issued, not arrived)
    int mode;          // see the header
};

__device__ __forceinline__ u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(u64* b, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(u64* b, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u64* b) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(b)) : "memory");
}
__device__ __forceinline__ void mbar_wait(u64* b, u32 parity) {
    asm volatile(
        "{\n .reg .pred p;\n WAIT_%=:\n"
        " mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        " @!p bra WAIT_%=;\n}\n" ::"r"(smem_u32(b)), "r"(parity) : "memory");
}
__device__ __forceinline__ void bulk_g2s(void* dst, const void* src, u32 bytes, u64* bar) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
        ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ u32 ld_acquire(const u32* p) {
    u32 v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ u64 ld_relaxed64(const u64* p) {
    u64 v;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_relaxed64(u64* p, u64 v) {
    asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ u64 tagged(u32 tag, float f) { return ((u64)tag << 32) | __float_as_uint(f); }
// x[i] for i = t, t + stride, ... < n into xs, each polled until its tag is `want` (any tag if !check)
__device__ __forceinline__ void load_tagged(const u64* x, float* xs, int n, int t, int stride, u32 want, bool check) {
    for (int i0 = t; i0 < n; i0 += 8 * stride) {
        u64 v[8];
#pragma unroll
        for (int j = 0; j < 8; j++) { int i = i0 + j * stride; v[j] = i < n ? ld_relaxed64(x + i) : 0; }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            int i = i0 + j * stride;
            if (i < n) {
                while (check && (u32)(v[j] >> 32) != want) v[j] = ld_relaxed64(x + i);
                xs[i] = __uint_as_float((u32)v[j]);
            }
        }
    }
}
__device__ __forceinline__ void cbar() { asm volatile("bar.sync 1, %0;" ::"n"(NC * 32) : "memory"); }

// rows of stage s owned by block b, and rows per chunk
__device__ __forceinline__ void share(const Stage& s, int b, int G, int slot_bytes, int& r0, int& r1, int& cr) {
    r0 = (int)((long long)s.rows * b / G);
    r1 = (int)((long long)s.rows * (b + 1) / G);
    int rb = s.cols * 2;
    cr = slot_bytes / rb;
    if (cr > 4) cr = 4;
    if (cr < 1) cr = 1;
}

extern __shared__ __align__(128) unsigned char smem[];

__global__ void __launch_bounds__((NC + 1) * 32, 1) mega(const __grid_constant__ Params p) {
    const int G = gridDim.x, b = blockIdx.x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    u64* full = (u64*)smem;
    u64* empty = full + 32;
    float* red = (float*)(empty + 32);           // the attention's warp sums
    float* xs = red + RED_FLOATS;                 // x copy
    int maxcols = 0;
    for (int s = 0; s < p.nst; s++) maxcols = max(maxcols, p.st[s].cols);
    unsigned char* ring = (unsigned char*)(((uintptr_t)(xs + maxcols) + 127) & ~(uintptr_t)127);
    if (threadIdx.x == 0) {
        for (int i = 0; i < p.nslots; i++) { mbar_init(&full[i], 1); mbar_init(&empty[i], 1); }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (warp == 0) {
        if (lane != 0) return;
        int n = 0;
        for (int si = 0; si < p.nst; si++) {
            const Stage& s = p.st[si];
            if (!s.W) continue;
            int r0, r1, cr;
            share(s, b, G, p.slot_bytes, r0, r1, cr);
            for (int r = r0; r < r1; r += cr, n++) {
                const int slot = n % p.nslots, round = n / p.nslots;
                mbar_wait(&empty[slot], (round & 1) ^ 1);
                // (a limit of nslots or more is no limit: the ring bounds what is in flight)
                if (p.inflight < p.nslots && n >= p.inflight) {
                    const int o = n - p.inflight;
                    mbar_wait(&full[o % p.nslots], (o / p.nslots) & 1);
                }
                const u32 bytes = (u32)(min(cr, r1 - r) * s.cols * 2);
                mbar_expect_tx(&full[slot], bytes);
                bulk_g2s(ring + (size_t)slot * p.slot_bytes, s.W + (size_t)r * s.cols, bytes, &full[slot]);
            }
            if (p.trace) p.trace[(2 * MAXST + si) * G + b] = gtime();
        }
        return;
    }
    const int cw = warp - 1;            // consumer warp
    const int ct = threadIdx.x - 32;    // consumer thread
    // Stage si's outputs carry the tag step * nst + si + 1; so its input's is tag0 + si.
    const u32 tag0 = p.step * p.nst;
    int n = 0;
    for (int si = 0; si < p.nst; si++) {
        const Stage& s = p.st[si];
        // wait for the previous stage everywhere
        if (si > 0) {
            if (ct == 0 && !(p.mode & 5)) {
                const u32 target = p.epoch_base + (u32)si * G;
                while ((int)(ld_acquire(p.counter) - target) < 0) {}
                if (p.trace) p.trace[(MAXST + si) * G + b] = gtime();
            }
            cbar();
        }
        if (!s.W) {
            // fake attention: block b < attn polls q of head b, reads its keys and values, writes hd outputs
            const bool ll = p.mode & 4;
            if (b < s.attn) {
                load_tagged(s.x + (size_t)b * p.hd, xs, p.hd, ct, NC * 32, tag0 + si, ll);
                cbar();
                if (ct == 0 && ll && p.trace) p.trace[(MAXST + si) * G + b] = gtime();
                const float* kv = p.kv + (size_t)b * p.kv_floats;
                float acc = 0.f;
#pragma unroll 8
                for (int i = ct; i < p.kv_floats; i += NC * 32) acc += __ldcg(kv + i) * xs[i % p.hd];
                acc = warp_sum(acc);
                if (lane == 0) red[cw] = acc;
                cbar();
                if (ct < p.hd) {
                    float t = 0; for (int k = 0; k < NC; k++) t += red[k];
                    st_relaxed64(s.y + (size_t)b * p.hd + ct, tagged(tag0 + si + 1, t * 1e-3f * (ct + 1)));
                }
            }
        } else {
            // x to shared
            load_tagged(s.x, xs, s.cols, ct, NC * 32, tag0 + si, (p.mode & 4) && si > 0);
            cbar();
            if (ct == 0 && (p.mode & 4) && p.trace) p.trace[(MAXST + si) * G + b] = gtime();
            int r0, r1, cr;
            share(s, b, G, p.slot_bytes, r0, r1, cr);
            const int nvec = s.cols / 8;
            const int nch = (r1 - r0 + cr - 1) / cr;
            // chunk c of this stage goes to warp c % NC; each warp does whole rows alone
            for (int c = cw; c < nch; c += NC) {
                const int nn = n + c;
                const int slot = nn % p.nslots, round = nn / p.nslots;
                const int r = r0 + c * cr;
                const int rows = min(cr, r1 - r);
                // round r's data only once round r - 1 was consumed (parity aliasing)
                if (round > 0) mbar_wait(&empty[slot], (round - 1) & 1);
                mbar_wait(&full[slot], round & 1);
                const uint4* wv = (const uint4*)(ring + (size_t)slot * p.slot_bytes);
                float acc[4] = {0.f, 0.f, 0.f, 0.f};
                for (int v = lane; v < ((p.mode & 2) ? 0 : nvec); v += 32) {
                    float4 xa = ((const float4*)xs)[2 * v], xb = ((const float4*)xs)[2 * v + 1];
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        if (q < rows) {
                            uint4 w = wv[q * nvec + v];
                            float c0 = __uint_as_float(w.x << 16) * xa.x;
                            c0 = fmaf(__uint_as_float(w.x & 0xffff0000u), xa.y, c0);
                            c0 = fmaf(__uint_as_float(w.y << 16), xa.z, c0);
                            c0 = fmaf(__uint_as_float(w.y & 0xffff0000u), xa.w, c0);
                            float c1 = __uint_as_float(w.z << 16) * xb.x;
                            c1 = fmaf(__uint_as_float(w.z & 0xffff0000u), xb.y, c1);
                            c1 = fmaf(__uint_as_float(w.w << 16), xb.z, c1);
                            c1 = fmaf(__uint_as_float(w.w & 0xffff0000u), xb.w, c1);
                            acc[q] = acc[q] + (c0 + c1);
                        }
                    }
                }
                __syncwarp();
                if (lane == 0) mbar_arrive(&empty[slot]);
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    float t = warp_sum(acc[q]);
                    if (lane == q && q < rows) st_relaxed64(s.y + r + q, tagged(tag0 + si + 1, t * 0.05f));
                }
            }
            n += nch;
        }
        cbar();
        if (ct == 0) {
            if (p.trace) p.trace[si * G + b] = gtime();
            if (!(p.mode & 4)) { __threadfence(); atomicAdd(p.counter, 1u); }
        }
    }
}

__global__ void fill(uint16_t* w, size_t n, u32 seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        u32 h = (u32)i * 2654435761u ^ seed;
        h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
        float f = ((int)(h & 0xffff) - 32768) * (1.0f / 32768.0f) * 0.05f;
        w[i] = (uint16_t)(__float_as_uint(f) >> 16);
    }
}
__global__ void fillf(float* x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = 0.01f * (float)((i * 7) % 13) - 0.05f;
}
__global__ void readbw(const uint4* p, size_t n, u32* sink) {
    uint4 a = make_uint4(0, 0, 0, 0);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = __ldcs(p + i);
        a.x ^= v.x; a.y ^= v.y; a.z ^= v.z; a.w ^= v.w;
    }
    if ((a.x ^ a.y ^ a.z ^ a.w) == 0x12345678u) *sink = 1;
}

int main(int argc, char** argv) {
    // shape: tiny | 7b
    const char* shape = argc > 1 ? argv[1] : "tiny";
    int slot_kb = argc > 2 ? atoi(argv[2]) : 16;
    int steps = argc > 3 ? atoi(argv[3]) : 100;
    int mode = argc > 4 ? atoi(argv[4]) : 0;
    int inflight = argc > 5 ? atoi(argv[5]) : 1 << 30;
    int H, I, L, QKV, V, heads;
    if (shape[0] == 't') { H = 2048; I = 5632; L = 22; QKV = 2048 + 512; V = 32000; heads = 32; }
    else { H = 4096; I = 11008; L = 32; QKV = 3 * 4096; V = 32000; heads = 32; }
    int dev = 0; CK(cudaSetDevice(dev));
    cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, dev));
    const int G = prop.multiProcessorCount;
    // weights: per layer qkv [QKV x H], o [H x H], gateup [2I x H], down [H x I]; lm_head [V x H]
    size_t per_layer = (size_t)QKV * H + (size_t)H * H + (size_t)2 * I * H + (size_t)H * I;
    size_t total = per_layer * L + (size_t)V * H;
    uint16_t* W; CK(cudaMalloc(&W, total * 2));
    fill<<<1024, 256>>>(W, total, 1234u);
    u64* act; size_t actn = (size_t)8 * 65536; CK(cudaMalloc(&act, actn * 8)); CK(cudaMemset(act, 0, actn * 8));
    int hd = H / heads; int kv_floats = 2 * 144 * hd;
    float* kv; CK(cudaMalloc(&kv, (size_t)heads * kv_floats * 4)); fillf<<<64, 256>>>(kv, (size_t)heads * kv_floats);
    u32* counter; CK(cudaMalloc(&counter, 4)); CK(cudaMemset(counter, 0, 4));
    Params* p = (Params*)calloc(1, sizeof(Params));
    u64* A = act; u64* B = act + 65536; u64* C = act + 2 * 65536; u64* D = act + 3 * 65536;
    int ns = 0; size_t off = 0;
    auto add = [&](size_t rows, size_t cols, const u64* x, u64* y) {
        Stage& s = p->st[ns++]; s.W = W + off; s.rows = (int)rows; s.cols = (int)cols; s.x = x; s.y = y; s.attn = 0;
        off += rows * cols;
    };
    for (int l = 0; l < L; l++) {
        add(QKV, H, A, B);
        Stage& s = p->st[ns++]; s.W = nullptr; s.rows = 0; s.cols = 0; s.x = B; s.y = C; s.attn = heads;
        add(H, H, C, D);     // o_proj (reads attention out C; fine for timing)
        add(2 * (size_t)I, H, D, B);
        add(H, I, B, A);
    }
    add(V, H, A, C);
    p->nst = ns;
    if (off != total) { printf("bad off\n"); return 1; }
    // Shared memory as the kernel lays it out: 32 full and 32 empty barriers, red, x, the ring.
    int maxcols = 0;
    for (int si = 0; si < ns; si++) maxcols = std::max(maxcols, p->st[si].cols);
    size_t head = 64 * 8 + RED_FLOATS * 4 + (size_t)maxcols * 4 + 128;
    int maxsmem = prop.sharedMemPerBlockOptin;
    int slot_bytes = slot_kb * 1024;
    if (slot_bytes < I * 2) slot_bytes = (I * 2 + 127) / 128 * 128;
    int nslots = (int)((maxsmem - head) / slot_bytes);
    if (nslots > 32) nslots = 32;
    if (nslots < NC) { printf("nslots %d < NC %d\n", nslots, NC); return 1; }
    size_t smem = head + (size_t)nslots * slot_bytes;
    p->slot_bytes = slot_bytes; p->nslots = nslots; p->counter = counter; p->kv = kv; p->kv_floats = kv_floats; p->hd = hd; p->mode = mode; p->inflight = inflight; p->trace = nullptr;
    CK(cudaFuncSetAttribute(mega, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    printf("shape %s G=%d stages=%d slot=%d B x %d slots, smem %zu, weights %.3f GB\n", shape, G, ns, slot_bytes, nslots, smem, total * 2 / 1e9);
    // bandwidth
    size_t bwn = (size_t)4 << 30; void* bw; CK(cudaMalloc(&bw, bwn));
    CK(cudaMemset(bw, 1, bwn));
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    std::vector<float> bws;
    for (int i = 0; i < 10; i++) {
        cudaEventRecord(e0); readbw<<<G * 8, 512>>>((const uint4*)bw, bwn / 16, counter + 0); cudaEventRecord(e1);
        CK(cudaEventSynchronize(e1)); float ms; cudaEventElapsedTime(&ms, e0, e1); bws.push_back(bwn / (ms * 1e-3) / 1e9);
    }
    std::sort(bws.begin(), bws.end());
    double bwgbs = bws[5];
    CK(cudaFree(bw));
    CK(cudaMemset(counter, 0, 4));
    // steps
    u32 epoch = 0, stepno = 1;
    auto step = [&]() {
        p->epoch_base = epoch; epoch += (u32)ns * G; p->step = stepno++;
        mega<<<G, (NC + 1) * 32, smem>>>(*p);
    };
    for (int i = 0; i < 5; i++) step();
    CK(cudaDeviceSynchronize());
    cudaEventRecord(e0);
    for (int i = 0; i < steps; i++) step();
    cudaEventRecord(e1);
    CK(cudaEventSynchronize(e1));
    float ms; cudaEventElapsedTime(&ms, e0, e1);
    double per = ms / steps;
    double bytes = total * 2.0;
    printf("mode %d inflight %d: bandwidth", mode, inflight);
    printf(" %.0f GB/s; step %.3f ms (%.1f tok/s); bytes alone %.3f ms; %.1f %% of bandwidth\n",
           bwgbs, per, 1000.0 / per, bytes / bwgbs / 1e6, 100.0 * bytes / (per * 1e-3) / (bwgbs * 1e9));
    {
        u64* tr; size_t tn = (size_t)3 * MAXST * G; CK(cudaMalloc(&tr, tn * 8)); CK(cudaMemset(tr, 0, tn * 8));
        p->trace = tr; step(); CK(cudaDeviceSynchronize()); p->trace = nullptr;
        std::vector<u64> t(tn); CK(cudaMemcpy(t.data(), tr, tn * 8, cudaMemcpyDeviceToHost));
        auto at = [&](int k, int si, int bb) { return (double)t[((size_t)k * MAXST + si) * G + bb]; };
        // per stage: spread of consumer finish, release lag after last finish, duration, bytes time
        const char* names[5] = {"qkv", "attn", "o", "gateup", "down"};
        double sp[6] = {0}, lag[6] = {0}, dur[6] = {0}, byt[6] = {0}, plag[6] = {0}; int cnt[6] = {0};
        double prev_end = 0;
        for (int si = 0; si < ns; si++) {
            double mn = 1e300, mx = 0, pmx = 0;
            for (int bb = 0; bb < G; bb++) { mn = std::min(mn, at(0, si, bb)); mx = std::max(mx, at(0, si, bb)); pmx = std::max(pmx, at(2, si, bb)); }
            double rel = 0; if (si + 1 < ns) { rel = 1e300; for (int bb = 0; bb < G; bb++) if (at(1, si + 1, bb) > 0) rel = std::min(rel, at(1, si + 1, bb)); if (rel == 1e300) rel = 0; }
            int k = si == ns - 1 ? 5 : si % 5;
            sp[k] += mx - mn; if (si + 1 < ns) lag[k] += rel - mx; dur[k] += si ? mx - prev_end : 0; cnt[k]++;
            byt[k] += p->st[si].W ? (double)p->st[si].rows * p->st[si].cols * 2 / (bwgbs) : 0;  // ns
            plag[k] += p->st[si].W ? mx - pmx : 0;
            prev_end = mx;
        }
        for (int k = 0; k < 6; k++) if (cnt[k]) printf("  %-7s x%2d: finish spread %6.2f us, release lag %5.2f us, stage %6.2f us (bytes %6.2f), last-issue-to-finish %6.2f us\n",
            k < 5 ? names[k] : "lmhead", cnt[k], sp[k] / cnt[k] / 1e3, lag[k] / cnt[k] / 1e3, dur[k] / cnt[k] / 1e3, byt[k] / cnt[k] / 1e3, plag[k] / cnt[k] / 1e3);
    }
    u64 h[4]; CK(cudaMemcpy(h, C, 32, cudaMemcpyDeviceToHost));
    printf("out tags %u %u %u, step %u\n", (u32)(h[0] >> 32), (u32)(h[1] >> 32), (u32)(h[3] >> 32), stepno);
    return 0;
}
