/* Fused CPU passes of the Sparsifier's per-step mask update (float32, elementwise masks).
 *
 * Built at first use by spartan/_native.py and called through ctypes, so no torch headers are
 * needed and compiling takes about a second. Each function is one parallel pass over a budget
 * group: the layers' weights, with flat per-item buffers (values, costs, soft and hard masks)
 * indexed by position in the group. OpenMP is the same libgomp torch loaded, so its threads
 * are torch's. Sums are taken in float over short runs, then in double.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define RUN 256 /* items per float partial sum, and per candidate scan */
/* Each pass hands runs of RUN items to a kernel whose restrict parameters let the compiler
 * vectorise it; always_inline compiles a separate copy for unit costs (c == NULL). */
#define KERNEL static inline __attribute__((always_inline)) void
#define COSTS(c, j) ((c) ? (c)[j] : 1.f)

/* A layer's weight seen as a matrix of rows x stride floats (out x in kh kw): item j is a tile
 * of `rows` rows by `width` contiguous floats, per_row tiles to a row of tiles. A weight per item
 * is 1 x 1; a conv kernel 1 x kh kw; an R x C block R x C kh kw. */
typedef struct {
  int64_t rows, width, per_row, stride;
} geom_t;

typedef struct {
  int64_t n;         /* items in the group */
  int64_t nl;        /* layers */
  int64_t nt;        /* threads */
  const int64_t *off; /* nl + 1 offsets of the layers in the flat buffers */
  const geom_t *geom; /* where each layer's items lie in its weight */
  float *const *w;   /* each layer's weight */
  float *const *weff; /* each layer's forward weight */
  const float *c;    /* costs, or NULL for unit costs */
  float *v;          /* |w| */
  float *m;          /* soft mask */
} group_t;

typedef struct {
  float x;
  float c;
  int64_t i;
} cand_t;

/* The handshake spartan/_native.py checks at load: bump SP_ABI with any change to the exported
 * functions' arguments or to group_t / geom_t / cand_t, which Python mirrors by hand. */
#define SP_ABI 1
int64_t sp_abi(void) { return SP_ABI; }
int64_t sp_sizeof(int64_t what) {
  return what == 0 ? (int64_t)sizeof(group_t) : what == 1 ? (int64_t)sizeof(cand_t)
       : what == 2 ? (int64_t)sizeof(geom_t) : -1;
}

/* exp for z in [-88, 87]: 2^j p(r), r = z - j ln 2, degree-6 Taylor polynomial (rel. err 2e-7) */
static inline float fexp(float z) {
  float j = __builtin_rintf(z * 1.44269504f);
  float r = fmaf(j, -0.693145752f, z);
  r = fmaf(j, -1.42860677e-6f, r);
  float p = 1.38888889e-3f;
  p = fmaf(p, r, 8.33333333e-3f);
  p = fmaf(p, r, 4.16666667e-2f);
  p = fmaf(p, r, 1.66666667e-1f);
  p = fmaf(p, r, 0.5f);
  p = fmaf(p, r, 1.0f);
  p = fmaf(p, r, 1.0f);
  int32_t bits = ((int32_t)j + 127) << 23;
  float s;
  memcpy(&s, &bits, 4);
  return p * s;
}

static inline float sigmoid(float z) {
  z = z < -80.f ? -80.f : (z > 80.f ? 80.f : z); /* beyond, float32 sigmoid is 0 or 1 */
  return 1.f / (1.f + fexp(-z));
}

KERNEL scan_run(int64_t k, const float *restrict w, const float *restrict c,
                const float *restrict m, float lo, float hi, double acc[5], int64_t base,
                cand_t *mine, int64_t cap, int64_t *kept) {
  float sw = 0, d1 = 0;
  double above = 0, band = 0; /* weighted costs in double: the knapsack must not go over */
  int nup = 0, nin = 0;
#pragma omp simd reduction(+ : sw, d1, above, band, nup, nin)
  for (int64_t j = 0; j < k; j++) {
    float ci = COSTS(c, j), a = fabsf(w[j]), x = a / ci;
    d1 += ci * m[j] * (1.f - m[j]) * x;
    sw += a;
    int up = x > hi, in = (x >= lo) & !up;
    nup += up;
    nin += in;
    if (c) {
      above += up ? (double)ci : 0.0;
      band += in ? (double)ci : 0.0;
    }
  }
  for (int64_t j = 0; nin && j < k; j++) {
    float x = fabsf(w[j]) / COSTS(c, j);
    if (x >= lo && x <= hi) {
      if (*kept < cap) mine[*kept] = (cand_t){x, COSTS(c, j), base + j};
      (*kept)++;
    }
  }
  acc[0] += sw;
  acc[1] += c ? above : nup;
  acc[2] += c ? band : nin;
  acc[4] += d1;
}

