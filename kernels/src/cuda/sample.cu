// Sampling the next token on the GPU (temperature, top-k, top-p and the draw) in one block of
// SAMPLE_THREADS threads, with the generator's state in device memory, so a decode step plus a
// draw needs no host work: the chosen token goes to the argmax slot that the next step's `embed`
// reads, and the host only reads the result words to stream the token.
//
// The reference is the CPU `Sampler` (runtime/src/sampler.rs); this kernel follows it step by
// step on the same f32 logits:
//
//   Order.   A token's key is ((total-order bits of its f32 logit) << 32) | ~id. Dividing by a
//            positive temperature in f64 keeps the order of f64::total_cmp (-0.0 below +0.0), so
//            descending keys are exactly the CPU's order: descending scaled logit, ascending id
//            on ties. All keys are distinct.
//   Top-k.   The k-th largest key by radix select on counts (integers): the kept set C is
//            exactly the CPU's, ties at the boundary included.
//   Sort.    The SAMPLE_CAP (1024) largest keys of C, the candidates, are selected the same way,
//            gathered and bitonic-sorted: exactly the CPU's first 1024 in order.
//   Softmax. e = exp(l / t - lmax / t) with the CPU's f64 division and subtraction, and CUDA's
//            f64 exp (within 1 ulp, as the host libm's; the two can differ in the last bit).
//            Far below the maximum (f32 estimate of the exponent < -40), e is computed in f32:
//            each such term is < 5e-18 of z >= 1, with an error below 1e-22. p = e / z in f64,
//            z the sum of e over C (in a fixed order: the candidates' tree, or per thread over
//            ids then a tree, when C has more than 1024 tokens).
//   Top-p.   The smallest prefix (descending order) whose cumulative p is >= top_p. Among the
//            candidates: an f64 prefix sum with a fixed association (a shuffle tree),
//            deterministic but not the CPU's strictly sequential sum. If the nucleus runs past
//            them, its end is found by a radix select over fixed-point mass (p * 2^62 as u64,
//            summed with integer atomics: exact and order-independent) in the same key order.
//            If top_p is never reached, all of C is kept (as the CPU).
//   Draw.    u = (xoshiro256** >> 11) / 2^53, one draw per sampled token, as the CPU (also for
//            top_k = 1); the token is the first in descending order whose cumulative p exceeds
//            u * total, total the kept mass. Among the candidates the f64 prefix sums decide;
//            past them, a radix select over the fixed-point mass. If rounding leaves the target
//            at the top, the last kept token takes it (as the CPU).
//
// So the RNG stream, the order, the ties and the top-k set are bit-exact, and every decision is
// taken on the same quantity as on the CPU, computed in f64 with another summation order (and
// past the 1024 candidates in 2^-62 fixed point). The chosen token, its rank and the kept-set
// size equal the CPU's unless a cumulative sum lies within about 1e-14 (relative) of the draw
// or of top_p; the same seed and logits give the same token on every run (nothing depends on
// timing or atomics' order). Not covered: +inf logits (both samplers' probabilities are NaN);
// NaN logits stop the draw with status 1 + the lowest NaN id (the CPU's NanLogit), and the
// generator does not advance.
//
// Cost (one SM, so it is bound by instruction issue): two passes over the logits for a top-k or
// candidate selection (the first also finds the maximum; the second compacts the top radix
// bucket into a list, so deeper digits are cheap), one pass of f64 exp for z when C has more
// than 1024 tokens, and two or four more (fixed-point mass selections) only when the nucleus or
// the draw goes past the candidates. Measured per draw: docs/decisions/0014.

#define SAMPLE_THREADS 1024
#define SAMPLE_WARPS 32
#define SAMPLE_CAP 1024                     // candidates sorted: one per thread
#define SAMPLE_RADIX 10                     // bits per radix digit
#define SAMPLE_BINS 1024                    // 1 << SAMPLE_RADIX: thread t owns bin BINS-1-t
#define SAMPLE_FAR (-40.0f)                 // exponents below this are taken in f32
#define SAMPLE_NONE 0x7fffffff
#define SAMPLE_UNROLL 8                     // logits loaded ahead per thread in a pass
static_assert(SAMPLE_CAP == SAMPLE_THREADS && SAMPLE_BINS == SAMPLE_THREADS,
              "one candidate and one radix bin per thread");
