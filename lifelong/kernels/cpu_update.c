/* Fused SGD(-momentum) and Adam/AdamW updates on one flat fp32 tensor: the C side of
 * cpu.py, implementing the specification in reference.py in one pass over memory.
 *
 * Plain C (no torch headers) so it compiles in about a second; built by cpu.py with
 * gcc -O3 -march=native -fopenmp -ffp-contract=off -fno-math-errno. Contraction stays off
 * so every operation rounds as torch's eager ops do (the reference), and the loops are
 * written as scalar code that gcc vectorises.
 *
 * Frozen elements (scale 0) keep their bits by an integer bit-select of old and new
 * values: gcc 12 turns `c ? new : old` into slow masked moves, and a bool mask does not
 * vectorise, so masks are read as uint8. Elements outside the spans are never touched.
 */

#include <stdint.h>
#include <string.h>
#include <omp.h>

enum { SCALE_NONE = 0, SCALE_U8 = 1, SCALE_F32 = 2 };
enum { DECAY_NONE = 0, DECAY_L2 = 1, DECAY_DECOUPLED = 2 };

/* Threads take the active elements in chunks of this many (a multiple of 16, so chunks
 * of a dense update start on 64-byte lines); an update of one chunk or less runs on the
 * calling thread alone, cheaper than waking the pool. */
#ifndef CHUNK
#define CHUNK 16384
#endif

typedef struct {
    float *param, *buf, *exp_avg, *exp_avg_sq;
    const float *grad, *curvature, *offset;
    const void *scale;
    float lr, momentum, weight_decay, lam;
    float one_minus_beta1, beta2, one_minus_beta2, step_size, bias2_sqrt, eps, lr_wd;
} Ctx;

typedef void (*range_fn)(const Ctx *c, int64_t lo, int64_t hi);

static inline uint32_t bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline float from_bits(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

/* All ones where the element is frozen (scale 0), else zero. */
static inline __attribute__((always_inline)) uint32_t keep_mask(const void *scale, int kind, int64_t i) {
    if (kind == SCALE_U8) return (uint32_t)0 - (uint32_t)(((const uint8_t *)scale)[i] == 0);
    if (kind == SCALE_F32) return (uint32_t)0 - (uint32_t)(((const float *)scale)[i] == 0.0f);
    return 0;
}

static inline __attribute__((always_inline)) float pick(uint32_t keep, float old, float new_) {
    return from_bits((bits(old) & keep) | (bits(new_) & ~keep));
}

static inline __attribute__((always_inline)) void sgd_body(
        const Ctx *restrict c, int64_t lo, int64_t hi,
        const int pull, const int decay, const int mom, const int kind) {
    float *restrict P = c->param, *restrict B = c->buf;
    const float *restrict G = c->grad, *restrict C = c->curvature, *restrict O = c->offset;
    const void *S = c->scale;
    const float lr = c->lr, mu = c->momentum, wd = c->weight_decay, lam = c->lam;
    for (int64_t i = lo; i < hi; i++) {
        const float p = P[i];
        float d = G[i];
        if (pull) d = d + lam * (C[i] * p - O[i]);
        if (decay) d = d + wd * p;
        const uint32_t keep = keep_mask(S, kind, i);
        float u = d;
        if (mom) {
            const float b = B[i];
            u = mu * b + d;
            B[i] = kind == SCALE_NONE ? u : pick(keep, b, u);
        }
        if (kind == SCALE_F32) u = u * ((const float *)S)[i];
        const float np = p - lr * u;
        P[i] = kind == SCALE_NONE ? np : pick(keep, p, np);
    }
}

static inline __attribute__((always_inline)) void adam_body(
        const Ctx *restrict c, int64_t lo, int64_t hi,
        const int pull, const int decay, const int kind) {
    float *restrict P = c->param, *restrict M = c->exp_avg, *restrict V = c->exp_avg_sq;
    const float *restrict G = c->grad, *restrict C = c->curvature, *restrict O = c->offset;
    const void *S = c->scale;
    const float wd = c->weight_decay, lam = c->lam, omb1 = c->one_minus_beta1;
    const float b2 = c->beta2, omb2 = c->one_minus_beta2, step_size = c->step_size;
    const float bias2_sqrt = c->bias2_sqrt, eps = c->eps, lr_wd = c->lr_wd;
    for (int64_t i = lo; i < hi; i++) {
        const float p = P[i], m = M[i], v = V[i];
        float d = G[i];
        if (pull) d = d + lam * (C[i] * p - O[i]);
        if (decay == DECAY_L2) d = d + wd * p;
        const float nm = m + omb1 * (d - m);
        const float nv = b2 * v + (omb2 * d) * d;
        float u = step_size * nm / (__builtin_sqrtf(nv) / bias2_sqrt + eps);
        if (decay == DECAY_DECOUPLED) u = u + lr_wd * p;
        if (kind == SCALE_F32) u = u * ((const float *)S)[i];
        const float np = p - u;
        if (kind == SCALE_NONE) {
            M[i] = nm; V[i] = nv; P[i] = np;
        } else {
            const uint32_t keep = keep_mask(S, kind, i);
            M[i] = pick(keep, m, nm); V[i] = pick(keep, v, nv); P[i] = pick(keep, p, np);
        }
    }
}

/* One specialised loop per flag combination: the flags are compile-time constants here. */
#define SGD_FN(PULL, DECAY, MOM, KIND) \
    static void sgd_##PULL##DECAY##MOM##KIND(const Ctx *c, int64_t lo, int64_t hi) { \
        sgd_body(c, lo, hi, PULL, DECAY, MOM, KIND); }
