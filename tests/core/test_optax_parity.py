"""The optax drop-in: every function with an optax name takes optax's arguments, positional
ones included, and gives optax's numbers.

Each case is one call written once and made against both libraries with the same arguments.
"""

from __future__ import annotations

import numpy as np
import optax
import pytest

import infoloss_jax as il

rng = np.random.default_rng(7)
LOGITS = rng.normal(size=(2, 3, 4)).astype(np.float32)
PROBS = rng.dirichlet(np.ones(4), size=(2, 3)).astype(np.float32)
LOG_PROBS = np.log(rng.dirichlet(np.ones(4), size=(2, 3))).astype(np.float32)
CLASS_MASK = rng.random((2, 3, 4)) > 0.25
LABELS = rng.integers(0, 4, size=(2, 3))
# A class mask that keeps every row's label (a masked label is a documented difference).
LABEL_KEEPING_MASK = CLASS_MASK | (np.arange(4) == LABELS[..., None])
ROW_MASK = np.array([[True, False, True], [True, True, False]])
BINARY = rng.random((2, 3, 4)).astype(np.float32)
# Logits and labels for a tuple of class axes: classes span the last two axes, (4, 5).
GRID = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
GRID_LABELS = rng.integers(0, 20, size=(2, 3))

CASES = {
    "softmax_cross_entropy": [
        (LOGITS, PROBS),
        (LOGITS, PROBS, -1),
        (LOGITS, PROBS, -1, CLASS_MASK),
        (LOGITS, PROBS, (1, 2)),
        (LOGITS, PROBS, 1),
    ],
    "softmax_cross_entropy_with_integer_labels": [
        (LOGITS, LABELS),
        (LOGITS, LABELS, -1),
        (LOGITS, LABELS, -1, LABEL_KEEPING_MASK),
        (LOGITS, LABELS, -1, ROW_MASK),
        (GRID, GRID_LABELS, (2, 3)),
        (GRID, GRID_LABELS, (3, 2)),
    ],
    "safe_softmax_cross_entropy": [(LOGITS, PROBS)],
    "sigmoid_binary_cross_entropy": [(LOGITS, BINARY), (LOGITS, BINARY > 0.5)],
    "kl_divergence": [
        (LOG_PROBS, PROBS),
        (LOG_PROBS, PROBS, -1),
        (LOG_PROBS, PROBS, -1, CLASS_MASK),
    ],
    "kl_divergence_with_log_targets": [
        (LOG_PROBS, np.log(PROBS)),
        (LOG_PROBS, np.log(PROBS), -1),
        (LOG_PROBS, np.log(PROBS), -1, CLASS_MASK),
    ],
    "generalized_kl_divergence": [
        (LOG_PROBS, PROBS),
        (LOG_PROBS, PROBS, -1),
        (LOG_PROBS, PROBS, -1, CLASS_MASK),
    ],
}

PARAMS = [
    pytest.param(name, args, id=f"{name}-{i}")
    for name, calls in CASES.items()
    for i, args in enumerate(calls)
]


def _optax_fn(name):
    return getattr(optax.losses, name)


@pytest.mark.parametrize("name, args", PARAMS)
def test_positional_call_matches_optax(name, args):
    expected = np.asarray(_optax_fn(name)(*args))
    got = np.asarray(getattr(il, name)(*args))
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name, args", [p for p in PARAMS if len(p.values[1]) > 2])
def test_keyword_call_matches_positional(name, args):
    keywords = dict(zip(("axis", "where"), args[2:], strict=False))
    got = np.asarray(getattr(il, name)(*args[:2], **keywords))
    np.testing.assert_allclose(got, np.asarray(getattr(il, name)(*args)), rtol=0, atol=0)


def test_every_optax_name_is_covered():
    ours = {n for n in il.__all__ if hasattr(optax.losses, n)}
    assert ours == set(CASES), sorted(ours ^ set(CASES))


def test_a_masked_label_is_infinite_where_optax_is_finite():
    """docs/migration.md, From optax: the label's probability is 0, so its loss is +inf."""
    labels = np.array([0, 1])
    logits = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]], np.float32)
    where = np.array([[False, True, True], [True, True, True]])
    ours = np.asarray(il.softmax_cross_entropy_with_integer_labels(logits, labels, -1, where))
    theirs = np.asarray(
        optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels, -1, where)
    )
    assert ours[0] == np.inf and np.isfinite(theirs[0])
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-6)