static_assert(SAMPLE_WARPS * 32 == SAMPLE_THREADS, "warps");

// Words (u64) of a sampler's device state; must match kernels/src/cuda/sample.rs.
//   [0, 4) xoshiro256** state, advanced once per sampled token
//   4      the chosen token's key (argmax_key of its logit and id), also written to `out`
//   5      status: 0, or 1 + the lowest id whose logit is NaN (nothing drawn)
//   6      (kept tokens << 32) | the chosen token's rank in the kept list (0 = most likely)
//   7      tokens drawn since seeding
#define SST_KEY 4
#define SST_STATUS 5
#define SST_INFO 6
#define SST_DRAWS 7

// Must match `SampleArgs` in kernels/src/cuda/sample.rs.
struct SampleArgs {
    const float* logits;   // [vocab]: one token's logits
    u64* state;            // the SST_* words
    u64* out;              // the argmax slot the next `embed` reads
    u64* scratch;          // [4][vocab] words: three key lists, then f64 masses
    int vocab;
    int top_k;             // 0 (or >= vocab): no top-k
    float temperature;     // > 0, finite (checked by the host)
    float top_p;           // (0, 1]; 1: no top-p
};

struct SampleShared {
    u64 cand[SAMPLE_CAP];       // candidate keys, sorted descending
    u32 mlo[SAMPLE_BINS];       // radix histogram: fixed-point mass per digit (low words)
    u32 mhi[SAMPLE_BINS];       // (high words)
    u32 cnt[SAMPLE_BINS];       // radix histogram: keys per digit
    u64 uscr[SAMPLE_WARPS];     // block scan scratch
    int nscr[SAMPLE_WARPS];
    double dscr[SAMPLE_WARPS];
    u64 sel_above, sel_above_n, sel_cnt, sel_mass, found;
    double u, cut;
    u32 sel_digit, sel_need, ncand, list_n;
    int first, pick;
};

// The softmax's constants.
struct SampleSoftmax {
    double t;        // temperature
    double smax;     // lmax / t: the CPU's `max`
    double qscale;   // 2^62 / z: fixed-point mass per unit of e
    float lmax;      // the largest logit (the first in the order)
    float inv_t;     // 1 / temperature in f32: only classifies the far tail
};

__device__ __forceinline__ u64 smp_key(float v, int i) {
    u32 b = __float_as_uint(v);
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((u64)b << 32) | (u64)(~(u32)i);
}

__device__ __forceinline__ float smp_value(u64 k) {
    const u32 b = (u32)(k >> 32);
    return __uint_as_float((b & 0x80000000u) ? (b & 0x7fffffffu) : ~b);
}

__device__ __forceinline__ u32 smp_id(u64 k) { return ~(u32)(k & 0xffffffffull); }

// One pass over the logits: f(i, v) for i = threadIdx.x, + SAMPLE_THREADS, ... in increasing
// order, SAMPLE_UNROLL loads in flight per thread (one block alone is bound by L2 latency
// otherwise). f is also called for i >= n (with v = 0), so every lane of a warp takes part in
// f's warp-wide operations; f must ignore those.
template <typename F>
__device__ __forceinline__ void smp_pass(const float* lg, int n, F f) {
    for (int base = 0; base < n; base += SAMPLE_THREADS * SAMPLE_UNROLL) {
        float v[SAMPLE_UNROLL];
#pragma unroll
        for (int u = 0; u < SAMPLE_UNROLL; u++) {
            const int i = base + u * SAMPLE_THREADS + (int)threadIdx.x;
            v[u] = i < n ? __ldg(lg + i) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < SAMPLE_UNROLL; u++) f(base + u * SAMPLE_THREADS + (int)threadIdx.x, v[u]);
    }
}