#define SGD_KINDS(PULL, DECAY, MOM) SGD_FN(PULL, DECAY, MOM, 0) SGD_FN(PULL, DECAY, MOM, 1) SGD_FN(PULL, DECAY, MOM, 2)
#define SGD_MOMS(PULL, DECAY) SGD_KINDS(PULL, DECAY, 0) SGD_KINDS(PULL, DECAY, 1)
SGD_MOMS(0, 0) SGD_MOMS(0, 1) SGD_MOMS(1, 0) SGD_MOMS(1, 1)

#define ADAM_FN(PULL, DECAY, KIND) \
    static void adam_##PULL##DECAY##KIND(const Ctx *c, int64_t lo, int64_t hi) { \
        adam_body(c, lo, hi, PULL, DECAY, KIND); }
#define ADAM_KINDS(PULL, DECAY) ADAM_FN(PULL, DECAY, 0) ADAM_FN(PULL, DECAY, 1) ADAM_FN(PULL, DECAY, 2)
#define ADAM_DECAYS(PULL) ADAM_KINDS(PULL, 0) ADAM_KINDS(PULL, 1) ADAM_KINDS(PULL, 2)
ADAM_DECAYS(0) ADAM_DECAYS(1)

#define ROW3(P, D, M) {sgd_##P##D##M##0, sgd_##P##D##M##1, sgd_##P##D##M##2}
static const range_fn SGD_TABLE[2][2][2][3] = {
    {{ROW3(0, 0, 0), ROW3(0, 0, 1)}, {ROW3(0, 1, 0), ROW3(0, 1, 1)}},
    {{ROW3(1, 0, 0), ROW3(1, 0, 1)}, {ROW3(1, 1, 0), ROW3(1, 1, 1)}},
};
#define AROW3(P, D) {adam_##P##D##0, adam_##P##D##1, adam_##P##D##2}
static const range_fn ADAM_TABLE[2][3][3] = {
    {AROW3(0, 0), AROW3(0, 1), AROW3(0, 2)},
    {AROW3(1, 0), AROW3(1, 1), AROW3(1, 2)},
};

static inline int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

static inline int64_t span_start(const int64_t *spans, int64_t j, int64_t n) { return clamp64(spans[2 * j], 0, n); }
static inline int64_t span_stop(const int64_t *spans, int64_t j, int64_t n) {
    const int64_t a = span_start(spans, j, n), b = clamp64(spans[2 * j + 1], 0, n);
    return b > a ? b : a;  /* an empty or reversed span covers nothing */
}

