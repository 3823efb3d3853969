"""Heatmaps: soft-argmax, confidences, heatmap <-> crop pixel coordinates, Gaussian targets.

Pixel convention: integer coordinates are pixel centres. A heatmap cell ``u`` at ``stride`` s
covers crop pixels ``[s u - 0.5, s u + s - 0.5]``, so its centre is crop pixel
``s u + (s - 1) / 2`` (:func:`heatmap_to_crop`; inverse :func:`crop_to_heatmap`).

Choice of ``beta`` (softmax inverse temperature) for Gaussian targets of sigma 2 cells, measured on
64x64 heatmaps (mean / max error in crop pixels at stride 4, exact targets)::

    beta   10: 4.7 / 8.6 (background mass pulls to the centre)    beta  20: 0.17 / 0.25
    beta   15: 0.08 / 0.18                                        beta 100: 1.17 / 1.84 (argmax)

``beta = 20`` (default) keeps sub-pixel accuracy with a margin against background noise; the
learnable-triangulation value 100 is a hard argmax on such targets (quantised to the cell grid),
which costs ~1 crop pixel, i.e. centimetres to decimetres of depth with a short stereo baseline.

Flip test (:func:`flip_crop_inputs`, :func:`unflip_heatmaps`): mirroring a crop of width ``W = s w``
maps crop pixel ``x`` to ``W - 1 - x`` (``A_flip`` of :mod:`.crops` / ``training.augment``), and
with cell centres at ``s u + (s - 1) / 2`` that is exactly cell ``u -> w - 1 - u``:
``s (w - 1 - u) + (s - 1) / 2 = W - 1 - (s u + (s - 1) / 2)``. So the width axis of a mirrored
crop's heatmaps is simply reversed, with no shift. (The one-cell shift of the Simple Baselines
reference code, ``output_flipped[..., 1:] = output_flipped[..., :-1]``, makes up for its targets
being centred on pixel ``s u`` rather than on the cell centre; with this module's convention it
would move every joint by ``s`` crop pixels, which the tests check.)

Decoding (:func:`decode_heatmaps`, the estimator setting ``heatmap_decoding``): ``"global"`` is
:func:`soft_argmax` over the whole map; ``"local"`` (:func:`local_soft_argmax`, the estimator's
default) is a mean shift started at the map's maximum, so that a map with two modes (a left/right
limb confusion, two views that disagree) or background mass gives the stronger mode instead of a
point between them. On ideal Gaussians both keep sub-pixel accuracy (the local one is exact); on
the shipped networks' outputs ``"local"`` cut the 2D error and MPJPE (measured in docs/models.md,
pipeline step 3). Training keeps :func:`soft_argmax`.
"""

from __future__ import annotations

import torch

from stereo_pose3d.models.config import HEATMAP_DECODINGS

# local_soft_argmax: Gaussian window of this many cells (the targets have sigma 2), and mean-shift
# steps. On a Gaussian of sigma t each step shrinks the error by t^2 / (t^2 + sigma^2): 0.2 for
# t = 2, so a few steps from the maximum cell (at most 0.71 cells off) would do; background mass
# under the window and broader peaks slow it down, hence 10 (the shipped networks' outputs: the
# median move from step 10 to step 50 is < 0.001 cells; the evaluation is the same with 5 to 50).
LOCAL_SIGMA = 4.0
LOCAL_ITERATIONS = 10


def heatmap_to_crop(uv: torch.Tensor, stride: float) -> torch.Tensor:
    """Heatmap cell coordinates ``(..., 2)`` -> crop pixels."""
    return uv * stride + (stride - 1) / 2


def crop_to_heatmap(xy: torch.Tensor, stride: float) -> torch.Tensor:
    """Crop pixels ``(..., 2)`` -> heatmap cell coordinates."""
    return (xy - (stride - 1) / 2) / stride


