// An experiment, not product code (BENCHMARKS.md, fourteenth session; run by run.sh beside it):
// how long one dependent load takes (a chase through an L2-resident 256 KB ring, and through a
// 1 GB ring that misses to HBM) from one SM, with the GPU idle, while every SM streams HBM at full
// rate, and while every other SM does (the chasing SM's streaming blocks return at once).
// A decode step's critical path is such a chain: a launch's or barrier's release, the input
// vector, the norm's partial sums, the outputs' stores.
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cuda_runtime.h>
typedef unsigned long long u64;
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1);} } while (0)

__device__ __forceinline__ u64 gtime() { u64 t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }

__device__ unsigned chase_sm = 0xffffffffu;
__device__ __forceinline__ unsigned smid() { unsigned s; asm volatile("mov.u32 %0, %%smid;" : "=r"(s)); return s; }
// One thread follows next[] for hops steps, recording the time every 256 hops.
__global__ void chase(const unsigned* next, int hops, u64* stamps, unsigned* sink) {
    chase_sm = smid();
    __threadfence();
    unsigned i = 0;
    for (int h = 0; h < hops; h++) {
        if ((h & 255) == 0) stamps[h >> 8] = gtime();
        asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(i) : "l"(next + i));
    }
    *sink = i;
}
__global__ void stream(const uint4* p, size_t n, int passes, u64* se, unsigned* sink, int avoid) {
    if (threadIdx.x == 0 && blockIdx.x == 0) se[0] = gtime();
    if (avoid && smid() == *(volatile unsigned*)&chase_sm) return;
    uint4 a = make_uint4(0, 0, 0, 0);
    for (int k = 0; k < passes; k++)
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
            uint4 v = __ldcs(p + i);
            a.x ^= v.x; a.y ^= v.y;
        }
    if ((a.x ^ a.y) == 0x1234567u) *sink = 1;
    __syncthreads();
    if (threadIdx.x == 0) atomicMax(&se[1], gtime());
}

int main() {
    cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, 0));
    const int G = prop.multiProcessorCount;
    size_t bn = (size_t)4 << 30; void* big; CK(cudaMalloc(&big, bn)); CK(cudaMemset(big, 1, bn));
    unsigned* sink; CK(cudaMalloc(&sink, 64));
    u64* se; CK(cudaMalloc(&se, 16));
    cudaStream_t s1, s2; cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking); cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking);
    for (int which = 0; which < 2; which++) {
        // L2: a 256 KB ring; HBM: a 1 GB one; one hop per 256 bytes, in a random order
        size_t n = which == 0 ? 65536 : ((size_t)1 << 28);
        std::vector<unsigned> nx(n);
        std::vector<unsigned> perm(n / 64);
        for (size_t k = 0; k < perm.size(); k++) perm[k] = (unsigned)k;
        srand(7);
        for (size_t k = perm.size() - 1; k > 0; k--) { size_t j = rand() % (k + 1); std::swap(perm[k], perm[j]); }
        for (size_t k = 0; k < perm.size(); k++) nx[(size_t)perm[k] * 64] = perm[(k + 1) % perm.size()] * 64;
        unsigned* d; CK(cudaMalloc(&d, n * 4)); CK(cudaMemcpy(d, nx.data(), n * 4, cudaMemcpyHostToDevice));
        const int hops = which == 0 ? 400000 : 60000;
        u64* st; CK(cudaMalloc(&st, (hops / 256 + 1) * 8));
        chase<<<1, 1, 0, s1>>>(d, 1000, st, sink);  // warm (and load both kernels)
        stream<<<G, 512, 0, s2>>>((const uint4*)big, bn / 16, 0, se, sink, 0);
        CK(cudaDeviceSynchronize());
        for (int loaded = 0; loaded < 3; loaded++) {
            CK(cudaMemset(se, 0, 16));
            chase<<<1, 1, 0, s1>>>(d, hops, st, sink);
            if (loaded) stream<<<(G - 1) * 4, 512, 0, s2>>>((const uint4*)big, bn / 16, 40, se, sink, loaded == 2);
            CK(cudaDeviceSynchronize());
            std::vector<u64> t(hops / 256); CK(cudaMemcpy(t.data(), st, t.size() * 8, cudaMemcpyDeviceToHost));
            u64 h[2]; CK(cudaMemcpy(h, se, 16, cudaMemcpyDeviceToHost));
            double in = 0, out = 0; int nin = 0, nout = 0;
            for (size_t k = 1; k < t.size(); k++) {
                double dt = (double)(t[k] - t[k - 1]) / 256.0;
                if (loaded && t[k - 1] > h[0] && t[k] < h[1]) { in += dt; nin++; } else { out += dt; nout++; }
            }
            double sbw = loaded ? (double)bn * 40 / (double)(h[1] - h[0]) : 0;
            printf("%s chase, %s: %.0f ns per hop (%d samples)%s", which == 0 ? "L2 " : "HBM", loaded == 2 ? "the other SMs streaming" : loaded ? "all SMs streaming" : "idle",
                   loaded ? in / nin : out / nout, loaded ? nin : nout, loaded ? "" : "\n");
            if (loaded) printf("; stream %.0f GB/s; outside the stream %.0f ns\n", sbw, nout ? out / nout : 0.0);
        }
        CK(cudaFree(d)); CK(cudaFree(st));
    }
    return 0;
}
