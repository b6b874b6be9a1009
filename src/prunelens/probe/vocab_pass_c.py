"""The vocabulary pass as a small C function: two loops per row for all temperatures, built with
the system C compiler in about a second and kept in ``$PRUNELENS_HOME/kernels``.

Same sums, same order and same ``hb`` series as ``kernel.chunk_sums`` (float32 inputs, CPU):
one row at a time (a row of ``z`` and ``z'`` is cache-sized), pass A for ``Σe, Σe², ΣeΔz`` per
temperature and the once-per-row sums, pass B for everything that needs ``μ = E_p[Δz]``.
Terms are summed in float32 over blocks of ``BLOCK`` elements and the block sums in float64.
``exp`` is Cephes' range reduction and degree-6 polynomial (≈ 1 ulp), inf above 88.72 and 0 below
-87.3 (where the eager pass flushes subnormals to 0 anyway); NaN stays NaN. Rows are split over
``torch.get_num_threads()`` POSIX threads; a row's sums never depend on the thread count.

Only code built here from ``SOURCE`` is loaded, from ``$PRUNELENS_HOME/kernels`` (the path keys
the source, flags, compiler and CPU capability): ``kernel_cache`` checks the file's owner, modes and
the sha256 recorded at build time before it is opened, and rebuilds anything else (a planted or
corrupt library). ``$CC`` is used as given: a missing or failing one is named, never replaced by ``cc``.
``kernel.SumsKernel`` self-tests the library against the eager sums before use and falls back to eager
if it disagrees or cannot be built.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import torch

from prunelens.probe import kernel_cache

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define FTZ_ON() unsigned int csr_ = _mm_getcsr(); _mm_setcsr(csr_ | 0x8040)  /* flush + treat subnormals as 0 */
#define FTZ_OFF() _mm_setcsr(csr_)
#else
#define FTZ_ON()
#define FTZ_OFF()
#endif

#define BLOCK 1024                                       /* float32 partial sums per block, block sums in float64 */
#define NPER 10
#define NONCE 7

typedef float vf __attribute__((vector_size(32)));       /* 8 lanes: AVX2 registers, or pairs of SSE ones */
typedef int32_t vi __attribute__((vector_size(32)));

static const float INV_FACT[10] = {1.0f / 2, 1.0f / 6, 1.0f / 24, 1.0f / 120, 1.0f / 720, 1.0f / 5040,
                                   1.0f / 40320, 1.0f / 362880, 1.0f / 3628800, 1.0f / 39916800};

static inline vf sel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
static inline vf ld(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vf ld_tail(const float *p, int64_t n) {   /* lanes >= n are 0 */
    float buf[8] = {0};
    memcpy(buf, p, (size_t)n * sizeof(float));
    return ld(buf);
}
static inline vi tail_mask(int64_t n) {
    vi m;
    for (int i = 0; i < 8; i++) m[i] = i < n ? -1 : 0;
    return m;
}
static inline vf vabs(vf x) { return (vf)((vi)x & 0x7fffffff); }
static inline double hsum(vf v) { double s = 0; for (int i = 0; i < 8; i++) s += v[i]; return s; }
static inline float hmax(vf v) { float m = v[0]; for (int i = 1; i < 8; i++) m = v[i] > m ? v[i] : m; return m; }

static inline vf exp_v(vf x) {                           /* Cephes expf: inf above 88.72, 0 below -87.3, NaN kept */
    vf xc = sel(x > 88.72283f, x * 0.0f + 88.72283f, x);
    xc = sel(xc < -87.3f, xc * 0.0f - 87.3f, xc);
    vf n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  /* round to nearest */
    n = sel(n == n, n, (vf){0});                          /* NaN: any finite exponent (r stays NaN) */
    vf r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    vf p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi bits = (__builtin_convertvector(n, vi) + 126) << 23;  /* 2^(n-1): n = 128 stays representable */
    vf y = p * (vf)bits * 2.0f;
    y = sel(x > 88.72283f, (vf){0} + INFINITY, y);
    return sel(x < -87.3f, (vf){0}, y);
}

static inline vf hb_v(vf b) {                            /* expm1(b) - b: series below |b| = 1/2 */
    vf acc = b * 0.0f + INV_FACT[9];
    for (int k = 8; k >= 0; k--) acc = acc * b + INV_FACT[k];
    vf series = acc * b * b;
    vf direct = exp_v(b) - 1.0f - b;
    return sel(vabs(b) < 0.5f, series, direct);
}

typedef struct { vf zdz, dz, dd, l1, m; } once_a;
static inline void pass_a(vf z, vf z2, vi mask, once_a *a) {
    vf d = z2 - z;                                       /* 0 in padded lanes */
    a->zdz += z * d; a->dz += d; a->dd += d * d; a->l1 += vabs(d);
    a->m = sel(mask & (z2 > a->m), z2, a->m);
}
static inline void pass_a_t(vf z, vf z2, vi mask, float zmax, float it, vf *s, vf *sw, vf *sed) {
    vf e = sel(mask, exp_v((z - zmax) * it), (vf){0});
    *s += e; *sw += e * e; *sed += e * (z2 - z);
}
typedef struct { vf eb, eh, ebb, wb, wbb, wg, wgg, m, perp, uvar; } sums_b;
static inline void pass_b(vf z, vf z2, vi mask, float zmax, float it, float mu, float coef, float mean, int once,
                          sums_b *c) {
    vf e = sel(mask, exp_v((z - zmax) * it), (vf){0});
    vf d = z2 - z;
    vf b = (d - mu) * it;
    vf h = hb_v(b);
    vf g = b + h, w = e * e, eb = e * b, wb = w * b, wg = w * g;
    c->eb += eb; c->eh += e * h; c->ebb += eb * b; c->wb += wb; c->wbb += wb * b; c->wg += wg; c->wgg += wg * g;
    c->m = sel(mask & (b > c->m), b, c->m);
    if (once) {
        vf pp = d - coef * z, dc = sel(mask, d - mean, (vf){0});
        c->perp += pp * pp; c->uvar += dc * dc;
    }
}

static void row_sums(const float *z, const float *z2, float zmax, float zz, const float *inv_t, int64_t nt,
                     int64_t v, double *acc /* [NPER * nt] */, double *once /* [NONCE] */) {
    double *s = acc, *sw = acc + nt, *sed = acc + 2 * nt;  /* ΣeΔz sits in Σeb's place until μ is taken */
    for (int64_t k = 0; k < NPER * nt; k++) acc[k] = 0.0;
    const vi all = (vi){0} - 1;
    const vf ninf = (vf){0} - INFINITY;
    double zdz = 0, dzsum = 0, dd = 0, l1 = 0;
    float best = -INFINITY;
    int64_t besti = 0;
    for (int64_t lo = 0; lo < v; lo += BLOCK) {          /* pass A */
        int64_t hi = lo + BLOCK < v ? lo + BLOCK : v, full = lo + (hi - lo) / 8 * 8;
        once_a a = {{0}, {0}, {0}, {0}, ninf};
        for (int64_t j = lo; j < full; j += 8) pass_a(ld(z + j), ld(z2 + j), all, &a);
        if (full < hi) pass_a(ld_tail(z + full, hi - full), ld_tail(z2 + full, hi - full), tail_mask(hi - full), &a);
        zdz += hsum(a.zdz); dzsum += hsum(a.dz); dd += hsum(a.dd); l1 += hsum(a.l1);
        float m = hmax(a.m);
        if (m > best) {                                  /* first index of the block's max: argmax's rule */
            for (int64_t j = lo; j < hi; j++)
                if (z2[j] == m) { besti = j; break; }
            best = m;
        }
        for (int64_t k = 0; k < nt; k++) {
            vf b0 = {0}, b1 = {0}, b2 = {0};
            for (int64_t j = lo; j < full; j += 8) pass_a_t(ld(z + j), ld(z2 + j), all, zmax, inv_t[k], &b0, &b1, &b2);
            if (full < hi)
                pass_a_t(ld_tail(z + full, hi - full), ld_tail(z2 + full, hi - full), tail_mask(hi - full), zmax,
                         inv_t[k], &b0, &b1, &b2);
            s[k] += hsum(b0); sw[k] += hsum(b1); sed[k] += hsum(b2);
        }
    }
    if (dzsum != dzsum) {                                /* a NaN: argmax returns the first NaN */
        for (int64_t j = 0; j < v; j++)
            if (z2[j] != z2[j]) { besti = j; break; }
    }
    float coef = zz > 0 ? (float)(zdz / zz) : 0.0f;
    float mean = (float)(dzsum / (double)v);
    double perp = 0, uvar = 0;
    for (int64_t k = 0; k < nt; k++) {
        double *o = acc + 2 * nt;                        /* eb eh ebb wb wbb wg wgg bmax, each [nt] */
        float it = inv_t[k], mu = (float)(sed[k] / s[k]), bmax = -INFINITY;
        o[k] = 0.0;
        for (int64_t lo = 0; lo < v; lo += BLOCK) {      /* pass B */
            int64_t hi = lo + BLOCK < v ? lo + BLOCK : v, full = lo + (hi - lo) / 8 * 8;
            sums_b c = {{0}, {0}, {0}, {0}, {0}, {0}, {0}, ninf, {0}, {0}};
            if (k == 0) {
                for (int64_t j = lo; j < full; j += 8)
                    pass_b(ld(z + j), ld(z2 + j), all, zmax, it, mu, coef, mean, 1, &c);
            } else {
                for (int64_t j = lo; j < full; j += 8)
                    pass_b(ld(z + j), ld(z2 + j), all, zmax, it, mu, coef, mean, 0, &c);
            }
            if (full < hi)
                pass_b(ld_tail(z + full, hi - full), ld_tail(z2 + full, hi - full), tail_mask(hi - full), zmax, it, mu,
                       coef, mean, k == 0, &c);
            o[0 * nt + k] += hsum(c.eb); o[1 * nt + k] += hsum(c.eh); o[2 * nt + k] += hsum(c.ebb);
            o[3 * nt + k] += hsum(c.wb); o[4 * nt + k] += hsum(c.wbb); o[5 * nt + k] += hsum(c.wg);
            o[6 * nt + k] += hsum(c.wgg);
            float m = hmax(c.m);
            bmax = m > bmax ? m : bmax;
            perp += hsum(c.perp); uvar += hsum(c.uvar);
        }
        o[7 * nt + k] = o[k] != o[k] ? NAN : bmax;       /* amax propagates NaN */
    }
    once[0] = zdz; once[1] = dzsum; once[2] = perp; once[3] = uvar; once[4] = l1; once[5] = dd;
    once[6] = (double)besti;
}

typedef int (*rows_fn)(const void *ctx, int64_t lo, int64_t hi);
typedef struct { rows_fn fn; const void *ctx; int64_t lo, hi; } job_t;

static void *run_job(void *arg) {
    job_t *j = (job_t *)arg;
    FTZ_ON();
    int rc = j->hi > j->lo ? j->fn(j->ctx, j->lo, j->hi) : 0;
    FTZ_OFF();
    return rc ? (void *)1 : NULL;
}

/* rows [0, rows) split into contiguous ranges over `threads` POSIX threads (the caller's is one of them) */
static int run_parallel(rows_fn fn, const void *ctx, int64_t rows, int64_t threads) {
    if (threads > rows) threads = rows;
    if (threads > 64) threads = 64;
    if (threads < 1) threads = 1;
    job_t jobs[64];
    pthread_t ids[64];
    int64_t step = (rows + threads - 1) / threads;
    for (int64_t t = 0; t < threads; t++) {
        int64_t lo = t * step < rows ? t * step : rows, hi = lo + step < rows ? lo + step : rows;
        jobs[t] = (job_t){fn, ctx, lo, hi};
    }
    int failed = 0;
    int64_t started = 0;
    for (int64_t t = 1; t < threads; t++, started++)
        if (pthread_create(&ids[t], NULL, run_job, &jobs[t]) != 0) break;
    failed |= run_job(&jobs[0]) != NULL;
    for (int64_t t = 1; t <= started; t++) {
        void *res = NULL;
        pthread_join(ids[t], &res);
        failed |= res != NULL;
    }
    for (int64_t t = started + 1; t < threads; t++) failed |= run_job(&jobs[t]) != NULL;
    return failed;
}

typedef struct {
    const float *z, *z2, *zmax, *zz, *inv_t;
    int64_t rows, v, nt;
    float *per, *once;
} sums_ctx;

static int sums_rows(const void *arg, int64_t lo, int64_t hi) {
    const sums_ctx *c = (const sums_ctx *)arg;
    double *acc = malloc(sizeof(double) * (NPER * c->nt + NONCE));
    if (!acc) return 1;
    for (int64_t r = lo; r < hi; r++) {
        row_sums(c->z + r * c->v, c->z2 + r * c->v, c->zmax[r], c->zz[r], c->inv_t, c->nt, c->v, acc,
                 acc + NPER * c->nt);
        for (int64_t f = 0; f < NPER * c->nt; f++) c->per[f * c->rows + r] = (float)acc[f];
        for (int64_t f = 0; f < NONCE; f++) c->once[f * c->rows + r] = (float)acc[NPER * c->nt + f];
    }
    free(acc);
    return 0;
}

/* per: [NPER, nt, rows], once: [NONCE, rows]; returns 0 on success */
int prunelens_sums(const float *z, const float *z2, const float *zmax, const float *zz, const float *inv_t,
                   int64_t rows, int64_t v, int64_t nt, float *per, float *once, int64_t threads) {
    sums_ctx c = {z, z2, zmax, zz, inv_t, rows, v, nt, per, once};
    return run_parallel(sums_rows, &c, rows, threads);
}

/* The dense side of a row: Σz² (float64 block sums) and its top-k (descending; equal values in index
   order, so topi[0] is argmax's first index). A row with a NaN gets zz = NaN (the caller redoes it). */
typedef struct {
    const float *z;
    int64_t v, k;
    float *zz, *topv;
    int64_t *topi;
} dense_ctx;

static int dense_rows(const void *arg, int64_t lo, int64_t hi) {
    const dense_ctx *c = (const dense_ctx *)arg;
    for (int64_t r = lo; r < hi; r++) {
        const float *z = c->z + r * c->v;
        float *tv = c->topv + r * c->k;
        int64_t *ti = c->topi + r * c->k;
        for (int64_t i = 0; i < c->k; i++) { tv[i] = -INFINITY; ti[i] = -1; }
        int64_t filled = 0;
        double zz = 0;
        for (int64_t b0 = 0; b0 < c->v; b0 += 64) {
            int64_t b1 = b0 + 64 < c->v ? b0 + 64 : c->v;
            float acc = 0, m = -INFINITY;
#pragma omp simd reduction(+ : acc) reduction(max : m)
            for (int64_t j = b0; j < b1; j++) {
                acc += z[j] * z[j];
                m = z[j] > m ? z[j] : m;
            }
            zz += acc;
            if (m > tv[c->k - 1] || filled < c->k) {
                for (int64_t j = b0; j < b1; j++) {
                    float x = z[j];
                    if (!(x > tv[c->k - 1]) && filled >= c->k) continue;
                    int64_t p = filled < c->k ? filled : c->k - 1;
                    while (p > 0 && x > tv[p - 1]) { tv[p] = tv[p - 1]; ti[p] = ti[p - 1]; p--; }
                    tv[p] = x; ti[p] = j;
                    if (filled < c->k) filled++;
                }
            }
        }
        c->zz[r] = zz != zz ? NAN : (float)zz;
    }
    return 0;
}

int prunelens_dense(const float *z, int64_t rows, int64_t v, int64_t k, float *zz, float *topv, int64_t *topi,
                    int64_t threads) {
    dense_ctx c = {z, v, k, zz, topv, topi};
    return run_parallel(dense_rows, &c, rows, threads);
}
"""

