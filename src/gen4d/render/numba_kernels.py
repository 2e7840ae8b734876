"""CPU rasterization kernels compiled by numba: projection, per-pixel intersection lists, forward and backward passes.

The same algorithm as ``projection.py`` and ``cpu.py`` (and gsplat), written as loops that numba compiles:

0. ``project_forward`` / ``project_backward``: each Gaussian's 2D mean, conic, depth and (compensated) opacity in
   every camera, and the chain rule back to its mean, quaternion, scale and opacity (one Gaussian per iteration of
   the parallel loop, its cameras in order).
1. ``bin_pairs``: each camera's Gaussians are visited front to back; every pixel of a Gaussian's footprint box
   where its alpha reaches 1/255 gets the Gaussian appended to its list (a two-pass counting sort, so each list
   is in depth order). Lists are stored CSR-style: ``offsets [C*H*W + 1]``, ``gauss [P]``.
2. ``composite_forward``: front-to-back alpha blending per pixel with gsplat's early stop; the transmittance in
   front of every used pair is saved for the backward pass (``pair_T``, -1 for unused pairs).
3. ``composite_backward``: back-to-front per pixel. With ``w_i = alpha_i T_i`` and ``S = sum_{j>i} f_j w_j``,
   ``dC/df_i = w_i``, ``dC/dalpha_i = f_i T_i - S / (1 - alpha_i)``; then through
   ``alpha = min(0.999, o exp(-sigma))`` and ``sigma = 1/2 (a dx^2 + c dy^2) + b dx dy`` to the Gaussian's
   opacity, conic and 2D mean.

Binning and compositing run cameras in parallel (``prange``); within a camera the loops are serial, so gradient
sums are deterministic and free of races (every camera writes only its own ``[c]`` slice). The projection runs
Gaussians in parallel, for the same reason.
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


# ------------------------------------------------------------------------------------------------- projection
# The rules of ``projection.project_gaussians`` (its module docstring), one Gaussian and camera per iteration; the
# backward pass is its chain rule written out. Inputs that all cameras share have a leading dimension of 1 and
# their gradients are summed over the cameras (each iteration of the parallel loop owns one Gaussian, so the sums
# are race-free and in a fixed order).


@nb.njit(cache=True, inline="always")
def _quat_rotmat(q0, q1, q2, q3, R):
    """Unit wxyz quaternion (from any non-zero one, as ``cameras.quat_to_rotmat``); its rotation matrix into ``R``."""
    norm = max(math.sqrt(q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3), 1e-12)
    w, x, y, z = q0 / norm, q1 / norm, q2 / norm, q3 / norm
    R[0, 0], R[0, 1], R[0, 2] = 1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y)
    R[1, 0], R[1, 1], R[1, 2] = 2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x)
    R[2, 0], R[2, 1], R[2, 2] = 2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y)
    return norm, w, x, y, z


@nb.njit(cache=True, inline="always")
def _project_one(means, quats, scales, viewmats, Ks, c, n, width, height, near, far, p, T, R, M, A):
    """One Gaussian in one camera: its camera-space point ``p``, ``T = J W`` (2 x 3), ``R = R_q``, ``M = R_q S`` and
    ``A = J W R_q S`` into the given scratch arrays; returns the scalars the passes need."""
    cm, cq, cs = min(c, means.shape[0] - 1), min(c, quats.shape[0] - 1), min(c, scales.shape[0] - 1)
    for i in range(3):
        p[i] = (viewmats[c, i, 0] * means[cm, n, 0] + viewmats[c, i, 1] * means[cm, n, 1]
                + viewmats[c, i, 2] * means[cm, n, 2] + viewmats[c, i, 3])
    in_depth = near < p[2] < far
    zs = p[2] if in_depth else 1.0
    fx, fy, cx, cy = Ks[c, 0, 0], Ks[c, 1, 1], Ks[c, 0, 2], Ks[c, 1, 2]
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * 0.5 * width / fx, cx / fx + 0.3 * 0.5 * width / fx
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * 0.5 * height / fy, cy / fy + 0.3 * 0.5 * height / fy
    u, v = p[0] / zs, p[1] / zs
    uc, vc = min(lim_xp, max(-lim_xn, u)), min(lim_yp, max(-lim_yn, v))
    for i in range(3):
        T[0, i] = fx / zs * (viewmats[c, 0, i] - uc * viewmats[c, 2, i])
        T[1, i] = fy / zs * (viewmats[c, 1, i] - vc * viewmats[c, 2, i])
    norm, w, x, y, z = _quat_rotmat(quats[cq, n, 0], quats[cq, n, 1], quats[cq, n, 2], quats[cq, n, 3], R)
    for i in range(3):
        for j in range(3):
            M[i, j] = R[i, j] * scales[cs, n, j]
    for r in range(2):
        for j in range(3):
            A[r, j] = T[r, 0] * M[0, j] + T[r, 1] * M[1, j] + T[r, 2] * M[2, j]
    return in_depth, zs, u, v, uc, vc, lim_xp, lim_xn, lim_yp, lim_yn, norm, w, x, y, z


@nb.njit(cache=True, inline="always")
def _cov2d(A, eps2d):
    """``A A^T`` as (a0, b, c0) and its determinant, then with ``eps2d`` added to the diagonal (a, c) and its own."""
    a0 = A[0, 0] * A[0, 0] + A[0, 1] * A[0, 1] + A[0, 2] * A[0, 2]
    b = A[0, 0] * A[1, 0] + A[0, 1] * A[1, 1] + A[0, 2] * A[1, 2]
    c0 = A[1, 0] * A[1, 0] + A[1, 1] * A[1, 1] + A[1, 2] * A[1, 2]
    a, c = a0 + eps2d, c0 + eps2d
    return a0, b, c0, a0 * c0 - b * b, a, c, a * c - b * b


@nb.njit(cache=True, parallel=True)
def project_forward(means, quats, scales, opacities, viewmats, Ks, width, height, near, far, eps2d, antialiased, threshold, max_sigmas):
    C, N = viewmats.shape[0], max(means.shape[1], quats.shape[1])
    dtype = means.dtype
    means2d, conics = np.zeros((C, N, 2), dtype), np.zeros((C, N, 3), dtype)
    depths, opac = np.zeros((C, N), dtype), np.zeros((C, N), dtype)
    radii, valid = np.zeros((C, N, 2), np.int32), np.zeros((C, N), np.bool_)
    scratch = np.empty((N, 4, 3, 3))  # per Gaussian: p, T, R, M, A (no allocation inside the loop)
    for n in nb.prange(N):
        p, T, R, M, A = scratch[n, 0, 0], scratch[n, 0, 1:], scratch[n, 1], scratch[n, 2], scratch[n, 3, :2]
        for c in range(C):
            in_depth, zs, u, v, uc, vc, lxp, lxn, lyp, lyn, norm, w, x, y, z = _project_one(
                means, quats, scales, viewmats, Ks, c, n, width, height, near, far, p, T, R, M, A)
            a0, b, c0, det_orig, a, cc, det = _cov2d(A, eps2d)
            comp = math.sqrt(max(det_orig / det, 0.0)) if antialiased else 1.0
            mx, my = Ks[c, 0, 0] * u + Ks[c, 0, 2], Ks[c, 1, 1] * v + Ks[c, 1, 2]
            means2d[c, n, 0], means2d[c, n, 1] = mx, my
            conics[c, n, 0], conics[c, n, 1], conics[c, n, 2] = cc / det, -b / det, a / det
            depths[c, n] = zs
            o = opacities[min(c, opacities.shape[0] - 1), n] * comp
            opac[c, n] = o
            o = opac[c, n]  # the stored precision decides visibility, as in the PyTorch projection
            if o > threshold and det > 0:
                extent = min(math.sqrt(2.0 * math.log(max(o / threshold, 1.0))), max_sigmas)
                rx, ry = math.ceil(extent * math.sqrt(a)), math.ceil(extent * math.sqrt(cc))
                on_screen = (mx + rx > 0) and (mx - rx < width) and (my + ry > 0) and (my - ry < height)
                if in_depth and on_screen and rx > 0 and ry > 0:
                    valid[c, n] = True
                    radii[c, n, 0], radii[c, n, 1] = int(rx), int(ry)
    return means2d, conics, depths, opac, radii, valid


@nb.njit(cache=True, parallel=True)
def project_backward(means, quats, scales, opacities, viewmats, Ks, width, height, near, far, eps2d, antialiased,
                     g_means2d, g_conics, g_depths, g_opac):
    C, N = viewmats.shape[0], max(means.shape[1], quats.shape[1])
    gm, gq = np.zeros(means.shape, means.dtype), np.zeros(quats.shape, quats.dtype)
    gs, go = np.zeros(scales.shape, scales.dtype), np.zeros(opacities.shape, opacities.dtype)
    scratch = np.empty((N, 7, 3, 3))  # per Gaussian: p, T, R, M, A, and the gradients of A, T, R
    for n in nb.prange(N):
        p, T, R, M, A = scratch[n, 0, 0], scratch[n, 0, 1:], scratch[n, 1], scratch[n, 2], scratch[n, 3, :2]
        gA, gT, gR = scratch[n, 4, :2], scratch[n, 5, :2], scratch[n, 6]
        for c in range(C):
            if (g_means2d[c, n, 0] == 0 and g_means2d[c, n, 1] == 0 and g_conics[c, n, 0] == 0 and g_conics[c, n, 1] == 0
                    and g_conics[c, n, 2] == 0 and g_depths[c, n] == 0 and g_opac[c, n] == 0):
                continue
            in_depth, zs, u, v, uc, vc, lxp, lxn, lyp, lyn, norm, w, x, y, z = _project_one(
                means, quats, scales, viewmats, Ks, c, n, width, height, near, far, p, T, R, M, A)
            fx, fy = Ks[c, 0, 0], Ks[c, 1, 1]
            a0, b, c0, det_orig, a, cc, det = _cov2d(A, eps2d)
            co = min(c, opacities.shape[0] - 1)
            comp, g_ratio = 1.0, 0.0
            if antialiased:
                ratio = det_orig / det
                comp = math.sqrt(max(ratio, 0.0))
                if ratio > 0:  # the bounded derivative of projection._Compensation
                    g_ratio = g_opac[c, n] * opacities[co, n] * 0.5 / (comp + 1e-6)
            go[co, n] += g_opac[c, n] * comp
            # conics (cc / det, -b / det, a / det) and the compensation's ratio det_orig / det
            k0, k1, k2 = g_conics[c, n, 0], g_conics[c, n, 1], g_conics[c, n, 2]
            g_det = -(k0 * cc - k1 * b + k2 * a) / (det * det) - g_ratio * det_orig / (det * det)
            g_det_orig = g_ratio / det
            g_a = k2 / det + g_det * cc + g_det_orig * c0
            g_c = k0 / det + g_det * a + g_det_orig * a0
            g_b = -k1 / det - 2.0 * b * (g_det + g_det_orig)
            for j in range(3):
                gA[0, j] = 2.0 * g_a * A[0, j] + g_b * A[1, j]
                gA[1, j] = g_b * A[0, j] + 2.0 * g_c * A[1, j]
            gT[:] = 0.0
            cs = min(c, scales.shape[0] - 1)
            for i in range(3):
                for j in range(3):
                    gM = T[0, i] * gA[0, j] + T[1, i] * gA[1, j]
                    gT[0, i] += gA[0, j] * M[i, j]
                    gT[1, i] += gA[1, j] * M[i, j]
                    gs[cs, n, j] += gM * R[i, j]
                    gR[i, j] = gM * scales[cs, n, j]
            # rotation matrix -> unit quaternion -> the stored quaternion
            gw = 2.0 * (-z * gR[0, 1] + y * gR[0, 2] + z * gR[1, 0] - x * gR[1, 2] - y * gR[2, 0] + x * gR[2, 1])
            gx = 2.0 * (y * gR[0, 1] + z * gR[0, 2] + y * gR[1, 0] - 2.0 * x * gR[1, 1] - w * gR[1, 2]
                        + z * gR[2, 0] + w * gR[2, 1] - 2.0 * x * gR[2, 2])
            gy = 2.0 * (-2.0 * y * gR[0, 0] + x * gR[0, 1] + w * gR[0, 2] + x * gR[1, 0] + z * gR[1, 2]
                        - w * gR[2, 0] + z * gR[2, 1] - 2.0 * y * gR[2, 2])
            gz = 2.0 * (-2.0 * z * gR[0, 0] - w * gR[0, 1] + x * gR[0, 2] + w * gR[1, 0] - 2.0 * z * gR[1, 1]
                        + y * gR[1, 2] + x * gR[2, 0] + y * gR[2, 1])
            dot = w * gw + x * gx + y * gy + z * gz
            cq = min(c, quats.shape[0] - 1)
            gq[cq, n, 0] += (gw - w * dot) / norm
            gq[cq, n, 1] += (gx - x * dot) / norm
            gq[cq, n, 2] += (gy - y * dot) / norm
            gq[cq, n, 3] += (gz - z * dot) / norm
            # T rows: fx / zs * W0 - fx tx / zs^2 * W2 with tx = zs * uc (uc: u clamped), likewise for y
            g_zs = g_depths[c, n]
            g_u, g_v = 0.0, 0.0
            for r in range(2):
                f, cl = (fx, uc) if r == 0 else (fy, vc)
                g_tz, g_t = 0.0, 0.0
                for i in range(3):
                    g_tz += gT[r, i] * (-f / (zs * zs) * viewmats[c, r, i] + 2.0 * f * cl / (zs * zs) * viewmats[c, 2, i])
                    g_t += gT[r, i] * (-f / (zs * zs) * viewmats[c, 2, i])
                g_zs += g_tz + g_t * cl
                g_cl = g_t * zs
                if r == 0 and -lxn < u < lxp:
                    g_u += g_cl
                elif r == 1 and -lyn < v < lyp:
                    g_v += g_cl
            g_u += g_means2d[c, n, 0] * fx
            g_v += g_means2d[c, n, 1] * fy
            g_p0, g_p1 = g_u / zs, g_v / zs
            g_zs -= g_u * u / zs + g_v * v / zs
            g_p2 = g_zs if in_depth else 0.0
            cm = min(c, means.shape[0] - 1)
            for k in range(3):
                gm[cm, n, k] += viewmats[c, 0, k] * g_p0 + viewmats[c, 1, k] * g_p1 + viewmats[c, 2, k] * g_p2
    return gm, gq, gs, go
