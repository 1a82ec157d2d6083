"""Every public function has a written-out signature: a typo is Python's own error.

No public function takes ``**options``, rewrites its ``__signature__`` or dispatches on
``locals()``, so a misspelled keyword raises the TypeError Python raises for any function,
naming the public function, before anything runs (and pyright, reading the same signature,
flags it in user code). The sharded heads take every option of the fused heads they shard.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_mesh

import infoloss_jax as il
from infoloss_jax import gradients, policy, preference, sharded
from infoloss_jax import torch as il_torch
from infoloss_jax.engine._loss_spec import declared_divergences

MODULES = {
    "infoloss_jax": il,
    "infoloss_jax.sharded": sharded,
    "infoloss_jax.policy": policy,
    "infoloss_jax.preference": preference,
    "infoloss_jax.gradients": gradients,
    "infoloss_jax.torch": il_torch,
}


def _public_functions():
    for module_name, module in MODULES.items():
        for name in module.__all__:
            fn = getattr(module, name)
            if callable(fn) and not inspect.isclass(fn) and not inspect.ismodule(fn):
                yield pytest.param(name, fn, id=f"{module_name}.{name}")


@pytest.mark.parametrize(("name", "fn"), list(_public_functions()))
def test_a_misspelled_keyword_is_pythons_own_type_error(name, fn):
    parameters = inspect.signature(fn).parameters.values()
    assert all(p.kind is not p.VAR_KEYWORD for p in parameters), f"{name} takes **kwargs"
    assert "__signature__" not in vars(fn), f"{name} rewrites its signature"
    with pytest.raises(TypeError, match=rf"^{name}\(\) got an unexpected keyword argument"):
        fn(temprature=2.0)


def test_a_typo_among_valid_arguments_names_the_function():
    h, w = jnp.ones((4, 3)), jnp.ones((3, 5))
    with pytest.raises(
        TypeError,
        match=r"linear_jensen_shannon\(\) got an unexpected keyword argument 'temprature'",
    ):
        il.linear_jensen_shannon(h, w, h, w, temprature=2.0)
    with pytest.raises(
        TypeError,
        match=r"vocab_parallel_log_probs_on_mesh\(\) got an unexpected keyword argument "
        r"'reduction'",
    ):
        sharded.vocab_parallel_log_probs_on_mesh(
            h @ w, jnp.zeros(4, int), mesh=make_mesh("8"), vocab_axis="model", reduction="mean"
        )


# ----------------------------------------------------------------------------- sharded options
# Each fused head and the sharded forms of it: inside shard_map (per-class arrays are slices,
# named ``*_shard``) and on a mesh (whole arrays). The mesh forms add the mesh and its axes; the
# forms inside shard_map add the axes and ``vocab_size``.
SHARDED_FORMS = {
    il.linear_softmax_cross_entropy: (
        sharded.vocab_parallel_linear_cross_entropy,
        sharded.vocab_parallel_linear_cross_entropy_on_mesh,
    ),
    il.linear_log_probs: (
        sharded.vocab_parallel_linear_log_probs,
        sharded.vocab_parallel_linear_log_probs_on_mesh,
    ),
}
# ... and every declared divergence, by its names.
SHARDED_FORMS |= {
    getattr(il, f"linear_{div.name}"): (
        getattr(sharded, f"vocab_parallel_linear_{div.name}"),
        getattr(sharded, f"vocab_parallel_linear_{div.name}_on_mesh"),
    )
    for div in declared_divergences()
}
SLICES = {"weight": "weight_shard", "target_weight": "target_weight_shard"}
SLICES |= {"bias": "bias_shard", "class_weights": "class_weights_shard"}


def _parameters(fn):
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()}


@pytest.mark.parametrize("fused", list(SHARDED_FORMS), ids=lambda f: f.__name__)
def test_the_sharded_heads_take_every_option_of_the_fused_head(fused):
    inside, on_mesh = SHARDED_FORMS[fused]
    options = _parameters(fused)
    for fn, rename in ((on_mesh, {}), (inside, SLICES)):
        theirs = _parameters(fn)
        for name, default in options.items():
            name = rename.get(name, name)
            assert name in theirs, f"{fn.__name__} lacks `{name}`"
            assert theirs[name] == default, f"{fn.__name__}: `{name}` defaults differ"


N, D, V = 8, 6, 13


def _head(seed=0):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(2, N // 2, D)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(V, D)), jnp.float32)  # [V, D]: weight_layout="vd"
    bias = jnp.asarray(rng.normal(size=(V,)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, V, size=(2, N // 2))).at[0, 1].set(-100)
    return hidden, table, bias, labels


def test_the_sharded_cross_entropy_gives_the_fused_result_with_every_option():
    hidden, table, bias, labels = _head()
    options = dict(
        bias=bias,
        weight_layout="vd",
        ignore_index=-100,
        mask=jnp.ones(labels.shape, bool).at[1, 2].set(False),
        label_smoothing=0.1,
        class_weights=jnp.linspace(0.5, 1.5, V),
        z_loss=1e-3,
        logit_softcap=4.0,
        reduction="batchmean",
        token_block_size=2,
        vocab_block_size=4,
        backward="two_pass",
        accum_dtype=jnp.float32,
        return_aux=True,
    )
    fused = jax.jit(lambda h, w: il.linear_softmax_cross_entropy(h, labels, w, **options))(
        hidden, table
    )
    mesh = make_mesh("2x4")
    on_mesh = sharded.vocab_parallel_linear_cross_entropy_on_mesh(
        hidden, labels, table, mesh=mesh, vocab_axis="model", data_axis="data", **options
    )
    for ours, theirs in zip(on_mesh[1], fused[1], strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(on_mesh[0], fused[0], rtol=1e-5)
    assert not bool(fused[1].correct[0, 1]) and float(fused[1].z_loss[1, 2]) == 0.0


def test_the_sharded_distillation_and_log_probs_give_the_fused_result_with_every_option():
    hidden, table, bias, labels = _head(1)
    teacher = jnp.flip(table, axis=0) * 0.5
    mask = jnp.ones(labels.shape, bool).at[1, 0].set(False)
    blocks = dict(token_block_size=2, vocab_block_size=4, backward="one_pass")
    mesh = dict(mesh=make_mesh("2x4"), vocab_axis="model", data_axis="data")
    pair = dict(weight_layout="vd", temperature=1.5, mask=mask, reduction="batchmean", **blocks)
    fused = jax.jit(lambda h: il.linear_jensen_shannon(h, table, h, teacher, beta=0.3, **pair))(
        hidden
    )
    on_mesh = sharded.vocab_parallel_linear_jensen_shannon_on_mesh(
        hidden, table, hidden, teacher, beta=0.3, **pair, **mesh
    )
    np.testing.assert_allclose(on_mesh, fused, rtol=1e-5)
    tokens = dict(bias=bias, weight_layout="vd", temperature=0.7, logit_softcap=5.0, mask=mask)
    tokens |= dict(with_entropy=True, ignore_index=-100, accum_dtype=jnp.float32, **blocks)
    fused = jax.jit(lambda h: il.linear_log_probs(h, labels, table, **tokens))(hidden)
    on_mesh = sharded.vocab_parallel_linear_log_probs_on_mesh(
        hidden, labels, table, **tokens, **mesh
    )
    for ours, theirs in zip(on_mesh, fused, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_flags_are_python_bools():
    """``with_entropy=1`` is refused as the core ``log_probs`` refuses it, even after a call
    with ``True`` built the program (1 == True would find it in a cache)."""
    logits, labels = jnp.ones((N, V)), jnp.zeros(N, int)
    kw = dict(mesh=make_mesh("8"), vocab_axis="model")
    sharded.vocab_parallel_log_probs_on_mesh(logits, labels, with_entropy=True, **kw)
    with pytest.raises(TypeError, match="`with_entropy` must be a Python bool"):
        sharded.vocab_parallel_log_probs_on_mesh(logits, labels, with_entropy=1, **kw)
    with pytest.raises(TypeError, match="`with_entropy` must be a Python bool"):
        il.log_probs(logits, labels, with_entropy=1)
    with pytest.raises(TypeError, match="`return_aux` must be a Python bool"):
        il.linear_softmax_cross_entropy(jnp.ones((N, D)), labels, jnp.ones((D, V)), return_aux=1)