// exp(l / t - lmax / t) as the CPU computes it (see the header for the far tail).
__device__ __forceinline__ double smp_e(const SampleSoftmax& s, float l) {
    const float d = (l - s.lmax) * s.inv_t;
    if (d < SAMPLE_FAR) return (double)expf(d);
    return exp((double)l / s.t - s.smax);
}

// Exclusive prefix sum over the block's threads in thread order (integers: exact); *total gets
// the sum. Every thread must call it.
__device__ __forceinline__ u64 smp_scan(u64 v, SampleShared& sh, u64* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u64 x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) sh.uscr[warp] = x;
    __syncthreads();
    if (warp == 0) {
        u64 w = sh.uscr[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const u64 y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += y;
        }
        sh.uscr[lane] = w;
    }
    __syncthreads();
    const u64 r = (warp > 0 ? sh.uscr[warp - 1] : 0ull) + (x - v);
    *total = sh.uscr[SAMPLE_WARPS - 1];
    __syncthreads();
    return r;
}

// Exclusive prefix sum in f64 over the block's threads in thread order, with a fixed association
// (shuffle trees within and across warps): deterministic. *total gets the sum.
__device__ __forceinline__ double smp_scan_f64(double v, SampleShared& sh, double* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    double x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x = x + y;
    }
    double xin = __shfl_up_sync(0xffffffffu, x, 1);
    if (lane == 0) xin = 0.0;
    if (lane == 31) sh.dscr[warp] = x;
    __syncthreads();
    if (warp == 0) {
        double w = sh.dscr[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const double y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w = w + y;
        }
        sh.dscr[lane] = w;
    }
    __syncthreads();
    const double r = warp > 0 ? sh.dscr[warp - 1] + xin : xin;
    *total = sh.dscr[SAMPLE_WARPS - 1];
    __syncthreads();
    return r;
}

// Adds q to a bin's 64-bit mass kept as two u32 words (native 32-bit shared atomics; the carry
// out of the low word is seen in its old value, so the sum is exact in any order).
__device__ __forceinline__ void smp_mass_add(SampleShared& sh, u32 d, u64 q) {
    const u32 ql = (u32)q;
    const u32 old = atomicAdd(&sh.mlo[d], ql);
    atomicAdd(&sh.mhi[d], (u32)(q >> 32) + (old + ql < old ? 1u : 0u));
}

// Adds one key (and mass q, if `weighted`) to bin d for each lane with ok. Every lane of the
// warp calls it. Logits crowd into few top digits, so a warp whose keys share one bin makes one
// update (its mass summed by warp reductions in three 22-bit slices, each sum < 2^27: exact);
// otherwise one count update per distinct bin and one mass update per lane.
__device__ __forceinline__ void smp_hist(bool ok, u32 d, u64 q, bool weighted, SampleShared& sh) {
    const u32 act = __ballot_sync(0xffffffffu, ok);
    if (!ok) return;
    const u32 peers = __match_any_sync(act, d);
    const int lane = threadIdx.x & 31;
    const int leader = __ffs((int)peers) - 1;
    if (weighted) {
        if (peers == act) {  // the same for every active lane: one bin
            const u64 s0 = __reduce_add_sync(act, (u32)(q & 0x3fffffull));
            const u64 s1 = __reduce_add_sync(act, (u32)((q >> 22) & 0x3fffffull));
            const u64 s2 = __reduce_add_sync(act, (u32)(q >> 44));
            if (lane == leader) smp_mass_add(sh, d, s0 + (s1 << 22) + (s2 << 44));
        } else {
            smp_mass_add(sh, d, q);
        }
    }
    if (lane == leader) atomicAdd(&sh.cnt[d], (u32)__popc(peers));
}