/* Items of more than one weight (conv kernels, blocks): per-item work is scalar, the tile's a
 * short loop over contiguous runs. `j` counts items within the layer, `w` is the layer's. */
/* Walks the items of a layer from item j0 on: `at` is the current item's first weight. One
 * division per run of items, not per item (a 64-bit division costs tens of cycles). */
typedef struct {
  int64_t at, col;
  const geom_t *q;
} walk_t;

static inline walk_t walk_from(const geom_t *q, int64_t j0) {
  int64_t row = j0 / q->per_row, col = j0 % q->per_row;
  return (walk_t){row * q->rows * q->stride + col * q->width, col, q};
}

static inline void walk_next(walk_t *it) {
  it->at += it->q->width;
  if (++it->col == it->q->per_row) { /* on to the next row of tiles */
    it->col = 0;
    it->at += (it->q->rows - 1) * it->q->stride + it->q->stride - it->q->per_row * it->q->width;
  }
}

/* Sums over a tile. Tiles 16 or more wide add rows into 16 lanes and reduce once per tile, so
 * a row costs one vector operation, not a reduction. */
#define LANES 16

static inline float item_abs(const float *restrict w, const geom_t *q) {
  float a = 0;
  if (q->width < LANES) {
    for (int64_t r = 0; r < q->rows; r++)
      for (int64_t p = 0; p < q->width; p++) a += fabsf(w[r * q->stride + p]);
    return a;
  }
  for (int64_t p0 = 0; p0 < q->width; p0 += LANES) {
    float lane[LANES] = {0};
    int64_t n = q->width - p0 < LANES ? q->width - p0 : LANES;
    for (int64_t r = 0; r < q->rows; r++) {
      const float *restrict row = w + r * q->stride + p0;
      if (n == LANES) {
#pragma omp simd
        for (int64_t p = 0; p < LANES; p++) lane[p] += fabsf(row[p]);
      } else {
        for (int64_t p = 0; p < n; p++) lane[p] += fabsf(row[p]);
      }
    }
    for (int64_t p = 0; p < LANES; p++) a += lane[p];
  }
  return a;
}

static inline int single(const geom_t *q) { return q->rows == 1 && q->width == 1; }

static inline void tile_scale(const float *restrict w, float *restrict out, float k,
                              const geom_t *q) {
  for (int64_t r = 0; r < q->rows; r++) {
    const float *restrict wr = w + r * q->stride;
    float *restrict orow = out + r * q->stride;
#pragma omp simd
    for (int64_t p = 0; p < q->width; p++) orow[p] = wr[p] * k;
  }
}

KERNEL scan_items(int64_t j0, int64_t k, const geom_t *q, const float *restrict w,
                  const float *restrict c, const float *restrict m, float lo, float hi,
                  double acc[5], int64_t at, cand_t *mine, int64_t cap, int64_t *kept) {
  walk_t it = walk_from(q, j0);
  for (int64_t j = 0; j < k; j++, walk_next(&it)) {
    float ci = COSTS(c, j), a = item_abs(w + it.at, q), x = a / ci;
    acc[0] += a;
    acc[4] += ci * m[j] * (1.f - m[j]) * x;
    if (x > hi) {
      acc[1] += ci;
    } else if (x >= lo) {
      acc[2] += ci;
      if (*kept < cap) mine[*kept] = (cand_t){x, ci, at + j};
      (*kept)++;
    }
  }
}

/* Values alone: v <- sum of |w| over each item (the sums every pass here computes, in the same
 * order, so thresholds taken on v agree with the passes' comparisons). */