NPER, NONCE = 10, 7
_FLAGS = {"AVX512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw"],
          "AVX2": ["-mavx2", "-mfma"]}
_LIB: dict[str, ctypes.CDLL] = {}


def compiler() -> str | None:
    """The C compiler to build with: ``$CC`` as set (judged when building), else ``cc``/``gcc``/``clang`` on
    PATH; None if there is none."""
    cc = os.environ.get("CC", "").strip()
    if cc:
        return cc
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    return None


def _who(cc: str) -> str:
    from prunelens.safe_text import clean

    return clean(f"$CC={cc}" if os.environ.get("CC", "").strip() else f"the C compiler {cc}")


def _flags() -> list[str]:
    cap = torch.backends.cpu.get_cpu_capability()
    return ["-O3", "-std=gnu11", "-fPIC", "-shared", "-fopenmp-simd", "-fno-math-errno", *_FLAGS.get(cap, [])]


def library_path() -> Path | None:
    """Where the library for this source, compiler, flags and CPU capability is kept (None: no compiler)."""
    cc = compiler()
    if cc is None:
        return None
    key = "\n".join([SOURCE, cc, " ".join(_flags()), torch.backends.cpu.get_cpu_capability()])
    return kernel_cache.cache_dir() / f"sums-native-{hashlib.sha256(key.encode()).hexdigest()[:24]}.so"