// Appends k (lanes with ok) to dst at positions taken from *count, one atomic per warp; positions
// at or past cap are dropped. Every lane of the warp calls it. The order of the appended keys is
// not deterministic; nothing depends on it (lists are only counted, summed in integers or sorted).
__device__ __forceinline__ void smp_append(bool ok, u64 k, u64* dst, u32* count, u32 cap) {
    const u32 bal = __ballot_sync(0xffffffffu, ok);
    if (bal == 0) return;
    const int lane = threadIdx.x & 31, leader = __ffs((int)bal) - 1;
    u32 pos = 0;
    if (lane == leader) pos = atomicAdd(count, (u32)__popc(bal));
    pos = __shfl_sync(0xffffffffu, pos, leader) + (u32)__popc(bal & ((1u << lane) - 1u));
    if (ok && pos < cap) dst[pos] = k;
}

// f(valid, key) for every key of a source: all logits (list == 0; keys in id order), or a list
// of keys in global memory written earlier in this launch (read through L2, not the read-only
// path). Every lane takes part (valid is false past the end), SAMPLE_UNROLL loads in flight.
template <typename F>
__device__ __forceinline__ void smp_each(const float* lg, int n, const u64* list, int len, F f) {
    if (list == 0) {
        smp_pass(lg, n, [&](int i, float v) { f(i < n, i < n ? smp_key(v, i) : 0ull); });
        return;
    }
    for (int base = 0; base < len; base += SAMPLE_THREADS * SAMPLE_UNROLL) {
        u64 k[SAMPLE_UNROLL];
#pragma unroll
        for (int u = 0; u < SAMPLE_UNROLL; u++) {
            const int j = base + u * SAMPLE_THREADS + (int)threadIdx.x;
            k[u] = j < len ? __ldcg(list + j) : 0ull;
        }
#pragma unroll
        for (int u = 0; u < SAMPLE_UNROLL; u++)
            f(base + u * SAMPLE_THREADS + (int)threadIdx.x < len, k[u]);
    }
}

#define SEL_WEIGHTED 1    // select by fixed-point mass (else by count)
#define SEL_GATHER 2      // count: also gather the selected keys into sh.cand
#define SEL_HIST_READY 4  // count: sh.cnt already holds the top digit's histogram of all keys
#define SEL_CLAMP 8       // mass: a goal above the total mass takes the last key with mass

struct SampleSel {
    u64 prefix;      // the chosen bucket: the keys whose bits above `shift` are prefix's
    int shift;
    u64 before;      // mass: the eligible mass above the bucket
    u64 before_n;    // mass: the number of eligible keys above the bucket
    u64 q;           // mass: the bucket's mass (its only key's, when found)
    u64 total;       // mass: all eligible keys' mass (first pass)
    u64 total_n;     // mass: their number
    const u64* src;  // a source holding the bucket's keys: a list, or 0 = all logits
    int src_len;
    bool found;
};

