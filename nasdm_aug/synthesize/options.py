"""A synthesis as the command line asks for it: :func:`synthesis_request` turns the options of
``nasdm-aug synthesize`` into one :class:`SynthesisRequest` (the config, and the balance plan its
type combinations come from)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from nasdm_aug.synthesize.config import SynthesizeConfig, open_store_arg
from nasdm_aug.synthesize.jobs import plan_jobs

__all__ = ["SynthesisRequest", "synthesis_request", "balance_plan"]


@dataclass(frozen=True)
class SynthesisRequest:
    """A synthesis to run.

    Attributes:
        config: the :class:`~nasdm_aug.synthesize.SynthesizeConfig`.
        plan: the :class:`~nasdm_aug.mixing.balance.BalanceSynthesisPlan` that chose the config's
            type combinations (``balance_for``), else None.
    """

    config: SynthesizeConfig
    plan: Any = None

    @property
    def attrs(self) -> dict[str, Any] | None:
        """Bank attributes: ``{"balance_plan": ...}`` with a plan, else None."""
        return {"balance_plan": self.plan.record} if self.plan is not None else None

    def describe(self) -> str:
        """The resolved config (JSON), the number of patches and the plan's summary."""
        lines = [self.config.to_json(), f"patches: {len(plan_jobs(self.config))}"]
        return "\n".join(lines + ([self.plan.summary()] if self.plan is not None else []))


def synthesis_request(config: str | os.PathLike | None = None, *, balance_for: str | None = None,
                      target: str = "sqrt", ratio: float = 0.5, **options: Any) -> SynthesisRequest:
    """The request of ``nasdm-aug synthesize``: :meth:`SynthesizeConfig.from_options` of ``config``
    and ``options``, with the type combinations of :func:`balance_plan` when ``balance_for``
    (``STORE.h5[:SPLIT]``) is given.

    Raises:
        InputError: as :meth:`SynthesizeConfig.from_options` and :func:`balance_plan`.
    """
    plan = balance_plan(balance_for, target, ratio) if balance_for else None
    if plan is not None:
        options["combinations"] = plan.combinations
    return SynthesisRequest(SynthesizeConfig.from_options(config, target=target, **options), plan)


def balance_plan(balance_for: str, target: str, ratio: float):
    """The :class:`~nasdm_aug.mixing.balance.BalanceSynthesisPlan` for ``STORE.h5[:SPLIT]`` (split
    Train when none is named) toward ``target``, at most ``ratio`` x the split's size.

    Raises:
        InputError: a store or split that does not exist, or a bad target or ratio.
    """
    from nasdm_aug.mixing.balance import parse_target, plan_balance_synthesis

    _, store, split = open_store_arg(balance_for, "balance_for")
    return plan_balance_synthesis(store, split, parse_target(target), ratio)
