"""CPU rasterization kernels compiled by numba: per-pixel intersection lists, forward and backward passes.

The same algorithm as ``cpu.py`` (and gsplat), written as loops that numba compiles:

1. ``bin_pairs``: each camera's Gaussians are visited front to back; every pixel of a Gaussian's footprint box
   where its alpha reaches 1/255 gets the Gaussian appended to its list (a two-pass counting sort, so each list
   is in depth order). Lists are stored CSR-style: ``offsets [C*H*W + 1]``, ``gauss [P]``.
2. ``composite_forward``: front-to-back alpha blending per pixel with gsplat's early stop; the transmittance in
   front of every used pair is saved for the backward pass (``pair_T``, -1 for unused pairs).
3. ``composite_backward``: back-to-front per pixel. With ``w_i = alpha_i T_i`` and ``S = sum_{j>i} f_j w_j``,
   ``dC/df_i = w_i``, ``dC/dalpha_i = f_i T_i - S / (1 - alpha_i)``; then through
   ``alpha = min(0.999, o exp(-sigma))`` and ``sigma = 1/2 (a dx^2 + c dy^2) + b dx dy`` to the Gaussian's
   opacity, conic and 2D mean.

Cameras run in parallel (``prange``); within a camera the loops are serial, so gradient sums are
deterministic and free of races (every camera writes only its own ``[c]`` slice).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .projection import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_MIN


@nb.njit(cache=True, inline="always")
def _sigma(means2d, conics, c, g, px, py):
    dx = means2d[c, g, 0] - (px + 0.5)
    dy = means2d[c, g, 1] - (py + 0.5)
    a, b, cc = conics[c, g, 0], conics[c, g, 1], conics[c, g, 2]
    return 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy, dx, dy


@nb.njit(cache=True, inline="always")
def _footprint(means2d, radii, c, g, width, height):
    """Pixel index ranges (inclusive) whose centres lie inside the Gaussian's footprint box, clipped."""
    x0 = max(0, int(math.ceil(means2d[c, g, 0] - radii[c, g, 0] - 0.5)))
    x1 = min(width - 1, int(math.floor(means2d[c, g, 0] + radii[c, g, 0] - 0.5)))
    y0 = max(0, int(math.ceil(means2d[c, g, 1] - radii[c, g, 1] - 0.5)))
    y1 = min(height - 1, int(math.floor(means2d[c, g, 1] + radii[c, g, 1] - 0.5)))
    return x0, x1, y0, y1


@nb.njit(cache=True, inline="always")
def _hits(means2d, conics, opacities, c, g, px, py):
    """Whether the Gaussian's alpha at the pixel reaches the 1/255 cut-off (the same test compositing applies)."""
    sigma, dx, dy = _sigma(means2d, conics, c, g, px, py)
    return sigma >= 0 and opacities[c, g] * math.exp(-sigma) >= ALPHA_THRESHOLD


@nb.njit(cache=True, parallel=True)
def bin_pairs(means2d, conics, opacities, radii, order, n_valid, width, height):
    """order: ``[C, N]`` Gaussian ids per camera sorted front to back, the first ``n_valid[c]`` visible."""
    C = means2d.shape[0]
    hw = width * height
    counts = np.zeros(C * hw + 1, dtype=np.int64)
    for c in nb.prange(C):
        for k in range(n_valid[c]):
            g = order[c, k]
            x0, x1, y0, y1 = _footprint(means2d, radii, c, g, width, height)
            for py in range(y0, y1 + 1):
                for px in range(x0, x1 + 1):
                    if _hits(means2d, conics, opacities, c, g, px, py):
                        counts[c * hw + py * width + px + 1] += 1
    offsets = np.cumsum(counts)
    gauss = np.empty(offsets[-1], dtype=np.int32)
    for c in nb.prange(C):
        fill = offsets[c * hw : (c + 1) * hw].copy()
        for k in range(n_valid[c]):
            g = order[c, k]
            x0, x1, y0, y1 = _footprint(means2d, radii, c, g, width, height)
            for py in range(y0, y1 + 1):
                for px in range(x0, x1 + 1):
                    if _hits(means2d, conics, opacities, c, g, px, py):
                        p = py * width + px
                        gauss[fill[p]] = g
                        fill[p] += 1
    return offsets, gauss


