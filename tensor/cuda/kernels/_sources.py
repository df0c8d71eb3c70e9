"""CUDA C sources of the fused kernels (compiled by CuPy's RawModule through NVRTC).

Each source is a full translation unit with templated kernels, instantiated for float and
double through name_expressions: a float32 tensor computes and accumulates in float, a float64
one in double (T is both the storage and the compute type). Nothing here needs a device, so
tests/tensor/test_fused_kernels.py compiles every source offline for compute_90.

Launch shapes (see the Python side): elementwise kernels use grid-stride loops; row kernels
(layer norm, softmax / cross-entropy) run one block per row with a block reduction; the
multi-tensor optimizer kernels walk a device table of pointers (see Note [Multi-tensor table]
in optim.py; their source is _sources_optim.py).
"""

# Block reductions shared by the row kernels. blockDim.x must be a multiple of 32 (<= 1024).
COMMON = r"""
#define ZG_FULL_MASK 0xffffffffu
// NVRTC has no <math.h> macros: -inf and a quiet NaN from their bit patterns
#define ZG_NEG_INF __longlong_as_double(0xfff0000000000000ULL)
#define ZG_NAN __longlong_as_double(0x7ff8000000000000ULL)

template <typename A>
__device__ __forceinline__ A zg_warp_sum(A v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(ZG_FULL_MASK, v, o);
    return v;
}

template <typename A>
__device__ __forceinline__ A zg_warp_max(A v) {
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_down_sync(ZG_FULL_MASK, v, o));
    return v;
}

// Sum (or max) of v over the block, returned to every thread. shm holds >= 32 elements; the
// leading __syncthreads makes back-to-back calls on the same shm safe.
template <typename A>
__device__ A zg_block_sum(A v, A* shm) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = zg_warp_sum(v);
    __syncthreads();
    if (lane == 0) shm[wid] = v;
    __syncthreads();
    if (wid == 0) {
        v = (lane < nw) ? shm[lane] : A(0);
        v = zg_warp_sum(v);
        if (lane == 0) shm[0] = v;
    }
    __syncthreads();
    return shm[0];
}

template <typename A>
__device__ A zg_block_max(A v, A* shm) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = zg_warp_max(v);
    __syncthreads();
    if (lane == 0) shm[wid] = v;
    __syncthreads();
    if (wid == 0) {
        v = (lane < nw) ? shm[lane] : A(ZG_NEG_INF);
        v = zg_warp_max(v);
        if (lane == 0) shm[0] = v;
    }
    __syncthreads();
    return shm[0];
}
"""

GELU = r"""
// approx == 0: x * Phi(x) with erf; approx == 1: PyTorch's tanh approximation
template <typename T>
__global__ void gelu_fwd(const T* __restrict__ x, T* __restrict__ y, long long n, int approx) {
    const T k = T(0.7978845608028654), c = T(0.044715), r2 = T(0.7071067811865476);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const T v = x[i];
        y[i] = approx ? T(0.5) * v * (T(1) + tanh(k * (v + c * v * v * v)))
                      : T(0.5) * v * (T(1) + erf(v * r2));
    }
}

template <typename T>
__global__ void gelu_bwd(const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ gx,
                         long long n, int approx) {
    const T k = T(0.7978845608028654), c = T(0.044715), r2 = T(0.7071067811865476);
    const T inv_sqrt_2pi = T(0.3989422804014327);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const T v = x[i];
        T d;
        if (approx) {
            const T t = tanh(k * (v + c * v * v * v));
            d = T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t * t) * k * (T(1) + T(3) * c * v * v);
        } else {
            d = T(0.5) * (T(1) + erf(v * r2)) + v * exp(T(-0.5) * v * v) * inv_sqrt_2pi;
        }
        gx[i] = gy[i] * d;
    }
}
"""