def flip_crop_inputs(
    images: torch.Tensor, P: torch.Tensor, swap_views: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontally mirrored crops and their cameras, for flip test.

    Args:
        images: ``(B, V, C, H, W)`` crops.
        P: ``(B, V, 3, 4)`` their crop-adjusted projections.
        swap_views: reverse the view axis (a stereo pair's two views swap).

    Returns:
        ``images[..., ::-1]`` and ``P' = A_flip P S`` with ``A_flip = [[-1, 0, W - 1], [0, 1, 0],
        [0, 0, 1]]`` and ``S = diag(-1, 1, 1, 1)``: the mirrored scene (``X' = S X``) seen by
        proper cameras, ``project(P', S X) = A_flip project(P, X)`` (the training flip of
        ``training.augment``). In the mirrored scene a stereo pair's right camera is on the left
        of the other one, so ``swap_views`` makes view 0 the left camera again, as training's
        ``flip_swap_views`` does (what CDRNet's fused code was trained on; the baseline ignores
        P and treats the views independently).
    """
    W = images.shape[-1]
    images_f = images.flip(-1)
    P_f = P.clone()
    P_f[..., 0, :] = (W - 1) * P[..., 2, :] - P[..., 0, :]
    P_f[..., :, 0] = -P_f[..., :, 0]
    if swap_views:
        images_f, P_f = images_f.flip(1), P_f.flip(1)
    return images_f, P_f


def unflip_heatmaps(
    heatmaps: torch.Tensor, permutation: tuple[int, ...] | list[int], swap_views: bool = True
) -> torch.Tensor:
    """Heatmaps ``(B, V, J, h, w)`` of :func:`flip_crop_inputs`' mirrored crops -> heatmaps in the
    original crops: views swapped back (``swap_views``), the width axis reversed (exact, no shift:
    see the module docstring) and the joints permuted, channel ``j`` <- channel
    ``permutation[j]`` (``Skeleton.flip_permutation``: the mirror image of a left wrist is a right
    wrist)."""
    if swap_views:
        heatmaps = heatmaps.flip(1)
    index = torch.as_tensor(list(permutation), dtype=torch.long, device=heatmaps.device)
    return heatmaps.flip(-1).index_select(-3, index)


def soft_argmax(heatmaps: torch.Tensor, beta: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable 2D argmax and confidence of heatmaps.

    Args:
        heatmaps: ``(..., h, w)``; trained to be Gaussians of peak 1 on the joint
            (:func:`gaussian_heatmaps`).
        beta: inverse temperature of the spatial softmax (heatmap values are ~[0, 1]).

    Returns:
        ``uv (..., 2)`` expected (x, y) in heatmap cells under ``softmax(beta * heatmap)``, and
        ``confidence (...)`` = the heatmap's maximum clamped to [0, 1]. Computed in float32.
    """
    heatmaps = heatmaps.float()
    h, w = heatmaps.shape[-2:]
    prob = torch.softmax(heatmaps.flatten(-2) * beta, dim=-1).unflatten(-1, (h, w))
    xs = torch.arange(w, dtype=prob.dtype, device=prob.device)
    ys = torch.arange(h, dtype=prob.dtype, device=prob.device)
    u = (prob.sum(-2) * xs).sum(-1)
    v = (prob.sum(-1) * ys).sum(-1)
    confidence = heatmaps.flatten(-2).amax(-1).clamp(0.0, 1.0)
    return torch.stack([u, v], dim=-1), confidence


def local_soft_argmax(
    heatmaps: torch.Tensor,
    beta: float = 20.0,
    sigma: float = LOCAL_SIGMA,
    iterations: int = LOCAL_ITERATIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """2D position of a heatmap's strongest mode, with sub-cell accuracy, and its confidence.

    Mean shift: start at the maximum cell ``c``; ``iterations`` times, ``c`` <- the mean of the
    cells weighted by ``max(heatmap, 0) * exp(-|x - c|^2 / (2 sigma^2))``. It converges to the
    mode (of the heatmap smoothed by the window) nearest to the maximum, so a second mode or
    background mass farther than a few ``sigma`` does not pull the result, as it does the
    global :func:`soft_argmax`'s. Exact on a Gaussian away from the map's border (any sub-cell
    centre, to float tolerance).

    Args:
        heatmaps: ``(..., h, w)``, as :func:`soft_argmax`.
        beta: only for maps with no positive value, which get :func:`soft_argmax`'s answer.
        sigma: window standard deviation in cells.
        iterations: mean-shift steps.

    Returns:
        ``uv (..., 2)`` (x, y) in heatmap cells and ``confidence (...)`` as :func:`soft_argmax`
        (the maximum clamped to [0, 1]). Computed in float32, also under autocast; NaN maps
        give NaN.
    """
    # float32 throughout: under autocast the matrix products below would run in bf16/fp16.
    with torch.autocast(heatmaps.device.type, enabled=False):
        return _local_soft_argmax(heatmaps.float(), beta, sigma, iterations)


def _local_soft_argmax(
    heatmaps: torch.Tensor, beta: float, sigma: float, iterations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = heatmaps.shape[-2:]
    flat = heatmaps.flatten(-2)
    peak, index = flat.max(-1)
    xs = torch.arange(w, dtype=heatmaps.dtype, device=heatmaps.device)
    ys = torch.arange(h, dtype=heatmaps.dtype, device=heatmaps.device)
    u = (index % w).to(heatmaps.dtype)
    v = torch.div(index, w, rounding_mode="floor").to(heatmaps.dtype)
    weights = heatmaps.clamp_min(0.0)
    for _ in range(iterations):
        kx = torch.exp(-((xs - u.unsqueeze(-1)) ** 2) / (2 * sigma**2))  # (..., w)
        ky = torch.exp(-((ys - v.unsqueeze(-1)) ** 2) / (2 * sigma**2))  # (..., h)
        # The window is separable: column sums weighted by ky, row sums weighted by kx.
        col = (ky.unsqueeze(-2) @ weights).squeeze(-2) * kx  # (..., w)
        row = (weights @ kx.unsqueeze(-1)).squeeze(-1) * ky  # (..., h)
        mass = col.sum(-1)
        keep = mass == 0  # nothing positive under the window: stay
        safe = torch.where(keep, torch.ones_like(mass), mass)
        u = torch.where(keep, u, (col * xs).sum(-1) / safe)
        v = torch.where(keep, v, (row * ys).sum(-1) / safe)
    uv = torch.stack([u, v], dim=-1)
    no_signal = (peak <= 0).unsqueeze(-1)  # (no `if any()`: that would sync a GPU)
    uv = torch.where(no_signal, soft_argmax(heatmaps, beta)[0], uv)
    return uv, peak.clamp(0.0, 1.0)


def decode_heatmaps(
    heatmaps: torch.Tensor, beta: float = 20.0, decoding: str = "global"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``uv (..., 2)`` cells and ``confidence (...)`` of heatmaps ``(..., h, w)`` by
    ``decoding``: ``"global"`` (:func:`soft_argmax`) or ``"local"`` (:func:`local_soft_argmax`);
    ValueError otherwise. The confidence is the same for both."""
    if decoding == "global":
        return soft_argmax(heatmaps, beta)
    if decoding == "local":
        return local_soft_argmax(heatmaps, beta)
    raise ValueError(f"heatmap decoding must be one of {list(HEATMAP_DECODINGS)}, got {decoding!r}")


def gaussian_heatmaps(
    points: torch.Tensor,
    visible: torch.Tensor | None,
    size: tuple[int, int],
    stride: float,
    sigma: float = 2.0,
) -> torch.Tensor:
    """Training targets: a Gaussian of peak 1 at each joint (Simple Baselines style).

    Args:
        points: ``(..., J, 2)`` joints in crop pixels.
        visible: ``(..., J)`` bool, or None; invisible joints get an all-zero map.
        size: heatmap ``(w, h)``.
        stride: crop pixels per heatmap cell.
        sigma: standard deviation in heatmap cells.

    Returns:
        ``(..., J, h, w)`` float32 targets.
    """
    w, h = size
    uv = crop_to_heatmap(points.float(), stride)
    xs = torch.arange(w, dtype=torch.float32, device=points.device)
    ys = torch.arange(h, dtype=torch.float32, device=points.device)
    gx = torch.exp(-((xs - uv[..., 0:1]) ** 2) / (2 * sigma**2))  # (..., J, w)
    gy = torch.exp(-((ys - uv[..., 1:2]) ** 2) / (2 * sigma**2))  # (..., J, h)
    maps = gy.unsqueeze(-1) * gx.unsqueeze(-2)
    if visible is not None:
        maps = maps * visible.to(maps.dtype)[..., None, None]
    return maps