@nb.njit(cache=True, parallel=True)
def composite_forward(offsets, gauss, means2d, conics, opacities, feats, width, height):
    """Returns accumulated features ``[C*H*W, F]``, alpha ``[C*H*W]``, ``pair_T [P]`` and per-pixel end index."""
    C, _, F = feats.shape
    hw = width * height
    out = np.zeros((C * hw, F), dtype=feats.dtype)
    out_alpha = np.zeros(C * hw, dtype=feats.dtype)
    pair_T = np.full(gauss.shape[0], -1.0, dtype=feats.dtype)
    end = offsets[1:].copy()
    for c in nb.prange(C):
        for p in range(hw):
            pix = c * hw + p
            py, px = p // width, p % width
            T = 1.0
            acc = 0.0
            for k in range(offsets[pix], offsets[pix + 1]):
                g = gauss[k]
                sigma, dx, dy = _sigma(means2d, conics, c, g, px, py)
                if sigma < 0:
                    continue
                alpha = min(MAX_ALPHA, opacities[c, g] * math.exp(-sigma))
                if alpha < ALPHA_THRESHOLD:
                    continue
                next_T = T * (1.0 - alpha)
                if next_T <= TRANSMITTANCE_MIN:
                    end[pix] = k
                    break
                w = alpha * T
                for f in range(F):
                    out[pix, f] += w * feats[c, g, f]
                acc += w
                pair_T[k] = T
                T = next_T
            out_alpha[pix] = acc
    return out, out_alpha, pair_T, end


@nb.njit(cache=True, parallel=True)
def composite_backward(offsets, gauss, end, pair_T, means2d, conics, opacities, feats, grad_out, grad_alpha, width, height):
    """Gradients w.r.t. means2d ``[C,N,2]``, conics ``[C,N,3]``, opacities ``[C,N]`` and feats ``[C,N,F]``."""
    C, N, F = feats.shape
    hw = width * height
    d_means2d = np.zeros(means2d.shape, dtype=means2d.dtype)
    d_conics = np.zeros(conics.shape, dtype=conics.dtype)
    d_opacities = np.zeros(opacities.shape, dtype=opacities.dtype)
    d_feats = np.zeros(feats.shape, dtype=feats.dtype)
    for c in nb.prange(C):
        S = np.zeros(F, dtype=np.float64)
        for p in range(hw):
            pix = c * hw + p
            py, px = p // width, p % width
            S[:] = 0.0
            S_alpha = 0.0
            ga = grad_alpha[pix]
            for k in range(end[pix] - 1, offsets[pix] - 1, -1):
                T = pair_T[k]
                if T < 0:
                    continue
                g = gauss[k]
                sigma, dx, dy = _sigma(means2d, conics, c, g, px, py)
                vis = math.exp(-sigma)
                raw = opacities[c, g] * vis
                alpha = min(MAX_ALPHA, raw)
                w = alpha * T
                inv = 1.0 / (1.0 - alpha)
                d_alpha = ga * (T - S_alpha * inv)
                for f in range(F):
                    gf = grad_out[pix, f]
                    d_feats[c, g, f] += w * gf
                    d_alpha += gf * (feats[c, g, f] * T - S[f] * inv)
                    S[f] += feats[c, g, f] * w
                S_alpha += w
                if raw <= MAX_ALPHA:  # the clamp passes no gradient where it binds
                    d_opacities[c, g] += vis * d_alpha
                    d_sigma = -raw * d_alpha
                    a, b, cc = conics[c, g, 0], conics[c, g, 1], conics[c, g, 2]
                    d_means2d[c, g, 0] += d_sigma * (a * dx + b * dy)
                    d_means2d[c, g, 1] += d_sigma * (cc * dy + b * dx)
                    d_conics[c, g, 0] += d_sigma * 0.5 * dx * dx
                    d_conics[c, g, 1] += d_sigma * dx * dy
                    d_conics[c, g, 2] += d_sigma * 0.5 * dy * dy
    return d_means2d, d_conics, d_opacities, d_feats