// Radix select over the keys in [lo, hi), from the top digit (SAMPLE_RADIX bits) down.
//   count: the threshold t with exactly `goal` keys >= t (1 <= goal < n). It stops once the
//     chosen bucket holds exactly the keys still needed, so t = prefix (lower bits zero).
//   mass:  the key where the running fixed-point mass in descending order reaches goal (mass
//     before it < goal <= mass through it), q = e * qscale from the f64 masses in `ecache`;
//     found is false when goal is 0 or (without SEL_CLAMP) above the total.
// The first two passes read the logits; from the second on, each pass also writes the keys of
// the chosen bucket to a list in `lists` ([3][n]: list 0, then 1 and 2 in turn), which the next
// pass reads instead, so deep selections cost little. With SEL_GATHER, the second pass also
// gathers the keys above the top bucket into sh.cand, and the end the rest of the selected
// ones (from list 0, or from all logits if the top digit decided). Every thread calls it.
__device__ SampleSel smp_select(const float* lg, int n, u64* lists, const double* ecache, u64 lo,
                                u64 hi, u64 goal, double qscale, int mode, SampleShared& sh) {
    const bool w = (mode & SEL_WEIGHTED) != 0;
    const bool any = lo == 0 && hi == ~0ull;  // every key is eligible
    const int tid = threadIdx.x;
    SampleSel r;
    r.before = 0;
    r.before_n = 0;
    r.q = 0;
    r.total = 0;
    r.total_n = 0;
    r.src = 0;
    r.src_len = n;
    r.found = false;
    u64 prefix = 0, pmask = 0;
    int shift = 64;
    const u64* src = 0;
    int src_len = n;
    int len0 = -1;  // list 0's length (the top bucket's keys), once written
    for (int digit = 0; shift > 0; digit++) {
        const int nb = shift < SAMPLE_RADIX ? shift : SAMPLE_RADIX;
        const int pshift = shift;  // bits at and above pshift are fixed
        shift -= nb;
        const u32 dmask = (1u << nb) - 1u;
        u64* dst = digit == 0 ? 0 : lists + (size_t)n * (digit == 1 ? 0 : (digit & 1) ? 2 : 1);
        const bool ready = digit == 0 && (mode & SEL_HIST_READY) != 0;
        if (!ready) {
            sh.cnt[tid] = 0;
            if (w) {
                sh.mlo[tid] = 0;
                sh.mhi[tid] = 0;
            }
        }
        if (tid == 0) {
            sh.sel_digit = 0;
            sh.sel_need = 0;
            sh.sel_above = 0;
            sh.sel_above_n = 0;
            sh.sel_cnt = 0;
            sh.sel_mass = 0;
            sh.list_n = 0;
        }
        __syncthreads();
        if (!ready) {
            const bool sure = digit == 1 && (mode & SEL_GATHER) != 0;
            smp_each(lg, n, src, src_len, [&](bool valid, u64 k) {
                const bool ok = valid && (k & pmask) == prefix && (any || (k >= lo && k < hi));
                u64 q = 0;
                if (w && ok) q = __double2ull_rn(__ldcg(ecache + smp_id(k)) * qscale);
                smp_hist(ok, ok ? (u32)(k >> shift) & dmask : 0u, q, w, sh);
                if (dst != 0) smp_append(ok, k, dst, &sh.list_n, (u32)n);
                // Keys above the top bucket are all selected.
                if (sure)
                    smp_append(valid && k >= lo && k < hi && (k >> pshift) > (prefix >> pshift),
                               k, sh.cand, &sh.ncand, SAMPLE_CAP);
            });
        }
        __syncthreads();
        const u32 b = SAMPLE_BINS - 1 - tid;  // thread order = descending digits
        const u64 c = sh.cnt[b], m = w ? ((u64)sh.mhi[b] << 32) | sh.mlo[b] : 0ull;
        u64 tot_c, tot_m = 0;
        const u64 above_c = smp_scan(c, sh, &tot_c);
        const u64 above_m = w ? smp_scan(m, sh, &tot_m) : 0ull;
        if (w) {
            if (digit == 0) {
                r.total = tot_m;
                r.total_n = tot_c;
                if (goal > tot_m && (mode & SEL_CLAMP) != 0) goal = tot_m;
                if (goal == 0 || goal > tot_m) break;  // uniform: tot_m is the block's
            }
            if (above_m < goal && goal <= above_m + m) {
                sh.sel_digit = b;
                sh.sel_above = above_m;
                sh.sel_above_n = above_c;
                sh.sel_cnt = c;
                sh.sel_mass = m;
            }
        } else if (above_c < goal && goal <= above_c + c) {
            sh.sel_digit = b;
            sh.sel_need = (u32)(goal - above_c);
            sh.sel_cnt = c;
        }
        __syncthreads();
        prefix |= (u64)sh.sel_digit << shift;
        pmask |= (u64)dmask << shift;
        const u64 c_sel = sh.sel_cnt;
        if (dst != 0) {
            src = dst;
            src_len = (int)sh.list_n;
            if (digit == 1) len0 = src_len;
        }
        r.src = src;  // holds the chosen bucket's keys
        r.src_len = src_len;
        bool done;
        if (w) {
            goal -= sh.sel_above;
            r.before += sh.sel_above;
            r.before_n += sh.sel_above_n;
            r.q = sh.sel_mass;
            r.found = c_sel == 1;
            done = c_sel <= 1;
        } else {
            goal = sh.sel_need;
            done = c_sel == goal;  // (also ends a bad goal: no bucket, 0 == 0)
        }
        __syncthreads();
        if (done) break;
    }
    r.prefix = prefix;
    r.shift = shift;
    if ((mode & SEL_GATHER) != 0) {
        // The selected keys not gathered yet: those >= prefix in list 0 (the top bucket), or,
        // if the selection ended at the top digit, in all logits.
        smp_each(lg, n, len0 >= 0 ? lists : 0, len0 >= 0 ? len0 : n, [&](bool valid, u64 k) {
            smp_append(valid && k >= lo && k < hi && k >= prefix, k, sh.cand, &sh.ncand,
                       SAMPLE_CAP);
        });
        __syncthreads();
    }
    return r;
}