_LIBRARY_MAGIC = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe")  # ELF, Mach-O


def _build(path: Path, cc: str) -> None:
    """Compile ``SOURCE`` with ``cc`` and keep it at ``path`` with its digest; one-line errors naming ``cc``."""
    from prunelens.safe_text import clean

    tag = f"{os.getpid()}.{time.monotonic_ns()}"
    src, tmp = path.with_name(f".{path.stem}.{tag}.c"), path.with_name(f".{path.stem}.{tag}.tmp.so")
    try:
        src.write_text(SOURCE)
        try:
            proc = subprocess.run([*shlex.split(cc), *_flags(), "-o", str(tmp), str(src), "-lm", "-lpthread"],
                                  capture_output=True, text=True, timeout=300)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"{_who(cc)} cannot be run: {clean(getattr(exc, 'strerror', None) or exc)}") from None
        if proc.returncode != 0:
            last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or [f"exit status {proc.returncode}"]
            raise RuntimeError(f"{_who(cc)} failed: {clean(last[0])[:300]}")
        if (tmp.read_bytes()[:4] if tmp.is_file() else b"") not in _LIBRARY_MAGIC:
            raise RuntimeError(f"{_who(cc)} exited 0 without writing a shared library")
        kernel_cache.keep(tmp, path)  # atomic: concurrent ranks never load a half-written library
    finally:
        src.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def load_library() -> tuple[ctypes.CDLL, float]:
    """The built library and the seconds spent building it (0 when kept from before).

    Nothing is opened before ``kernel_cache.trusted`` accepts it: a planted, corrupt or unrecorded file
    is rebuilt. A build that does not load is removed and reported (one line naming the compiler).
    """
    cc = compiler()
    path = library_path()
    if path is None or cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    if str(path) in _LIB:
        return _LIB[str(path)], 0.0
    built_s = 0.0
    for _ in range(2):  # a second build only if a concurrent builder replaced the pair in between
        if kernel_cache.trusted(path):
            break
        t0 = time.perf_counter()
        _build(path, cc)
        built_s += time.perf_counter() - t0
    else:
        if not kernel_cache.trusted(path):
            raise RuntimeError(f"the kernel library {path} does not match its recorded digest after two builds")
    try:
        lib = ctypes.CDLL(str(path))
        fn, dense = lib.prunelens_sums, lib.prunelens_dense
    except (OSError, AttributeError) as exc:
        kernel_cache.discard(path)
        from prunelens.safe_text import clean

        raise RuntimeError(f"the library built by {_who(cc)} cannot be loaded: {clean(exc)[:300]}") from None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 2 + [ctypes.c_int64]
    dense.restype = ctypes.c_int
    dense.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 3 + [ctypes.c_int64]
    _LIB[str(path)] = lib
    return lib, built_s


