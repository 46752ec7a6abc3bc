"""Evaluation of synthetic patches: FID/IS/KID on Inception features, automated expert criteria of
mask fidelity, and checks of the mask model (NASDM, Shrivastava & Fletcher, 2023, Table 1 and Sec. 4.5).

Fidelity (which needs the bundled hovernet) and evaluate load from their own modules:
``from nasdm_aug.metrics.fidelity import FidelityAccumulator``.
"""

from nasdm_aug.metrics.generative import (
    cluster_probabilities,
    feature_cache_path,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    store_features,
)
from nasdm_aug.metrics.inception import InceptionExtractor, packaged_inception_path, resolve_inception_path
from nasdm_aug.metrics.mask_checks import mask_realism, nuclei_statistics, type_control, types_present

__all__ = [
    "InceptionExtractor", "packaged_inception_path", "resolve_inception_path",
    "frechet_distance", "kernel_inception_distance", "inception_score", "cluster_probabilities",
    "feature_cache_path", "store_features",
    "types_present", "type_control", "nuclei_statistics", "mask_realism",
]