/* Runs fn over the elements of the spans (all of [0, n) when n_spans < 0: an empty spans
 * tensor may come with a NULL pointer, so the count says "no spans").
 *
 * The active elements, numbered in span order, are cut into chunks of CHUNK that the
 * threads take in turn from a shared counter: a row-sparse step costs what it touches,
 * and a thread the OS descheduled (a shared machine) holds up at most one chunk, not half
 * of the work. Each thread's chunks come in increasing order, so it finds their spans with
 * a cursor that only moves forward. */
static void drive(range_fn fn, const Ctx *c, int64_t n, const int64_t *spans, int64_t n_spans,
                  int n_threads) {
    const int64_t whole[2] = {0, n};
    if (n_spans < 0) { spans = whole; n_spans = 1; }
    int64_t total = 0;
    for (int64_t j = 0; j < n_spans; j++) total += span_stop(spans, j, n) - span_start(spans, j, n);
    const int64_t n_chunks = (total + CHUNK - 1) / CHUNK;
    if (n_threads <= 1 || n_chunks < 2) {
        for (int64_t j = 0; j < n_spans; j++) {
            const int64_t a = span_start(spans, j, n), b = span_stop(spans, j, n);
            if (b > a) fn(c, a, b);
        }
        return;
    }
    int64_t next_chunk = 0;
    #pragma omp parallel num_threads(n_threads < n_chunks ? n_threads : (int)n_chunks)
    {
        int64_t j = 0, seen = 0;  /* cursor: span j, with `seen` active elements before it */
        for (;;) {
            int64_t chunk;
            #pragma omp atomic capture
            chunk = next_chunk++;
            if (chunk >= n_chunks) break;
            const int64_t lo = chunk * CHUNK, hi = lo + CHUNK < total ? lo + CHUNK : total;
            for (;;) {  /* move to the span holding element lo */
                const int64_t len = span_stop(spans, j, n) - span_start(spans, j, n);
                if (seen + len > lo) break;
                seen += len;
                j++;
            }
            for (int64_t k = j, before = seen; k < n_spans && before < hi; k++) {
                const int64_t a = span_start(spans, k, n), len = span_stop(spans, k, n) - a;
                const int64_t from = lo > before ? lo - before : 0;
                const int64_t to = hi - before < len ? hi - before : len;
                if (to > from) fn(c, a + from, a + to);
                before += len;
            }
        }
    }
}

void lifelong_sgd(float *param, const float *grad, float *buf, int64_t n,
                  const void *scale, int scale_kind, const int64_t *spans, int64_t n_spans,
                  const float *curvature, const float *offset, float lam,
                  float lr, float momentum, float weight_decay, int has_momentum, int has_decay,
                  int n_threads) {
    const Ctx c = {.param = param, .grad = grad, .buf = buf, .curvature = curvature,
                   .offset = offset, .scale = scale, .lr = lr, .momentum = momentum,
                   .weight_decay = weight_decay, .lam = lam};
    const range_fn fn = SGD_TABLE[curvature != NULL][has_decay != 0][has_momentum != 0][scale_kind];
    drive(fn, &c, n, spans, n_spans, n_threads);
}

void lifelong_adam(float *param, const float *grad, float *exp_avg, float *exp_avg_sq, int64_t n,
                   const void *scale, int scale_kind, const int64_t *spans, int64_t n_spans,
                   const float *curvature, const float *offset, float lam,
                   float one_minus_beta1, float beta2, float one_minus_beta2, float step_size,
                   float bias2_sqrt, float eps, float weight_decay, float lr_wd, int decay_kind,
                   int n_threads) {
    const Ctx c = {.param = param, .grad = grad, .exp_avg = exp_avg, .exp_avg_sq = exp_avg_sq,
                   .curvature = curvature, .offset = offset, .scale = scale, .lam = lam,
                   .one_minus_beta1 = one_minus_beta1, .beta2 = beta2,
                   .one_minus_beta2 = one_minus_beta2, .step_size = step_size,
                   .bias2_sqrt = bias2_sqrt, .eps = eps, .weight_decay = weight_decay,
                   .lr_wd = lr_wd};
    const range_fn fn = ADAM_TABLE[curvature != NULL][decay_kind][scale_kind];
    drive(fn, &c, n, spans, n_spans, n_threads);
}
