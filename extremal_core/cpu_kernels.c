/* The smooth max-convolution of masks.py (_SmoothMaxConv) and the pyramid blend of
 * perturbation.py as C loops, float32, one thread per call (cpu_kernels.py splits the work).
 *
 * Smooth max, shapes as in masks.py: parameters P [K, Hp, Wp]; their neighbours v [O, C] per mask (the
 * window's O = window² offsets around each of the C = Hc·Wc cells, zero past the grid, what
 * F.unfold(P, window, padding=pad) gives); kernel table W [O, S] (S = step² phases); outputs
 * [K, S, C].
 *
 *   forward:  f = c·W[o,s]·v[o,j], e = exp(f), norm = Σ_o e, out = Σ_o f·e / norm / c
 *   backward: dv[o,j] = Σ_s W[o,s]·e·(a[k,s,j] + b[k,s,j]·f), folded back onto P,
 *             with b = grad_out / norm, a = b·(1 - c·out) computed by the caller.
 *
 * The running sums of one (s) or (o) row stay in L1 while the innermost loop over cells
 * vectorizes, exp included (exp_f32 is plain arithmetic, so neither libm's vector ABI nor
 * -ffast-math is needed). Parameters lie in [0, 1], so f lies in [0, c]: no overflow.
 * The functions return 0, or -1 when out of memory.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t hp, wp, pad, window, hc, wc;
} geometry;

/* exp(x) for x in [-87, 88] (clamped outside) as 2^n·p(r), n = round(x/ln 2), r = x - n·ln 2,
 * p the degree-6 Taylor polynomial (Estrin's scheme): relative error below 3e-7. Adding
 * 1.5·2^23 rounds x/ln 2 to an integer and leaves n in the low bits of the float. */
static inline float exp_f32(float x)
{
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    const float shifter = 12582912.0f;
    const float t = x * 1.44269504088896341f + shifter;
    const float n = t - shifter;
    const float r = x - n * 0.693147180559945309f;
    const float r2 = r * r;
    const float p = (1.0f + r) + r2 * ((0.5f + 1.66666667e-1f * r)
                    + r2 * ((4.16666667e-2f + 8.33333333e-3f * r) + r2 * 1.38888889e-3f));
    union { float f; int32_t i; } bits = {t}, scale;
    scale.i = (bits.i - 0x4B400000 + 127) << 23;
    return p * scale.f;
}

/* v [O, C] of one mask: v[oy·window + ox][cy·Wc + cx] = P[cy + oy - pad, cx + ox - pad] or 0. */
static void gather_neighbours(const float *p, const geometry *g, float *v)
{
    const int64_t cells = g->hc * g->wc;
    for (int64_t oy = 0; oy < g->window; ++oy)
        for (int64_t ox = 0; ox < g->window; ++ox) {
            float *row = v + (oy * g->window + ox) * cells;
            for (int64_t cy = 0; cy < g->hc; ++cy) {
                const int64_t iy = cy + oy - g->pad;
                for (int64_t cx = 0; cx < g->wc; ++cx) {
                    const int64_t ix = cx + ox - g->pad;
                    const int inside = iy >= 0 && iy < g->hp && ix >= 0 && ix < g->wp;
                    row[cy * g->wc + cx] = inside ? p[iy * g->wp + ix] : 0.0f;
                }
            }
        }
}

/* The adjoint of gather_neighbours: dP = Σ over the places each parameter was copied to. */
static void fold_neighbours(const float *dv, const geometry *g, float *dp)
{
    const int64_t cells = g->hc * g->wc;
    memset(dp, 0, g->hp * g->wp * sizeof(float));
    for (int64_t oy = 0; oy < g->window; ++oy)
        for (int64_t ox = 0; ox < g->window; ++ox) {
            const float *row = dv + (oy * g->window + ox) * cells;
            for (int64_t cy = 0; cy < g->hc; ++cy) {
                const int64_t iy = cy + oy - g->pad;
                if (iy < 0 || iy >= g->hp)
                    continue;
                for (int64_t cx = 0; cx < g->wc; ++cx) {
                    const int64_t ix = cx + ox - g->pad;
                    if (ix >= 0 && ix < g->wp)
                        dp[iy * g->wp + ix] += row[cy * g->wc + cx];
                }
            }
        }
}

