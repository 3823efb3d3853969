"""PersonLocator: finds the (single) person in a letterboxed full frame.

A CenterNet-style single-person detector (Zhou et al., "Objects as Points", 2019) on a truncated
ResNet (default ResNet-18 up to ``layer3``, stride 16) and one stride-2 deconvolution, so it
predicts at stride 8 (32x24 cells for the default 256x192 input); 3.3M parameters.

Input: ``images (N, 3, H, W)`` normalised letterboxed full frames (one view per row; the
estimator runs both views of a pair in one batch), see :func:`stereo_pose3d.models.crops.letterbox`.

Output dict (all at stride ``s``, ``(h, w) = (H/s, W/s)``):

* ``centre (N, 1, h, w)`` logits of "the box centre is in this cell";
* ``offset (N, 2, h, w)`` sub-cell offset of the centre, in cells, from the cell centre;
* ``size (N, 2, h, w)`` ``log(box width / s)``, ``log(box height / s)``.

Decoding (:meth:`PersonLocator.decode`): the most likely cell ``(u, v)``; centre
``((u + dx) s + (s-1)/2, (v + dy) s + (s-1)/2)`` input pixels; size ``exp(size) * s``; score
``sigmoid(centre logit)`` at that cell. "No person" is ``score < threshold``.
:meth:`PersonLocator.decode_topk` decodes the ``k`` best local maxima (3x3 max-pool peaks, as
CenterNet) the same way; the estimator's ``locator_candidates`` uses them.

Training (:func:`locator_targets`, :func:`locator_loss`): targets from the ground-truth box in
locator input pixels (``dataset box`` mapped by the letterbox affine) and a "person present"
flag; the loss is CenterNet's penalty-reduced focal loss on a Gaussian centre heatmap (sigma =
box size / 6 in cells, at least 0.8) plus L1 on offset and log-size at the centre cell, for
images with a person. Images without a person (e.g. empty backgrounds) train the "no person"
answer: their centre target is all zeros.

Evaluation: :func:`box_recall` (IoU >= 0.5 and score >= threshold).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from stereo_pose3d.models.backbone import ResNetBackbone
from stereo_pose3d.models.heads import SimpleBaselinesHead


class PersonLocator(nn.Module):
    """Single-person box regressor on letterboxed full frames (see the module docstring)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.input_size = tuple(config["input_size"])  # (W, H)
        backbone = config["backbone"]
        self.backbone = ResNetBackbone(backbone["name"], backbone.get("stages", 3))
        head = config["head"]
        self.head = SimpleBaselinesHead(
            self.backbone.out_channels, 5, head["channels"], head["num_deconv"]
        )
        self.stride = self.backbone.stride // self.head.upsampling
        nn.init.constant_(self.head.final.bias[0], -2.19)  # CenterNet prior: p = 0.1
        nn.init.normal_(self.head.final.weight, std=0.01)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(self.backbone(images)).float()
        return {"centre": out[:, :1], "offset": out[:, 1:3], "size": out[:, 3:5]}

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Best box per image: ``boxes (N, 4)`` xyxy in locator input pixels, ``scores (N,)``."""
        centre = outputs["centre"][:, 0]
        best = centre.reshape(centre.shape[0], -1).argmax(dim=1)
        boxes, scores = self._decode_cells(outputs, best[:, None])
        return boxes[:, 0], scores[:, 0]

    def _decode_cells(
        self, outputs: dict[str, torch.Tensor], cells: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes ``(N, k, 4)`` xyxy in locator input pixels and scores ``(N, k)`` of the centre-map
        cells with flat indices ``cells (N, k)``: the cell centre plus its offset, its size."""
        centre = outputs["centre"][:, 0]
        N, _, w = centre.shape
        k = cells.shape[1]
        scores = torch.sigmoid(centre.reshape(N, -1).gather(1, cells))
        v, u = cells // w, cells % w
        idx = cells[:, None, :].expand(N, 2, k)
        offset = outputs["offset"].reshape(N, 2, -1).gather(2, idx)
        size = outputs["size"].reshape(N, 2, -1).gather(2, idx).clamp(-5, 5).exp()
        s = self.stride
        cx = (u + offset[:, 0]) * s + (s - 1) / 2
        cy = (v + offset[:, 1]) * s + (s - 1) / 2
        bw, bh = size[:, 0] * s, size[:, 1] * s
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=2)
        return boxes, scores

    def decode_topk(
        self, outputs: dict[str, torch.Tensor], k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best local maxima of the centre map per image, best first: ``boxes (N, k,
        4)`` xyxy in locator input pixels, ``scores (N, k)``.

        A cell is a local maximum when it equals the 3x3 max-pool of the centre logits around it
        (CenterNet's peak extraction, instead of box NMS); peaks are ranked by logit (ties: the
        lower flat index first, as ``argmax``) and each is decoded exactly as :meth:`decode`
        decodes its cell, so ``k = 1`` gives :meth:`decode`'s output. Ranks past the number of
        local maxima are NaN (box and score).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        centre = outputs["centre"][:, 0]
        N, h, w = centre.shape
        pooled = nn.functional.max_pool2d(centre[:, None], 3, stride=1, padding=1)[:, 0]
        peaks = torch.where(centre == pooled, centre, torch.full_like(centre, -torch.inf))
        order = torch.sort(peaks.reshape(N, -1), dim=1, descending=True, stable=True).indices
        best = order[:, : min(k, h * w)]  # (N, k')
        kk = best.shape[1]
        found = torch.isfinite(peaks.reshape(N, -1).gather(1, best))
        boxes, scores = self._decode_cells(outputs, best)
        boxes = torch.where(found[..., None], boxes, torch.nan)
        scores = torch.where(found, scores, torch.nan)
        if kk < k:
            boxes = torch.cat([boxes, boxes.new_full((N, k - kk, 4), torch.nan)], dim=1)
            scores = torch.cat([scores, scores.new_full((N, k - kk), torch.nan)], dim=1)
        return boxes, scores


def locator_targets(
    boxes: torch.Tensor,
    present: torch.Tensor,
    input_size: tuple[int, int],
    stride: int = 8,
) -> dict[str, torch.Tensor]:
    """Training targets for :class:`PersonLocator`.

    Args:
        boxes: ``(N, 4)`` xyxy ground-truth person boxes in locator input pixels.
        present: ``(N,)`` bool, False for images without a (sufficiently visible) person.
        input_size: locator input ``(W, H)``; ``stride`` the locator's output stride.

    Returns:
        dict ``centre (N, 1, h, w)`` Gaussian in [0, 1] (exactly 1 at the centre cell),
        ``index (N,)`` flat index of the centre cell, ``offset (N, 2)``, ``size (N, 2)``
        regression targets, ``present (N,)`` float mask.
    """
    W, H = input_size
    w, h = W // stride, H // stride
    boxes = boxes.float()
    centre = torch.stack([boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]], 1) / 2
    cell = (centre - (stride - 1) / 2) / stride
    u = cell[:, 0].round().clamp(0, w - 1)
    v = cell[:, 1].round().clamp(0, h - 1)
    bw = (boxes[:, 2] - boxes[:, 0]).clamp_min(1.0) / stride
    bh = (boxes[:, 3] - boxes[:, 1]).clamp_min(1.0) / stride
    sigma = (torch.minimum(bw, bh) / 6).clamp_min(0.8)
    xs = torch.arange(w, dtype=torch.float32, device=boxes.device)
    ys = torch.arange(h, dtype=torch.float32, device=boxes.device)
    gx = torch.exp(-((xs - u[:, None]) ** 2) / (2 * sigma[:, None] ** 2))
    gy = torch.exp(-((ys - v[:, None]) ** 2) / (2 * sigma[:, None] ** 2))
    present_f = present.float()
    heat = gy[:, :, None] * gx[:, None, :] * present_f[:, None, None]
    return {
        "centre": heat[:, None],
        "index": (v * w + u).long(),
        "offset": torch.stack([cell[:, 0] - u, cell[:, 1] - v], 1),
        "size": torch.stack([bw.log(), bh.log()], 1),
        "present": present_f,
    }


