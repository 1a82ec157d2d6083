"""Preference-optimization losses over per-sequence log-probabilities: DPO and its family.

The pairwise losses take TRL's argument order, ``(chosen_log_probs, rejected_log_probs,
ref_chosen_log_probs, ref_rejected_log_probs, *, beta, ...)``: :func:`dpo` (with conservative
or robust DPO's label smoothing), :func:`ipo` and :func:`hinge`. The reference-free losses drop
the two reference arguments: :func:`simpo`, :func:`orpo` and :func:`cpo`. :func:`kto` is
unpaired. Each takes one log-probability per sequence (``[pairs]``) and an optional boolean
per-pair ``mask``, and returns ``(loss, aux)`` with the implicit rewards, margins and accuracy.
:func:`sequence_log_probs` turns per-token log-probs (with a mask or packed segment ids) into
the per-sequence sums and lengths these losses take.
"""

from .post_training._preference import KTOAux as KTOAux
from .post_training._preference import PreferenceAux as PreferenceAux
from .post_training._preference import cpo as cpo
from .post_training._preference import dpo as dpo
from .post_training._preference import hinge as hinge
from .post_training._preference import ipo as ipo
from .post_training._preference import kto as kto
from .post_training._preference import orpo as orpo
from .post_training._preference import sequence_log_probs as sequence_log_probs
from .post_training._preference import simpo as simpo

__all__ = [
    "KTOAux",
    "PreferenceAux",
    "cpo",
    "dpo",
    "hinge",
    "ipo",
    "kto",
    "orpo",
    "sequence_log_probs",
    "simpo",
]