void sp_values(const group_t *g) {
#pragma omp parallel num_threads(g->nt)
  for (int64_t l = 0; l < g->nl; l++) {
    int64_t base = g->off[l], len = g->off[l + 1] - base;
    const geom_t *q = &g->geom[l];
    const float *restrict w = g->w[l];
    float *restrict v = g->v + base;
    int64_t runs = (len + RUN - 1) / RUN;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < runs; r++) {
      int64_t a = r * RUN, k = a + RUN < len ? RUN : len - a;
      walk_t it = walk_from(q, a);
      for (int64_t j = a; j < a + k; j++, walk_next(&it)) v[j] = item_abs(w + it.at, q);
    }
  }
}

/* The hard threshold's bracket and the first-order change of the soft mask, before the solve.
 * out: [sum |w|, cost above hi, cost in [lo, hi], overflow, D1] with x = |w| / c and
 * D1 = sum c m (1 - m) x (m as the last step left it; with D0, the same sum that step's soft pass
 * took with its x, sum c m changed by about beta1 D1 - beta0 D0). Items with lo <= x <= hi go
 * to cand (cap slots per thread), their number per thread to cnt. */
void sp_scan(const group_t *g, float lo, float hi, cand_t *cand, int64_t cap, int64_t *cnt,
             double *out) {
  memset(out, 0, 5 * sizeof(double));
  memset(cnt, 0, g->nt * sizeof(int64_t)); /* the runtime may start fewer threads than nt */
#pragma omp parallel num_threads(g->nt)
  {
    int tid = 0;
#ifdef _OPENMP
    extern int omp_get_thread_num(void);
    tid = omp_get_thread_num();
#endif
    double acc[5] = {0};
    int64_t kept = 0;
    for (int64_t l = 0; l < g->nl; l++) {
      int64_t base = g->off[l], len = g->off[l + 1] - base, runs = (len + RUN - 1) / RUN;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < runs; r++) {
        int64_t a = r * RUN, k = a + RUN < len ? RUN : len - a, at = base + a;
        const geom_t *q = &g->geom[l];
        if (!single(q))
          scan_items(a, k, q, g->w[l], g->c ? g->c + at : NULL, g->m + at, lo, hi, acc, at,
                     cand + tid * cap, cap, &kept);
        else if (g->c)
          scan_run(k, g->w[l] + a, g->c + at, g->m + at, lo, hi, acc, at, cand + tid * cap, cap,
                   &kept);
        else
          scan_run(k, g->w[l] + a, NULL, g->m + at, lo, hi, acc, at, cand + tid * cap, cap,
                   &kept);
      }
    }
    cnt[tid] = kept < cap ? kept : cap;
    acc[3] = kept > cap;
#pragma omp critical
    for (int i = 0; i < 5; i++) out[i] += acc[i];
  }
}

/* Order of the fractional knapsack: ratio descending, index ascending on ties. */
static inline int before(const cand_t *a, const cand_t *b) {
  return a->x > b->x || (a->x == b->x && a->i < b->i);
}

static inline void swap(cand_t *a, cand_t *b) {
  cand_t t = *a;
  *a = *b;
  *b = t;
}

/* The first item (in knapsack order) whose cost does not fit in rem, by weighted quickselect
 * over the candidates gathered from each thread's slots. out: [its ratio, its index]. */
void sp_cut(cand_t *cand, int64_t cap, const int64_t *cnt, int64_t nt, double rem,
            double *out) {
  int64_t n = 0;
  for (int64_t t = 0; t < nt; t++) {
    if (t * cap != n) memmove(cand + n, cand + t * cap, cnt[t] * sizeof(cand_t));
    n += cnt[t];
  }
  int64_t lo = 0, hi = n; /* the answer lies in [lo, hi) */
  while (hi - lo > 1) {
    /* median of three as pivot, moved to the end; Lomuto partition: items before the pivot
     * end up in [lo, p) */
    int64_t mid = lo + (hi - lo) / 2, last = hi - 1;
    if (before(&cand[mid], &cand[lo])) swap(&cand[mid], &cand[lo]);
    if (before(&cand[last], &cand[lo])) swap(&cand[last], &cand[lo]);
    if (before(&cand[mid], &cand[last])) swap(&cand[mid], &cand[last]);
    int64_t p = lo;
    double left = 0;
    for (int64_t j = lo; j < last; j++) {
      if (before(&cand[j], &cand[last])) {
        left += cand[j].c;
        swap(&cand[j], &cand[p]);
        p++;
      }
    }
    swap(&cand[p], &cand[last]);
    if (left > rem) {
      hi = p;
    } else if (left + cand[p].c > rem) {
      lo = p;
      hi = p + 1;
    } else {
      rem -= left + cand[p].c;
      lo = p + 1;
    }
  }
  out[0] = lo < n ? cand[lo].x : NAN;
  out[1] = lo < n ? (double)cand[lo].i : -1.0;
}