def locator_loss(
    outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], box_weight: float = 1.0
) -> dict[str, torch.Tensor]:
    """CenterNet focal loss on the centre map + L1 on offset and log-size at the centre cell.

    Returns dict ``loss`` (total), ``centre``, ``box`` (scalars).
    """
    logits = outputs["centre"].float()
    gt = targets["centre"]
    prob = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = gt.eq(1.0).float()
    pos_loss = -(torch.log(prob) * (1 - prob) ** 2 * positive).sum()
    neg_loss = -(torch.log(1 - prob) * prob**2 * (1 - gt) ** 4 * (1 - positive)).sum()
    centre = (pos_loss + neg_loss) / positive.sum().clamp_min(1.0)
    N = logits.shape[0]
    idx = targets["index"][:, None, None].expand(N, 2, 1)
    offset = outputs["offset"].float().reshape(N, 2, -1).gather(2, idx)[..., 0]
    size = outputs["size"].float().reshape(N, 2, -1).gather(2, idx)[..., 0]
    mask = targets["present"][:, None]
    l1 = (offset - targets["offset"]).abs() + (size - targets["size"]).abs()
    box = (l1 * mask).sum() / (2 * mask.sum()).clamp_min(1.0)
    return {"loss": centre + box_weight * box, "centre": centre, "box": box}


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching rows of xyxy boxes ``(N, 4)`` -> ``(N,)``."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp_min(0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp_min(0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp_min(0).prod(1)
    return inter / (area_a + area_b - inter).clamp_min(1e-9)


def box_recall(
    pred_boxes: torch.Tensor,
    scores: torch.Tensor,
    gt_boxes: torch.Tensor,
    score_threshold: float = 0.3,
    iou_threshold: float = 0.5,
) -> float:
    """Fraction of ground-truth boxes ``(N, 4)`` found: score >= threshold and IoU >= 0.5."""
    if len(gt_boxes) == 0:
        return float("nan")
    hit = (scores >= score_threshold) & (box_iou(pred_boxes, gt_boxes) >= iou_threshold)
    return hit.float().mean().item()