/* Cell rows [*y0, *y1) whose neighbour at window row oy lies on the grid (others see zeros). */
static void valid_rows(const geometry *g, int64_t oy, int64_t *y0, int64_t *y1)
{
    *y0 = g->pad - oy > 0 ? g->pad - oy : 0;
    *y1 = g->hp + g->pad - oy < g->hc ? g->hp + g->pad - oy : g->hc;
}

int smooth_max_forward(const float *params, const float *table, float *out, float *norm, int64_t masks,
                       int64_t hp, int64_t wp, int64_t pad, int64_t window, int64_t hc, int64_t wc,
                       int64_t phases, float coldness)
{
    const geometry g = {hp, wp, pad, window, hc, wc};
    const int64_t offsets = window * window, cells = hc * wc;
    const float inv_coldness = 1.0f / coldness;
    float *v = malloc((offsets + 1) * cells * sizeof(float));
    if (!v)
        return -1;
    /* A neighbour off the grid has f = 0, e = 1: it adds 1 to the normaliser and 0 to the sum.
     * Whole rows of them are skipped below and counted here instead. */
    float *skipped = v + offsets * cells;
    for (int64_t j = 0; j < cells; ++j)
        skipped[j] = 0.0f;
    for (int64_t oy = 0; oy < window; ++oy) {
        int64_t y0, y1;
        valid_rows(&g, oy, &y0, &y1);
        for (int64_t j = 0; j < cells; ++j)
            if (j < y0 * wc || j >= y1 * wc)
                skipped[j] += (float)window;
    }
    for (int64_t k = 0; k < masks; ++k) {
        gather_neighbours(params + k * hp * wp, &g, v);
        for (int64_t s = 0; s < phases; ++s) {
            float *num = out + (k * phases + s) * cells;
            float *den = norm + (k * phases + s) * cells;
            memset(num, 0, cells * sizeof(float));
            memcpy(den, skipped, cells * sizeof(float));
            for (int64_t oy = 0; oy < window; ++oy) {
                int64_t y0, y1;
                valid_rows(&g, oy, &y0, &y1);
                for (int64_t ox = 0; ox < window; ++ox) {
                    const int64_t o = oy * window + ox;
                    const float w = coldness * table[o * phases + s];
                    const float *vo = v + o * cells;
#pragma omp simd
                    for (int64_t j = y0 * wc; j < y1 * wc; ++j) {
                        const float f = w * vo[j];
                        const float e = exp_f32(f);
                        den[j] += e;
                        num[j] += f * e;
                    }
                }
            }
#pragma omp simd
            for (int64_t j = 0; j < cells; ++j)
                num[j] = num[j] / den[j] * inv_coldness;
        }
    }
    free(v);
    return 0;
}

int smooth_max_backward(const float *params, const float *table, const float *a, const float *b, float *grad,
                        int64_t masks, int64_t hp, int64_t wp, int64_t pad, int64_t window, int64_t hc,
                        int64_t wc, int64_t phases, float coldness)
{
    const geometry g = {hp, wp, pad, window, hc, wc};
    const int64_t offsets = window * window, cells = hc * wc;
    float *v = malloc(2 * offsets * cells * sizeof(float));
    if (!v)
        return -1;
    float *dv = v + offsets * cells;
    for (int64_t k = 0; k < masks; ++k) {
        gather_neighbours(params + k * hp * wp, &g, v);
        const float *ak = a + k * phases * cells;
        const float *bk = b + k * phases * cells;
        for (int64_t oy = 0; oy < window; ++oy) {
            int64_t y0, y1;
            valid_rows(&g, oy, &y0, &y1);
            /* fold_neighbours reads only the rows on the grid: the others are not computed. */
            for (int64_t ox = 0; ox < window; ++ox) {
                const int64_t o = oy * window + ox;
                const float *vo = v + o * cells;
                float *acc = dv + o * cells;
                memset(acc, 0, cells * sizeof(float));
                for (int64_t s = 0; s < phases; ++s) {
                    const float w = table[o * phases + s];
                    const float cw = coldness * w;
                    const float *as = ak + s * cells;
                    const float *bs = bk + s * cells;
#pragma omp simd
                    for (int64_t j = y0 * wc; j < y1 * wc; ++j) {
                        const float f = cw * vo[j];
                        acc[j] += w * exp_f32(f) * (as[j] + bs[j] * f);
                    }
                }
            }
        }
        fold_neighbours(dv, &g, grad + k * hp * wp);
    }
    free(v);
    return 0;
}