// The key in [lo, hi) of a source whose bits above `shift` are prefix's (there is one).
__device__ u64 smp_find(const float* lg, int n, const u64* src, int len, u64 lo, u64 hi,
                        u64 prefix, int shift, SampleShared& sh) {
    if (threadIdx.x == 0) sh.found = 0;
    __syncthreads();
    smp_each(lg, n, src, len, [&](bool valid, u64 k) {
        if (valid && k >= lo && k < hi && (k >> shift) == (prefix >> shift))
            atomicMax(&sh.found, k);
    });
    __syncthreads();
    const u64 r = sh.found;
    __syncthreads();
    return r;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_token(SampleArgs a) {
    TRACE_BLOCK(6);
    __shared__ SampleShared sh;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n = a.vocab;
    const float* lg = a.logits;
    u64* lists = a.scratch;                                // [3][n] key lists
    double* ecache = (double*)(a.scratch + 3 * (size_t)n); // [n] e of the top-k set
    pdl_wait();
    pdl_launch_dependents();
    if (n <= 0) return;

    // The top-k set C = {key >= t_c} has kk tokens; the candidates, its m largest keys
    // {key >= t_s}, are gathered into sh.cand and sorted.
    const int kk = (a.top_k > 0 && a.top_k < n) ? a.top_k : n;
    const int m = kk < SAMPLE_CAP ? kk : SAMPLE_CAP;
    const bool select = m < n;  // else every token is a candidate

    // 1. NaN check, the largest logit, and the top digit's histogram (the first selection's),
    //    or, when every token is a candidate, the gather.
    sh.cnt[tid] = 0;
    if (tid == 0) sh.ncand = 0;
    __syncthreads();
    int nan_i = SAMPLE_NONE;
    u32 omax = 0;  // total-order bits of the largest logit
    smp_pass(lg, n, [&](int i, float v) {
        const bool nan = i < n && v != v;
        const bool ok = i < n && !nan;
        const u64 k = ok ? smp_key(v, i) : 0ull;
        const u32 o = (u32)(k >> 32);
        if (nan && nan_i == SAMPLE_NONE) nan_i = i;
        omax = o > omax ? o : omax;
        if (select) smp_hist(ok, o >> (32 - SAMPLE_RADIX), 0, false, sh);
        else smp_append(ok, k, sh.cand, &sh.ncand, SAMPLE_CAP);
    });
    omax = __reduce_max_sync(0xffffffffu, omax);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const int no = __shfl_xor_sync(0xffffffffu, nan_i, o);
        nan_i = no < nan_i ? no : nan_i;
    }
    if (lane == 0) {
        sh.uscr[warp] = omax;
        sh.nscr[warp] = nan_i;
    }
    __syncthreads();
    omax = 0;
    nan_i = SAMPLE_NONE;
    for (int w = 0; w < SAMPLE_WARPS; w++) {
        omax = (u32)sh.uscr[w] > omax ? (u32)sh.uscr[w] : omax;
        nan_i = sh.nscr[w] < nan_i ? sh.nscr[w] : nan_i;
    }
    __syncthreads();
    if (nan_i != SAMPLE_NONE) {
        if (tid == 0) {
            a.state[SST_KEY] = 0;
            a.state[SST_STATUS] = 1 + (u64)nan_i;
            a.state[SST_INFO] = 0;
        }
        return;
    }

    // 2. The draw: xoshiro256** (the CPU's Xoshiro256::next_f64), once per sampled token.
    if (tid == 0) {
        u64 s0 = a.state[0], s1 = a.state[1], s2 = a.state[2], s3 = a.state[3];
        const u64 x = s1 * 5ull;
        const u64 res = ((x << 7) | (x >> 57)) * 9ull;
        const u64 t = s1 << 17;
        s2 ^= s0;
        s3 ^= s1;
        s1 ^= s2;
        s0 ^= s3;
        s2 ^= t;
        s3 = (s3 << 45) | (s3 >> 19);
        a.state[0] = s0;
        a.state[1] = s1;
        a.state[2] = s2;
        a.state[3] = s3;
        sh.u = (double)(res >> 11) * 0x1p-53;
    }

    SampleSoftmax sm;
    sm.lmax = smp_value((u64)omax << 32);
    sm.t = (double)a.temperature;
    sm.smax = (double)sm.lmax / sm.t;
    sm.inv_t = 1.0f / a.temperature;
    sm.qscale = 0.0;

    // 3. Top-k and the candidates (radix selects on counts: exact).
    const u64 all_hi = ~0ull;
    u64 t_c = 0, t_s = 0;
    if (kk < n)
        t_c = smp_select(lg, n, lists, ecache, 0, all_hi, (u64)kk, 0.0,
                         SEL_HIST_READY | (m == kk ? SEL_GATHER : 0), sh).prefix;
    if (m < kk)
        t_s = smp_select(lg, n, lists, ecache, 0, all_hi, (u64)m, 0.0,
                         SEL_GATHER | (kk == n ? SEL_HIST_READY : 0), sh).prefix;
    else
        t_s = t_c;
    __syncthreads();
    const int mc = (int)sh.ncand < SAMPLE_CAP ? (int)sh.ncand : SAMPLE_CAP;  // == m
    if (mc == 0) {  // cannot happen (the largest key is always gathered); never draw garbage
        if (tid == 0) a.state[SST_STATUS] = ~0ull;
        return;
    }
    // Bitonic sort, descending, of the first p2 >= mc slots (one key per thread; the rest are
    // zeros, below every key): partners within a warp by shuffle, across warps through shared
    // memory. Position tid ends with the tid-th largest key.
    int p2 = 1;
    while (p2 < mc) p2 <<= 1;
    u64 x = tid < mc ? sh.cand[tid] : 0ull;
    for (int k = 2; k <= p2; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            u64 y;
            if (j >= 32) {
                __syncthreads();
                sh.cand[tid] = x;
                __syncthreads();
                y = sh.cand[tid ^ j];
            } else {
                y = __shfl_xor_sync(0xffffffffu, x, j);
            }
            // In a descending run the lower position keeps the larger key.
            const bool keep_max = ((tid & k) == 0) == ((tid & j) == 0);
            x = keep_max ? (x > y ? x : y) : (x < y ? x : y);
        }
    }
    __syncthreads();
    sh.cand[tid] = x;  // (tid < mc: the sorted candidates)
    __syncthreads();

    // 4. Softmax: z over C; p and cumulative p for candidate tid. When C is larger than the
    //    candidates, one pass over C also keeps each e (for the tail's fixed-point masses) and
    //    sums the tail's e (ztail).
    const double e = tid < mc ? smp_e(sm, smp_value(x)) : 0.0;
    double z, ztail = 0.0;
    if (kk <= SAMPLE_CAP) {
        smp_scan_f64(e, sh, &z);  // C is the candidates
    } else {
        double part = 0.0, tpart = 0.0;
        smp_pass(lg, n, [&](int i, float v) {
            if (i >= n) return;
            const u64 k = smp_key(v, i);
            if (k < t_c) return;
            const double ei = smp_e(sm, v);
            ecache[i] = ei;
            part = part + ei;
            if (k < t_s) tpart = tpart + ei;
        });
        smp_scan_f64(part, sh, &z);
        smp_scan_f64(tpart, sh, &ztail);
    }
    const double p = e / z;
    double tot;
    const double c = smp_scan_f64(p, sh, &tot) + p;  // cumulative p through candidate tid

    // 5. Top-p among the candidates: the first with cumulative p >= top_p.
    const bool has_p = a.top_p < 1.0f;
    const double tp = (double)a.top_p;
    if (tid == 0) {
        sh.first = SAMPLE_NONE;
        sh.pick = SAMPLE_NONE;
    }
    __syncthreads();
    if (has_p && tid < mc && c >= tp) atomicMin(&sh.first, tid);
    __syncthreads();
    const int first = sh.first;
    int mk = mc;                  // kept candidates
    bool tail = kk > SAMPLE_CAP;  // whether the kept set goes on past the candidates
    if (first != SAMPLE_NONE) {
        mk = first + 1;
        tail = false;
    }  // else with kk <= SAMPLE_CAP all of C is kept, as the CPU keeps all when top_p is never reached
    if (tid == mk - 1) sh.cut = c;
    __syncthreads();
    const double cut = sh.cut;  // cumulative p through the last kept candidate

    // 6. Past the candidates (keys in [t_c, t_s)): the kept part [lo, t_s), its fixed-point
    //    mass qk (top-p only) and size nk, and the total kept probability.
    sm.qscale = 0x1p62 / z;
    u64 lo = t_c, qk = 0, nk = 0;
    double total = cut;
    if (tail && has_p) {
        const double r = (tp - cut) * 0x1p62;
        const u64 goal = r >= 1.0 ? (u64)ceil(r) : 1ull;
        const SampleSel s =
            smp_select(lg, n, lists, ecache, t_c, t_s, goal, sm.qscale, SEL_WEIGHTED, sh);
        if (s.found) {
            lo = s.prefix > t_c ? s.prefix : t_c;
            qk = s.before + s.q;
            nk = s.before_n + 1;
        } else {  // top_p is never reached: all of C is kept
            qk = s.total;
            nk = s.total_n;
        }
        total = cut + (double)qk * 0x1p-62;
    } else if (tail) {
        nk = (u64)(kk - mc);
        total = cut + ztail / z;
    }

    // 7. The draw: the first kept token whose cumulative p exceeds u * total.
    const double target = sh.u * total;
    if (tid < mk && c > target) atomicMin(&sh.pick, tid);
    __syncthreads();
    const int pick = sh.pick;
    u64 key = sh.cand[mk - 1];  // rounding left the target at the top: the last kept token
    u32 rank = (u32)(mk - 1);
    const u32 kept = (u32)(mk + nk);
    if (pick != SAMPLE_NONE) {
        key = sh.cand[pick];
        rank = (u32)pick;
    } else if (tail) {
        const double rest = (target - cut) * 0x1p62;
        u64 goal = 1;
        if (rest >= 1.0) goal = rest < 0x1p63 ? (u64)rest + 1 : (1ull << 63);
        // Past the total (rounding), the clamp takes the last kept token with mass.
        const SampleSel s = smp_select(lg, n, lists, ecache, lo, t_s, goal, sm.qscale,
                                       SEL_WEIGHTED | SEL_CLAMP, sh);
        if (s.found) {
            key = smp_find(lg, n, s.src, s.src_len, lo, t_s, s.prefix, s.shift, sh);
            rank = (u32)(mc + s.before_n);
        }
    }

    if (tid == 0) {
        const u64 out = argmax_key(smp_value(key), smp_id(key));
        a.out[0] = out;
        a.state[SST_KEY] = out;
        a.state[SST_STATUS] = 0;
        a.state[SST_INFO] = ((u64)kept << 32) | rank;
        a.state[SST_DRAWS] += 1;
    }
}