LAYER_NORM = COMMON + r"""
// One block per row of n elements. Saves mean and rstd = 1/sqrt(var + eps) per row.
template <typename T>
__global__ void ln_fwd(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                       T* __restrict__ y, T* __restrict__ mean, T* __restrict__ rstd,
                       int n, T eps, int has_w, int has_b) {
    __shared__ T shm[32];
    const long long row = blockIdx.x;
    const T* xr = x + row * n;
    T* yr = y + row * n;
    T s = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s += xr[j];
    const T mu = zg_block_sum(s, shm) / T(n);
    T q = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) { const T d = xr[j] - mu; q += d * d; }
    const T rs = T(1) / sqrt(zg_block_sum(q, shm) / T(n) + eps);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        T v = (xr[j] - mu) * rs;
        if (has_w) v *= w[j];
        if (has_b) v += b[j];
        yr[j] = v;
    }
    if (threadIdx.x == 0) { mean[row] = mu; rstd[row] = rs; }
}

// gx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)),  gh = gy * w. One block per row.
template <typename T>
__global__ void ln_bwd_dx(const T* __restrict__ x, const T* __restrict__ w,
                          const T* __restrict__ gy, const T* __restrict__ mean,
                          const T* __restrict__ rstd, T* __restrict__ gx, int n, int has_w) {
    __shared__ T shm[32];
    const long long row = blockIdx.x;
    const T* xr = x + row * n;
    const T* gr = gy + row * n;
    const T mu = mean[row], rs = rstd[row];
    T a = 0, c = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const T gh = has_w ? gr[j] * w[j] : gr[j];
        a += gh;
        c += gh * (xr[j] - mu) * rs;
    }
    a = zg_block_sum(a, shm) / T(n);
    c = zg_block_sum(c, shm) / T(n);
    T* out = gx + row * n;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const T gh = has_w ? gr[j] * w[j] : gr[j];
        out[j] = rs * (gh - a - (xr[j] - mu) * rs * c);
    }
}

// Column sums gw[j] = sum_r gy[r, j] * xhat[r, j] and gb[j] = sum_r gy[r, j], first as
// partials: block (32, 8), grid (ceil(n / 32), R); block (bx, by) sums rows by, by + R*8, ...
// of its 32 columns into pw[by, :], pb[by, :]. With R == 1, pw / pb are the outputs.
template <typename T>
__global__ void ln_bwd_dwdb_partial(const T* __restrict__ x, const T* __restrict__ gy,
                                    const T* __restrict__ mean, const T* __restrict__ rstd,
                                    T* __restrict__ pw, T* __restrict__ pb,
                                    long long rows, int n) {
    __shared__ T sw[8][33];
    __shared__ T sb[8][33];
    const int col = blockIdx.x * 32 + threadIdx.x;
    T aw = 0, ab = 0;
    if (col < n) {
        for (long long r = (long long)blockIdx.y * 8 + threadIdx.y; r < rows;
             r += (long long)gridDim.y * 8) {
            const T g = gy[r * n + col];
            aw += g * (x[r * n + col] - mean[r]) * rstd[r];
            ab += g;
        }
    }
    sw[threadIdx.y][threadIdx.x] = aw;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && col < n) {
        for (int k = 1; k < 8; ++k) { aw += sw[k][threadIdx.x]; ab += sb[k][threadIdx.x]; }
        pw[(long long)blockIdx.y * n + col] = aw;
        pb[(long long)blockIdx.y * n + col] = ab;
    }
}

// Second stage: gw[j] = sum over the R partial rows (one thread per column).
template <typename T>
__global__ void ln_bwd_dwdb_final(const T* __restrict__ pw, const T* __restrict__ pb,
                                  T* __restrict__ gw, T* __restrict__ gb, int R, int n) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= n) return;
    T aw = 0, ab = 0;
    for (int r = 0; r < R; ++r) { aw += pw[(long long)r * n + col]; ab += pb[(long long)r * n + col]; }
    gw[col] = aw;
    gb[col] = ab;
}
"""