KERNEL soft_run(int64_t k, const float *restrict w, const float *restrict c,
                float *restrict v, float *restrict m, float *restrict weff, float beta, float u1,
                float u2, float t, int64_t tie, float acc[5]) {
  float f = 0, s = 0, d0 = 0, zmin = INFINITY, zmax = -INFINITY;
  int ties = 0;
#pragma omp simd reduction(+ : f, s, d0, ties) reduction(min : zmin) reduction(max : zmax)
  for (int64_t j = 0; j < k; j++) {
    float ci = COSTS(c, j), a = fabsf(w[j]), x = a / ci, z = beta * x - u1 - u2;
    zmin = z < zmin ? z : zmin;
    zmax = z > zmax ? z : zmax;
    float mi = sigmoid(z), cmm = ci * mi * (1.f - mi);
    v[j] = a;
    m[j] = mi;
    weff[j] = x > t ? w[j] * mi : 0.f;
    ties += x == t;
    f += ci * mi;
    s += cmm;
    d0 += cmm * x;
  }
  for (int64_t j = 0; ties && j < k && j < tie; j++)
    if (v[j] / COSTS(c, j) == t) weff[j] = w[j] * m[j];
  acc[0] += f;
  acc[1] += s;
  acc[2] = zmin < acc[2] ? zmin : acc[2];
  acc[3] = zmax > acc[3] ? zmax : acc[3];
  acc[4] += d0;
}

KERNEL soft_items(int64_t j0, int64_t k, const geom_t *q, const float *restrict w,
                  const float *restrict c, float *restrict v, float *restrict m,
                  float *restrict weff, float beta, float u1, float u2, float t, int64_t tie,
                  float acc[5]) {
  walk_t it = walk_from(q, j0);
  for (int64_t j = 0; j < k; j++, walk_next(&it)) {
    int64_t o = it.at;
    float ci = COSTS(c, j), a = item_abs(w + o, q), x = a / ci, z = beta * x - u1 - u2;
    acc[2] = z < acc[2] ? z : acc[2];
    acc[3] = z > acc[3] ? z : acc[3];
    float mi = sigmoid(z), cmm = ci * mi * (1.f - mi);
    float keep = (x > t || (x == t && j < tie)) ? mi : 0.f;
    v[j] = a;
    m[j] = mi;
    tile_scale(w + o, weff + o, keep, q);
    acc[0] += ci * mi;
    acc[1] += cmm;
    acc[4] += cmm * x;
  }
}

/* Soft mask and forward weights at u = u1 + u2: v <- |w|, m = sigmoid(beta x - u), weff = w m h
 * with h the hard mask x > t or (x == t and index < lim). Ties at t are rare: a run that has
 * one is fixed up after the vector loop.
 * out: [sum c m, sum c m (1 - m), min logit, max logit, D0 = sum c m (1 - m) x]. */
void sp_soft(const group_t *g, float beta, float u1, float u2, float t, int64_t lim,
             double *out) {
  out[0] = out[1] = out[4] = 0;
  out[2] = INFINITY;
  out[3] = -INFINITY;
#pragma omp parallel num_threads(g->nt)
  {
    double f = 0, s = 0, d0 = 0;
    float acc[5] = {0, 0, INFINITY, -INFINITY, 0};
    for (int64_t l = 0; l < g->nl; l++) {
      int64_t base = g->off[l], len = g->off[l + 1] - base, runs = (len + RUN - 1) / RUN;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < runs; r++) {
        int64_t a = r * RUN, k = a + RUN < len ? RUN : len - a, at = base + a;
        const geom_t *q = &g->geom[l];
        acc[0] = acc[1] = acc[4] = 0;
        if (!single(q))
          soft_items(a, k, q, g->w[l], g->c ? g->c + at : NULL, g->v + at, g->m + at,
                     g->weff[l], beta, u1, u2, t, lim - at, acc);
        else if (g->c)
          soft_run(k, g->w[l] + a, g->c + at, g->v + at, g->m + at, g->weff[l] + a, beta, u1,
                   u2, t, lim - at, acc);
        else
          soft_run(k, g->w[l] + a, NULL, g->v + at, g->m + at, g->weff[l] + a, beta, u1, u2,
                   t, lim - at, acc);
        f += acc[0];
        s += acc[1];
        d0 += acc[4];
      }
    }
#pragma omp critical
    {
      out[0] += f;
      out[1] += s;
      out[2] = acc[2] < out[2] ? acc[2] : out[2];
      out[3] = acc[3] > out[3] ? acc[3] : out[3];
      out[4] += d0;
    }
  }
}

