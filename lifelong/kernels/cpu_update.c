/* Fused SGD(-momentum) and Adam/AdamW updates of a list of flat fp32 tensors: the C side
 * of cpu.py, implementing the specification in reference.py in one pass over memory, and
 * one OpenMP parallel region per call (per optimizer step and param group).
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
#include <stdlib.h>
#include <string.h>
#include <omp.h>

enum { SCALE_NONE = 0, SCALE_U8 = 1, SCALE_F32 = 2 };
enum { DECAY_NONE = 0, DECAY_L2 = 1, DECAY_DECOUPLED = 2 };

/* Threads take the active elements in chunks: about four per thread, within these
 * bounds (multiples of 16, so the chunks of a dense update start on 64-byte lines). An
 * update of one smallest chunk or less runs on the calling thread alone. */
#ifndef CHUNK_MIN
#define CHUNK_MIN 2048
#endif
#define CHUNK_MAX 65536

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
#define SGD_KINDS(PULL, DECAY, MOM) \
    SGD_FN(PULL, DECAY, MOM, 0) SGD_FN(PULL, DECAY, MOM, 1) SGD_FN(PULL, DECAY, MOM, 2)
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

static inline int64_t clamp64(int64_t x, int64_t lo, int64_t hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

/* One tensor of a multi-tensor update, as cpu.py packs it (ctypes structure _Item). */
typedef struct {
    float *param;
    const float *grad;
    float *state1;  /* SGD: the momentum buffer (NULL without momentum); Adam: exp_avg */
    float *state2;  /* Adam: exp_avg_sq */
    const float *curvature, *offset;  /* the pull; NULL: none */
    const void *scale;  /* NULL: none */
    const int64_t *spans;  /* (n_spans, 2) */
    int64_t n, n_spans;  /* n_spans < 0: no spans (the whole tensor) */
    int64_t scale_kind;
    double lam;
} Item;

/* The call: its items and the hyper-parameters they share. */
typedef struct {
    const Item *items;
    const float *const *grads;  /* NULL: each item's own grad; else grads[i] for item i */
    int64_t n_items;
    Ctx hyper;  /* the scalars; the pointers come from each item */
    int adam, has_momentum, has_decay, decay_kind;
} Work;

/* A place where a chunk of work starts: item, span (0 without spans), element index. */
typedef struct { int64_t item, span, at; } Cut;

static inline int64_t n_pieces(const Item *it) { return it->n_spans < 0 ? 1 : it->n_spans; }

/* Piece j of an item (its span j, or the whole tensor), clamped to [0, n): the C side
 * never trusts an index to stay in bounds; an empty or reversed span covers nothing. */
static inline void piece(const Item *it, int64_t j, int64_t *a, int64_t *b) {
    if (it->n_spans < 0) { *a = 0; *b = it->n; return; }
    *a = clamp64(it->spans[2 * j], 0, it->n);
    *b = clamp64(it->spans[2 * j + 1], *a, it->n);
}

static inline Ctx ctx_of(const Work *w, int64_t i) {
    const Item *it = &w->items[i];
    Ctx c = w->hyper;
    c.param = it->param; c.grad = w->grads ? w->grads[i] : it->grad;
    c.buf = it->state1; c.exp_avg = it->state1; c.exp_avg_sq = it->state2; c.curvature = it->curvature; c.offset = it->offset;
    c.scale = it->scale; c.lam = (float)it->lam;
    return c;
}

static inline range_fn fn_of(const Work *w, const Item *it) {
    const int pull = it->curvature != NULL, kind = (int)it->scale_kind;
    if (w->adam) return ADAM_TABLE[pull][w->decay_kind][kind];
    return SGD_TABLE[pull][w->has_decay][w->has_momentum][kind];
}

/* The next non-empty piece after piece *j of item *i that belongs to the chunk ending at
 * `end` (the next chunk's start); 0 when there is none. */
static int next_piece(const Work *w, int64_t *i, int64_t *j, int64_t *a, int64_t *b, Cut end) {
    int64_t ii = *i, jj = *j;
    if (ii == end.item && jj == end.span) return 0;
    for (;;) {
        if (++jj >= n_pieces(&w->items[ii])) {
            do { ii++; } while (ii < w->n_items && n_pieces(&w->items[ii]) == 0);
            if (ii >= w->n_items) return 0;
            jj = 0;
        }
        int64_t lo, hi;
        piece(&w->items[ii], jj, &lo, &hi);
        const int last = ii == end.item && jj == end.span;
        if (last) hi = end.at;
        if (hi > lo) { *i = ii; *j = jj; *a = lo; *b = hi; return 1; }
        if (last) return 0;
    }
}

/* Updates the elements from cut `from` up to cut `to`, in address order within each
 * tensor. Short scattered spans cost about twice as much per byte as one long span on
 * the 2-core EPYC VM this was measured on (per span: hardware prefetch restarts and
 * fetches past the span's end, per-page costs). Software prefetch did not help there:
 * the next span's first 4-16 lines of every stream or the whole next span, requested
 * while the current one is updated, measured the same, and prefetching ahead inside a
 * span measured slower, so there is none. */
static void run_chunk(const Work *w, Cut from, Cut to) {
    int64_t i = from.item, j = from.span, a, b;
    piece(&w->items[i], j, &a, &b);
    a = from.at;
    if (i == to.item && j == to.span) b = to.at;
    do {
        if (b > a) {
            const Ctx c = ctx_of(w, i);
            fn_of(w, &w->items[i])(&c, a, b);
        }
    } while (next_piece(w, &i, &j, &a, &b, to));
}

/* Cuts the active elements of all items into chunks of about `target` elements: a chunk
 * is a run of whole spans (a short span is never split between threads), and a span of
 * `target` or more starts its own chunks, cut every `target` elements at multiples of 16
 * (on 64-byte line boundaries). Returns the number of cuts. */
static int64_t make_cuts(const Work *w, int64_t target, Cut *cuts) {
    int64_t n_cuts = 0, acc = 0;
    for (int64_t i = 0; i < w->n_items; i++) {
        const Item *it = &w->items[i];
        for (int64_t j = 0; j < n_pieces(it); j++) {
            int64_t a, b;
            piece(it, j, &a, &b);
            const int64_t len = b - a;
            if (len <= 0) continue;
            if (n_cuts == 0 || acc >= target || (len >= target && acc > 0)) {
                cuts[n_cuts++] = (Cut){i, j, a};
                acc = 0;
            }
            if (len < target) { acc += len; continue; }
            int64_t last = a;
            for (int64_t x = (a + target + 15) / 16 * 16; b - x >= target / 2; x += target) {
                cuts[n_cuts++] = (Cut){i, j, x};
                last = x;
            }
            acc = b - last;
        }
    }
    return n_cuts;
}

/* Runs the update over the active elements of every item. The chunks go to the threads
 * from a shared counter, so a thread the OS descheduled (a shared machine) holds up at
 * most one chunk, and tensors of mixed sizes balance by elements, not by tensor. An
 * update of one chunk or less runs on the calling thread alone. */
static void drive(const Work *w, int n_threads) {
    int64_t total = 0, nonempty = 0;
    for (int64_t i = 0; i < w->n_items; i++)
        for (int64_t j = 0; j < n_pieces(&w->items[i]); j++) {
            int64_t a, b;
            piece(&w->items[i], j, &a, &b);
            total += b - a;
            nonempty += b > a;
        }
    if (total == 0) return;
    if (n_threads < 1) n_threads = 1;
    int64_t target = total / (4 * (int64_t)n_threads) / 16 * 16;
    target = target < CHUNK_MIN ? CHUNK_MIN : (target > CHUNK_MAX ? CHUNK_MAX : target);
    Cut local[256], *cuts = local;
    const int64_t cap = nonempty + total / target + 1;
    if (cap > 256 && !(cuts = malloc(cap * sizeof(Cut)))) {
        cuts = local;
        n_threads = 1;  /* no memory for the cuts: one chunk, this thread */
    }
    const Cut end = {w->n_items, 0, 0};
    if (n_threads == 1 || total <= target) {
        make_cuts(w, INT64_MAX, cuts);  /* one cut: the first active element */
        run_chunk(w, cuts[0], end);
    } else {
        const int64_t n_cuts = make_cuts(w, target, cuts);
        int64_t next = 0;
        #pragma omp parallel num_threads(n_threads < n_cuts ? n_threads : (int)n_cuts)
        for (;;) {
            int64_t c;
            #pragma omp atomic capture
            c = next++;
            if (c >= n_cuts) break;
            run_chunk(w, cuts[c], c + 1 < n_cuts ? cuts[c + 1] : end);
        }
    }
    if (cuts != local) free(cuts);
}

void lifelong_sgd_many(const Item *items, const float *const *grads, int64_t n_items, float lr,
                       float momentum, float weight_decay, int has_momentum, int has_decay,
                       int n_threads) {
    const Work w = {.items = items, .grads = grads, .n_items = n_items,
                    .hyper = {.lr = lr, .momentum = momentum, .weight_decay = weight_decay},
                    .adam = 0, .has_momentum = has_momentum != 0, .has_decay = has_decay != 0};
    drive(&w, n_threads);
}

void lifelong_adam_many(const Item *items, const float *const *grads, int64_t n_items,
                        float one_minus_beta1, float beta2, float one_minus_beta2, float step_size,
                        float bias2_sqrt, float eps, float weight_decay, float lr_wd, int decay_kind,
                        int n_threads) {
    const Work w = {.items = items, .grads = grads, .n_items = n_items,
                    .hyper = {.one_minus_beta1 = one_minus_beta1, .beta2 = beta2,
                              .one_minus_beta2 = one_minus_beta2, .step_size = step_size,
                              .bias2_sqrt = bias2_sqrt, .eps = eps, .weight_decay = weight_decay,
                              .lr_wd = lr_wd},
                    .adam = 1, .decay_kind = decay_kind};
    drive(&w, n_threads);
}