SOFTMAX_XENT = COMMON + r"""
// Cross-entropy of logits x (N, C) against class indices t (N,), one block per row:
//   loss[i] = valid * ((1 - ls) * w[t] * (lse - x[t]) + ls / C * sum_c w[c] * (lse - x[c]))
//   wt[i]   = valid * w[t]     (the 'mean' denominator is sum_i wt[i], as PyTorch)
// A target outside [0, C) that is not ignore_index gives NaN (loss and gradient) and sets
// bad[i] (for a deferred device assert) instead of a host-side check, which would synchronise.
template <typename T>
__global__ void xent_fwd(const T* __restrict__ x, const long long* __restrict__ t,
                         const T* __restrict__ w, T* __restrict__ loss, T* __restrict__ wt,
                         T* __restrict__ lse_out, bool* __restrict__ bad, int C,
                         long long ignore_index, T ls, int has_w) {
    __shared__ T shm[32];
    const long long row = blockIdx.x;
    const T* xr = x + row * C;
    T m = T(ZG_NEG_INF);
    for (int j = threadIdx.x; j < C; j += blockDim.x) m = fmax(m, xr[j]);
    m = zg_block_max(m, shm);
    T s = 0;
    for (int j = threadIdx.x; j < C; j += blockDim.x) s += exp(xr[j] - m);
    const T lse = m + log(zg_block_sum(s, shm));
    const long long tg = t[row];
    T smooth = 0;
    if (ls != T(0)) {
        T a = 0;
        for (int j = threadIdx.x; j < C; j += blockDim.x)
            a += (has_w ? w[j] : T(1)) * (lse - xr[j]);
        smooth = zg_block_sum(a, shm);
    }
    if (threadIdx.x == 0) {
        T l = 0, wv = 0;
        if (tg != ignore_index) {
            if (tg < 0 || tg >= C) {
                l = wv = T(ZG_NAN);
            } else {
                wv = has_w ? w[tg] : T(1);
                l = (T(1) - ls) * wv * (lse - xr[tg]) + ls / T(C) * smooth;
            }
        }
        loss[row] = l;
        wt[row] = wv;
        lse_out[row] = lse;
        bad[row] = tg != ignore_index && (tg < 0 || tg >= C);
    }
}

// One block: out[0] = sum(loss) (mode 1) or sum(loss) / sum(wt) (mode 2); den[0] = the
// divisor used (1 for 'sum'), read by the backward on the device.
template <typename T>
__global__ void xent_reduce(const T* __restrict__ loss, const T* __restrict__ wt,
                            T* __restrict__ out, T* __restrict__ den, long long N, int mode) {
    __shared__ T shm[32];
    T a = 0, b = 0;
    for (long long i = threadIdx.x; i < N; i += blockDim.x) { a += loss[i]; b += wt[i]; }
    a = zg_block_sum(a, shm);
    b = zg_block_sum(b, shm);
    if (threadIdx.x == 0) {
        out[0] = mode == 2 ? a / b : a;
        den[0] = mode == 2 ? b : T(1);
    }
}

// gx[i, c] = g_i * valid * ((1 - ls) * w[t] * (p_c - [c == t]) + ls / C * (W * p_c - w[c]))
// with p = softmax(x[i]), W = sum_c w[c], g_i = gy[i] (mode 0) or gy[0] / den[0].
template <typename T>
__global__ void xent_bwd(const T* __restrict__ x, const long long* __restrict__ t,
                         const T* __restrict__ w, const T* __restrict__ lse,
                         const T* __restrict__ gy, const T* __restrict__ den,
                         T* __restrict__ gx, int C, long long ignore_index, T ls, int has_w,
                         int mode) {
    __shared__ T shm[32];
    const long long row = blockIdx.x;
    const T* xr = x + row * C;
    T* out = gx + row * C;
    const long long tg = t[row];
    if (tg == ignore_index) {  // uniform across the block: no reduction is skipped by half of it
        for (int j = threadIdx.x; j < C; j += blockDim.x) out[j] = T(0);
        return;
    }
    const bool bad = tg < 0 || tg >= C;
    const T g = mode == 0 ? gy[row] : gy[0] / den[0];
    T W = T(C);
    if (has_w && ls != T(0)) {
        T a = 0;
        for (int j = threadIdx.x; j < C; j += blockDim.x) a += w[j];
        W = zg_block_sum(a, shm);
    }
    const T wtg = bad ? T(ZG_NAN) : (has_w ? w[tg] : T(1));
    const T l = lse[row], hard = (T(1) - ls) * wtg, soft = ls / T(C);
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        const T p = exp(xr[j] - l);
        const T d = hard * (p - (j == tg ? T(1) : T(0))) + soft * (W * p - (has_w ? w[j] : T(1)));
        out[j] = g * d;
    }
}
"""