def native_sums(lib: ctypes.CDLL, z: torch.Tensor, z2: torch.Tensor, zmax: torch.Tensor, zz: torch.Tensor,
                inv_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``kernel.chunk_sums`` for float32 CPU tensors of any rows: ``([NPER, nT, rows], [NONCE, rows])``."""
    args = [t.contiguous() for t in (z, z2, zmax, zz, inv_t)]
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in args):
        raise TypeError("the native kernel takes float32 CPU tensors")
    rows, vocab = args[0].shape
    nt = args[4].shape[0]
    per = torch.empty(NPER, nt, rows, dtype=torch.float32)
    once = torch.empty(NONCE, rows, dtype=torch.float32)
    if rows:
        rc = lib.prunelens_sums(*(t.data_ptr() for t in args), rows, vocab, nt, per.data_ptr(), once.data_ptr(),
                                torch.get_num_threads())
        if rc != 0:
            raise RuntimeError("the native kernel could not allocate its row buffers")
    return per, once


def native_dense(lib: ctypes.CDLL, z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(Σz², top-k values, top-k ids)`` per row of float32 CPU ``z`` in one pass (equal values in index order,
    so the first id is argmax's); None if a row holds a NaN (the caller takes torch's rules for those)."""
    z = z.contiguous()
    rows, vocab = z.shape
    k = min(k, vocab)
    zz = torch.empty(rows, dtype=torch.float32)
    topv = torch.empty(rows, k, dtype=torch.float32)
    topi = torch.empty(rows, k, dtype=torch.int64)
    if rows and lib.prunelens_dense(z.data_ptr(), rows, vocab, k, zz.data_ptr(), topv.data_ptr(), topi.data_ptr(),
                                    torch.get_num_threads()) != 0:
        raise RuntimeError("the native dense pass failed")
    return None if bool(torch.isnan(zz).any()) else (zz, topv, topi)