KERNEL hard_run(int64_t k, const float *restrict w, const float *restrict c,
                float *restrict v, float *restrict weff, float t, int64_t tie) {
  int ties = 0;
#pragma omp simd reduction(+ : ties)
  for (int64_t j = 0; j < k; j++) {
    float a = fabsf(w[j]), x = a / COSTS(c, j);
    v[j] = a;
    weff[j] = x > t ? w[j] : 0.f;
    ties += x == t;
  }
  for (int64_t j = 0; ties && j < k && j < tie; j++)
    if (v[j] / COSTS(c, j) == t) weff[j] = w[j];
}

KERNEL hard_items(int64_t j0, int64_t k, const geom_t *q, const float *restrict w,
                  const float *restrict c, float *restrict v, float *restrict weff, float t,
                  int64_t tie) {
  walk_t it = walk_from(q, j0);
  for (int64_t j = 0; j < k; j++, walk_next(&it)) {
    int64_t o = it.at;
    float a = item_abs(w + o, q), x = a / COSTS(c, j);
    float keep = (x > t || (x == t && j < tie)) ? 1.f : 0.f;
    v[j] = a;
    tile_scale(w + o, weff + o, keep, q);
  }
}

/* Forward weights of the hard mask alone (dual averaging): v <- |w|, weff = w h, h as in
 * sp_soft. */
void sp_hard(const group_t *g, float t, int64_t lim) {
#pragma omp parallel num_threads(g->nt)
  for (int64_t l = 0; l < g->nl; l++) {
    int64_t base = g->off[l], len = g->off[l + 1] - base, runs = (len + RUN - 1) / RUN;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < runs; r++) {
      int64_t a = r * RUN, k = a + RUN < len ? RUN : len - a, at = base + a;
      const geom_t *q = &g->geom[l];
      if (!single(q))
        hard_items(a, k, q, g->w[l], g->c ? g->c + at : NULL, g->v + at, g->weff[l], t,
                   lim - at);
      else if (g->c)
        hard_run(k, g->w[l] + a, g->c + at, g->v + at, g->weff[l] + a, t, lim - at);
      else
        hard_run(k, g->w[l] + a, NULL, g->v + at, g->weff[l] + a, t, lim - at);
    }
  }
}

KERNEL dot_run(int64_t k, const float *restrict gr, const float *restrict w,
               const float *restrict m, double *acc) {
  float f = 0;
#pragma omp simd reduction(+ : f)
  for (int64_t j = 0; j < k; j++) f += gr[j] * w[j] * m[j] * (1.f - m[j]);
  *acc += f;
}

static inline float item_dot(const float *restrict a, const float *restrict b,
                             const geom_t *q) {
  float s = 0;
  if (q->width < LANES) {
    for (int64_t r = 0; r < q->rows; r++)
      for (int64_t p = 0; p < q->width; p++) s += a[r * q->stride + p] * b[r * q->stride + p];
    return s;
  }
  for (int64_t p0 = 0; p0 < q->width; p0 += LANES) {
    float lane[LANES] = {0};
    int64_t n = q->width - p0 < LANES ? q->width - p0 : LANES;
    for (int64_t r = 0; r < q->rows; r++) {
      const float *restrict x = a + r * q->stride + p0, *restrict y = b + r * q->stride + p0;
      if (n == LANES) {
#pragma omp simd
        for (int64_t p = 0; p < LANES; p++) lane[p] += x[p] * y[p];
      } else {
        for (int64_t p = 0; p < n; p++) lane[p] += x[p] * y[p];
      }
    }
    for (int64_t p = 0; p < LANES; p++) s += lane[p];
  }
  return s;
}