/* Pyramid blend of perturbation.py: pyramid [B, L, Ch, P] (P pixels), masks [B, K, P],
 * out [B, K, Ch, P]. Mask value m selects level x = m·(L-1) between l0 = floor(x) (clamped to
 * [0, L-2]) and l1 = l0 + 1: y = y0 + (x - l0)·(y1 - y0). At m = 1 that is the last segment's
 * slope, as at 1 - ulp: a mask of exactly 1 is not cut off from the reward's gradient.
 * Offsets are int32: one image's pyramid is far below 2^31 elements. */

/* Per pixel of one mask: the element offset of its lower level and the interpolation weight. */
static void blend_plan(const float *m, int64_t levels, int64_t level_stride, int64_t pixels,
                       int32_t *lower, float *frac)
{
    const float top = (float)(levels - 1);
#pragma omp simd
    for (int64_t p = 0; p < pixels; ++p) {
        const float x = m[p] * top;
        float lo = __builtin_floorf(x);
        lo = lo < 0.0f ? 0.0f : lo;
        lo = lo > top - 1.0f ? top - 1.0f : lo;
        frac[p] = x - lo;
        lower[p] = (int32_t)lo * (int32_t)level_stride + (int32_t)p;
    }
}

/* The forward (grad_out NULL: result = blended images [B, K, Ch, P]) or the backward
 * (result = dm [B, K, P] = (L-1)·Σ_c g·(y1 - y0); the levels are constants). */
static int blend(const float *pyramid, const float *masks, const float *grad_out, float *result, int64_t images,
                 int64_t per_image, int64_t levels, int64_t channels, int64_t pixels)
{
    const int64_t level_stride = channels * pixels;
    int32_t *lower = malloc(pixels * (sizeof(int32_t) + sizeof(float)));
    if (!lower)
        return -1;
    float *frac = (float *)(lower + pixels);
    for (int64_t bk = 0; bk < images * per_image; ++bk) {
        const float *pyr = pyramid + bk / per_image * levels * level_stride;
        blend_plan(masks + bk * pixels, levels, level_stride, pixels, lower, frac);
        float *dm = result + bk * pixels;
        if (grad_out)
            memset(dm, 0, pixels * sizeof(float));
        for (int64_t c = 0; c < channels; ++c) {
            const float *pc = pyr + c * pixels;
            if (grad_out) {
                const float *g = grad_out + (bk * channels + c) * pixels;
#pragma omp simd
                for (int64_t p = 0; p < pixels; ++p)
                    dm[p] += g[p] * (pc[lower[p] + level_stride] - pc[lower[p]]);
            } else {
                float *y = result + (bk * channels + c) * pixels;
#pragma omp simd
                for (int64_t p = 0; p < pixels; ++p) {
                    const float y0 = pc[lower[p]];
                    y[p] = y0 + frac[p] * (pc[lower[p] + level_stride] - y0);
                }
            }
        }
        if (grad_out) {
            const float top = (float)(levels - 1);
#pragma omp simd
            for (int64_t p = 0; p < pixels; ++p)
                dm[p] *= top;
        }
    }
    free(lower);
    return 0;
}

int perturb_forward(const float *pyramid, const float *masks, float *out, int64_t images, int64_t per_image,
                    int64_t levels, int64_t channels, int64_t pixels)
{
    return blend(pyramid, masks, NULL, out, images, per_image, levels, channels, pixels);
}

int perturb_backward(const float *pyramid, const float *masks, const float *grad_out, float *grad_masks,
                     int64_t images, int64_t per_image, int64_t levels, int64_t channels, int64_t pixels)
{
    return blend(pyramid, masks, grad_out, grad_masks, images, per_image, levels, channels, pixels);
}
