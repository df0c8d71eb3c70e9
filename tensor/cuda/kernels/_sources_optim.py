"""CUDA C source of the multi-tensor optimizer kernels (see Note [Multi-tensor table] in
optim.py); compiled like the op kernels of _sources.py, which lists it in MODULES."""

# Note [Multi-tensor table] (optim.py) describes `tab`: offs = tab[0 : n+1] (cumulative element
# counts), then n rows of `ncol` int64 (pointers, flags).
OPTIM = r"""
// Which tensor holds flat element e: the first time a binary search, then (a grid-stride loop
// only moves forward) a linear walk.
__device__ __forceinline__ int zg_find(const long long* offs, int ntens, long long e, int k) {
    if (k < 0) {
        int lo = 0, hi = ntens - 1;
        while (lo < hi) { const int mid = (lo + hi + 1) >> 1; if (offs[mid] <= e) lo = mid; else hi = mid - 1; }
        return lo;
    }
    while (e >= offs[k + 1]) ++k;
    return k;
}

template <typename T>
__device__ __forceinline__ T zg_lr(const void* dev, int kind, double host) {
    return kind == 1 ? T(*(const float*)dev) : kind == 2 ? T(*(const double*)dev) : T(host);
}

// steps += 1 for every tensor's 'step' (a float32 0-d device tensor, column `col`)
__global__ void zg_inc_steps(const long long* __restrict__ tab, int ntens, int ncol, int col) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k < ntens) {
        float* s = (float*)tab[ntens + 1 + (long long)k * ncol + col];
        *s += 1.0f;
    }
}

// Adam / AdamW over every tensor of the table: rows [param, grad, exp_avg, exp_avg_sq,
// max_exp_avg_sq, step]. The bias corrections come from the device step (dev_step, the
// capturable / fused case) or from the host (bc1 = 1 - beta1^t, bc2s = sqrt(1 - beta2^t)).
// lr is lr_host, or read from a 1-element device Tensor: float (lr_kind 1) or double (2).
template <typename T>
__global__ void adam_mt(const long long* __restrict__ tab, int ntens, long long total,
                        const void* __restrict__ lr_dev, int lr_kind, double lr_host,
                        double beta1, double beta2, double eps, double wd,
                        int amsgrad, int maximize, int decoupled,
                        int dev_step, double bc1_host, double bc2s_host) {
    const long long* offs = tab;
    const T b1 = T(beta1), b2 = T(beta2), ep = T(eps), wdt = T(wd);
    const T lr = zg_lr<T>(lr_dev, lr_kind, lr_host);
    int k = -1, cur = -1;
    T *p = 0, *m = 0, *v = 0, *vm = 0;
    const T* g = 0;
    T bc1 = T(bc1_host), bc2s = T(bc2s_host);
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        k = zg_find(offs, ntens, e, k);
        if (k != cur) {
            const long long* row = tab + ntens + 1 + (long long)k * 6;
            p = (T*)row[0]; g = (const T*)row[1]; m = (T*)row[2]; v = (T*)row[3]; vm = (T*)row[4];
            if (dev_step) {
                const T st = T(*(const float*)row[5]);
                bc1 = T(1) - pow(b1, st);
                bc2s = sqrt(T(1) - pow(b2, st));
            }
            cur = k;
        }
        const long long i = e - offs[k];
        T pv = p[i], gv = g[i];
        if (maximize) gv = -gv;
        if (decoupled) pv *= T(1) - lr * wdt;
        else if (wdt != T(0)) gv += wdt * pv;
        const T mv = b1 * m[i] + (T(1) - b1) * gv;
        T vv = b2 * v[i] + (T(1) - b2) * (gv * gv);
        m[i] = mv;
        v[i] = vv;
        if (amsgrad) { vv = fmax(vm[i], vv); vm[i] = vv; }
        const T denom = sqrt(vv) / bc2s + ep;
        p[i] = pv - (lr / bc1) * (mv / denom);
    }
}

// SGD over every tensor of the table: rows [param, grad, momentum_buffer, first]. first != 0:
// the buffer is new and takes the gradient (PyTorch's first momentum step).
template <typename T>
__global__ void sgd_mt(const long long* __restrict__ tab, int ntens, long long total,
                       const void* __restrict__ lr_dev, int lr_kind, double lr_host,
                       double momentum, double dampening, double wd, int nesterov, int maximize) {
    const long long* offs = tab;
    const T mom = T(momentum), damp = T(dampening), wdt = T(wd);
    const T lr = zg_lr<T>(lr_dev, lr_kind, lr_host);
    int k = -1, cur = -1, first = 0;
    T *p = 0, *b = 0;
    const T* g = 0;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        k = zg_find(offs, ntens, e, k);
        if (k != cur) {
            const long long* row = tab + ntens + 1 + (long long)k * 4;
            p = (T*)row[0]; g = (const T*)row[1]; b = (T*)row[2]; first = (int)row[3];
            cur = k;
        }
        const long long i = e - offs[k];
        const T pv = p[i];
        T gv = g[i];
        if (maximize) gv = -gv;
        if (wdt != T(0)) gv += wdt * pv;
        if (mom != T(0)) {
            const T bv = first ? gv : mom * b[i] + (T(1) - damp) * gv;
            b[i] = bv;
            gv = nesterov ? gv + mom * bv : bv;
        }
        p[i] = pv - lr * gv;
    }
}
"""