KERNEL dot_items(int64_t j0, int64_t k, const geom_t *q, const float *restrict gr,
                 const float *restrict w, const float *restrict m, double *acc) {
  walk_t it = walk_from(q, j0);
  for (int64_t j = 0; j < k; j++, walk_next(&it)) {
    int64_t o = it.at;
    *acc += item_dot(gr + o, w + o, q) * m[j] * (1.f - m[j]);
  }
}

/* Backward of the soft mask, first pass: sum G w m (1 - m) (lam's numerator). */
double sp_grad_dot(const group_t *g, float *const *grad) {
  double total = 0;
#pragma omp parallel num_threads(g->nt) reduction(+ : total)
  for (int64_t l = 0; l < g->nl; l++) {
    int64_t base = g->off[l], len = g->off[l + 1] - base, runs = (len + RUN - 1) / RUN;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < runs; r++) {
      int64_t a = r * RUN, k = a + RUN < len ? RUN : len - a;
      const geom_t *q = &g->geom[l];
      if (!single(q))
        dot_items(a, k, q, grad[l], g->w[l], g->m + base + a, &total);
      else
        dot_run(k, grad[l] + a, g->w[l] + a, g->m + base + a, &total);
    }
  }
  return total;
}

KERNEL grad_run(int64_t k, const float *restrict gr, const float *restrict w,
                const float *restrict c, const float *restrict m, float *restrict o, float beta,
                float lam) {
#pragma omp simd
  for (int64_t j = 0; j < k; j++) {
    float mm = m[j] * (1.f - m[j]), sg = w[j] > 0.f ? 1.f : (w[j] < 0.f ? -1.f : 0.f);
    o[j] = gr[j] * (m[j] + beta * mm * fabsf(w[j]) / COSTS(c, j)) - beta * lam * mm * sg;
  }
}

/* Items: dL/dw = G m + sign(w) beta m (1 - m) (sum_item(G w) / c - lam), per item. */
KERNEL grad_items(int64_t j0, int64_t k, const geom_t *q, const float *restrict gr,
                  const float *restrict w, const float *restrict c, const float *restrict m,
                  float *restrict out, float beta, float lam) {
  walk_t it = walk_from(q, j0);
  for (int64_t j = 0; j < k; j++, walk_next(&it)) {
    int64_t o = it.at;
    float d = beta * m[j] * (1.f - m[j]) * (item_dot(gr + o, w + o, q) / COSTS(c, j) - lam);
    for (int64_t r = 0; r < q->rows; r++) {
      const float *restrict wr = w + o + r * q->stride, *restrict gq = gr + o + r * q->stride;
      float *restrict orow = out + o + r * q->stride;
#pragma omp simd
      for (int64_t p = 0; p < q->width; p++) {
        float sg = wr[p] > 0.f ? 1.f : (wr[p] < 0.f ? -1.f : 0.f);
        orow[p] = gq[p] * m[j] + sg * d;
      }
    }
  }
}

/* Backward, second pass: out = dL/dw = G (m + beta m (1 - m) |w| / c)
 * - beta lam m (1 - m) sign(w), the hard mask taken as identity (DESIGN.md). */
void sp_grad(const group_t *g, float *const *grad, float *const *out, float beta, float lam) {
#pragma omp parallel num_threads(g->nt)
  for (int64_t l = 0; l < g->nl; l++) {
    int64_t base = g->off[l], len = g->off[l + 1] - base, runs = (len + RUN - 1) / RUN;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < runs; r++) {
      int64_t a = r * RUN, k = a + RUN < len ? RUN : len - a, at = base + a;
      const geom_t *q = &g->geom[l];
      if (!single(q))
        grad_items(a, k, q, grad[l], g->w[l], g->c ? g->c + at : NULL, g->m + at, out[l], beta,
                   lam);
      else if (g->c)
        grad_run(k, grad[l] + a, g->w[l] + a, g->c + at, g->m + at, out[l] + a, beta, lam);
      else
        grad_run(k, grad[l] + a, g->w[l] + a, NULL, g->m + at, out[l] + a, beta, lam);
    }
  }
}