SOFTMAX = r"""
// softmax (mode 0), log_softmax (1) or "safe" softmax (2: a row of -inf gives zeros, as the
// attention op's) over rows of C contiguous elements, one block per row.
template <typename T>
__global__ void softmax_fwd(const T* __restrict__ x, T* __restrict__ y, int C, int mode) {
    __shared__ T shm[32];
    const long long row = blockIdx.x;
    const T* xr = x + row * C;
    T* yr = y + row * C;
    T m = T(ZG_NEG_INF);
    for (int j = threadIdx.x; j < C; j += blockDim.x) m = fmax(m, xr[j]);
    m = zg_block_max(m, shm);
    if (mode == 2 && !isfinite(m)) m = T(0);
    T s = 0;
    for (int j = threadIdx.x; j < C; j += blockDim.x) s += exp(xr[j] - m);
    s = zg_block_sum(s, shm);
    if (mode == 1) {
        const T lse = log(s);
        for (int j = threadIdx.x; j < C; j += blockDim.x) yr[j] = xr[j] - m - lse;
    } else {
        const T inv = T(1) / ((mode == 2 && s == T(0)) ? T(1) : s);
        for (int j = threadIdx.x; j < C; j += blockDim.x) yr[j] = exp(xr[j] - m) * inv;
    }
}

// From the saved output y: log_softmax gx = gy - exp(y) * sum(gy); softmax
// gx = y * (gy - sum(gy * y)).
template <typename T>
__global__ void softmax_bwd(const T* __restrict__ y, const T* __restrict__ gy,
                            T* __restrict__ gx, int C, int mode) {
    __shared__ T shm[32];
    const long long row = blockIdx.x;
    const T* yr = y + row * C;
    const T* gr = gy + row * C;
    T* out = gx + row * C;
    T a = 0;
    for (int j = threadIdx.x; j < C; j += blockDim.x) a += mode == 1 ? gr[j] : gr[j] * yr[j];
    a = zg_block_sum(a, shm);
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        out[j] = mode == 1 ? gr[j] - exp(yr[j]) * a : yr[j] * (gr[j] - a);
}
"""

from ._sources_optim import OPTIM  # noqa: E402

# name -> (source, kernel template names); each template is instantiated for float and double
MODULES = {
    "gelu": (GELU, ("gelu_fwd", "gelu_bwd")),
    "layer_norm": (LAYER_NORM, ("ln_fwd", "ln_bwd_dx", "ln_bwd_dwdb_partial",
                                "ln_bwd_dwdb_final")),
    "softmax_xent": (SOFTMAX_XENT + SOFTMAX, ("xent_fwd", "xent_reduce", "xent_bwd",
                                               "softmax_fwd", "softmax_bwd")),
    "optim": (OPTIM, ("adam_mt", "sgd_mt")),
}
# non-template kernels, compiled by their plain name
PLAIN = {"optim": ("zg_inc_steps",)}


def name_expressions(module: str) -> list:
    """Every kernel name of `module` as RawModule's name_expressions want them."""
    _, templates = MODULES[module]
    names = [f"{k}<{t}>" for k in templates for t in ("float", "double")]
    return names + list(PLAIN.get(module, ()))
