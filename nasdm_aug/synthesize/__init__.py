"""Synthesis of patch banks (NASDM 4.3): one synthetic patch per real mask (S1 / S2), or patches
for generated masks; resumable after any kill and sharded over torchrun ranks.

Work is cut into chunks of ``batch_size`` patches. Each finished chunk is a small PatchStore in
``OUT.parts/`` (written atomically), so a rerun with the same arguments skips it; ranks take every
``world_size``-th chunk. When all chunks exist, rank 0 merges them in order into ``OUT`` and
removes the parts. Patch i draws all its noise from (seed, i), so the bank does not depend on
the batch size, on kills, or on the number of ranks.

The package: ``config`` (:class:`SynthesizeConfig`, :class:`RecombineOptions`), ``jobs`` (the masks
a bank starts from), ``options`` (the command line's options as one :class:`SynthesisRequest`),
``records`` (what a bank and an interrupted run record, and when a rerun reuses them) and ``run``
(:func:`synthesize`).
"""

from nasdm_aug.synthesize.config import RecombineOptions, Source, SynthesizeConfig, model_recommendations
from nasdm_aug.synthesize.options import SynthesisRequest, synthesis_request
from nasdm_aug.synthesize.records import finished_bank_problem
from nasdm_aug.synthesize.jobs import combination_presence, plan_jobs
from nasdm_aug.synthesize.run import synthesize, write_preview

__all__ = ["SynthesizeConfig", "RecombineOptions", "Source", "synthesize", "plan_jobs", "combination_presence",
           "finished_bank_problem", "write_preview", "SynthesisRequest", "synthesis_request", "model_recommendations"]
