"""Builds and executes examples/gradient_derivations.ipynb (run from anywhere).

    .venv/bin/python examples/_build_notebook.py            # rewrites the committed notebook
    .venv/bin/python examples/_build_notebook.py --out-dir /tmp  # /tmp/gradient_derivations.ipynb

The notebook is generated from the cells below with nbformat, executed with nbclient in the
examples/ directory, and saved WITH its outputs so that it renders where it is stored (the
documentation site shows it through the link docs/notebooks/gradient_derivations.ipynb).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
NOTEBOOK = HERE / "gradient_derivations.ipynb"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option with its default."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--out-dir",
        type=pathlib.Path,
        default=HERE,
        help=f"where {NOTEBOOK.name} is written (the default rewrites the committed notebook)",
    )
    parser.add_argument("--timeout", type=int, default=300, help="seconds allowed per cell")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # answers --help at once: nothing is built, run or written

import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

CELLS: list[tuple[str, str]] = []


def md(text: str) -> None:
    CELLS.append(("markdown", text.strip("\n")))


def code(text: str) -> None:
    CELLS.append(("code", text.strip("\n")))


# ------------------------------------------------------------------------------------------
md(r"""
# Gradient derivations, checked against autodiff

Every loss in `infoloss_jax` has a closed-form gradient in `infoloss_jax.gradients`. This
notebook derives each one step by step, then checks it with `compare_gradients`:

* against `jax.grad` of a **plain implementation** (ordinary `jnp` code, no custom derivative
  rules), in float64: they agree to round-off, about $10^{-16}$ relative;
* against **central finite differences** of the loss in float64: about $10^{-10}$, the floor of
  that method (truncation error $O(h^2)$ against round-off $O(\epsilon/h)$).

Then pictures: each loss and its gradient field on the 3-class simplex, and entropy against
temperature. Two questions from the background notes get numeric answers: *why train with
cross-entropy rather than KL?* and *why does `F.kl_div` print a negative "KL"?*
""")

code(r"""
import functools

import jax

jax.config.update("jax_enable_x64", True)  # float64, to show agreement to round-off

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

import infoloss_jax as il
from infoloss_jax import gradients as G
from infoloss_jax import compare_gradients, gradient_table

np.set_printoptions(precision=4, suppress=True, linewidth=100)
rng = np.random.default_rng(0)
z = jnp.asarray(2.0 * rng.standard_normal((4, 5)))  # model logits: 4 examples, 5 classes
z = z.at[0, 4].set(-jnp.inf)  # an excluded class (probability exactly 0)
t = jnp.asarray(2.0 * rng.standard_normal((4, 5)))  # target logits
t = t.at[0, 4].set(-jnp.inf).at[1, 0].set(-jnp.inf)  # target zeros, one where the model has mass
y = jax.nn.softmax(t)  # target probabilities
print("target probabilities y:\n", np.asarray(y))
""")

md(r"""
## Notation, and the one identity every derivation uses

Logits $z \in \mathbb{R}^K$, model probabilities $q = \mathrm{softmax}(z)$, so
$\log q_k = z_k - \log \sum_j e^{z_j}$ and

$$\frac{\partial \log q_k}{\partial z_j} = \delta_{kj} - q_j, \qquad
  \frac{\partial q_k}{\partial z_j} = q_k(\delta_{kj} - q_j).$$

If a loss is written in terms of the log-probabilities, with
$u_k = \partial L / \partial \log q_k$, the chain rule gives

$$\frac{\partial L}{\partial z_j} = \sum_k u_k (\delta_{kj} - q_j) = u_j - q_j \sum_k u_k
\qquad (\star)$$

Targets are $p$ (probabilities) or $p = \mathrm{softmax}(t)$ for target logits $t$. The plain
references below use only `jnp` operations, so `jax.grad` of them is an independent check.
""")

code(r"""
def plain_log_softmax(x):
    m = jax.lax.stop_gradient(jnp.max(x, -1, keepdims=True))
    return x - m - jnp.log(jnp.sum(jnp.exp(x - m), -1, keepdims=True))


def xlogy(a, log_b):
    # a * log_b with 0 * log 0 = 0, in the value and in the gradient (double where)
    nz = a > 0
    return jnp.where(nz, a * jnp.where(nz, log_b, 0.0), 0.0)
""")

# ------------------------------------------------------------------------------------------
md(r"""
## 1. Softmax cross-entropy

$L = -\sum_k y_k \log q_k$, so $u_k = -y_k$ in $(\star)$:

$$\frac{\partial L}{\partial z_j} = -y_j + q_j \sum_k y_k = q_j \sum_k y_k - y_j
\;=\; q_j - y_j \quad\text{for normalized } y.$$

For an integer label $c$, $y = e_c$ and the gradient is $q - e_c$: the softmax with 1 subtracted
at the label. `softmax_cross_entropy_with_integer_labels_grad` does exactly that with a scatter,
without building the one-hot vector.
""")

code(r"""
plain_ce = lambda z, y: -jnp.sum(xlogy(y, plain_log_softmax(z)), -1)
display(compare_gradients(plain_ce, G.softmax_cross_entropy_grad, z, y, name="cross-entropy"))

labels = jnp.array([0, 3, 2, 1])
plain_nll = lambda z, c: -jnp.take_along_axis(plain_log_softmax(z), c[:, None], -1)[:, 0]
display(compare_gradients(plain_nll, G.softmax_cross_entropy_with_integer_labels_grad, z, labels,
                          name="cross-entropy, integer labels"))
print("q - e_c for the first example:", np.asarray(
    G.softmax_cross_entropy_with_integer_labels_grad(z, labels)[0]))
""")

md(r"""
The LLM-training options have closed forms too. Label smoothing replaces $y$ by
$(1-\varepsilon)y + \varepsilon/K$; class weights scale each term; the z-loss
$c(\log Z)^2$ adds $2c\log Z\, q$ (since $\partial \log Z / \partial z = q$); the soft cap
$s\tanh(z/s)$ multiplies everything by $1 - \tanh^2(z/s)$. Here against the library's own loss:
""")

code(r"""
options = dict(label_smoothing=0.1, class_weights=jnp.array([1.0, 2.0, 0.5, 1.0, 1.5]),
               z_loss=1e-2, logit_softcap=5.0, ignore_index=1)
compare_gradients(functools.partial(il.softmax_cross_entropy_with_integer_labels, **options),
                  functools.partial(G.softmax_cross_entropy_with_integer_labels_grad, **options),
                  z, labels, name="integer labels, every option")
""")

# ------------------------------------------------------------------------------------------
md(r"""
## 2. Entropy

$H = -\sum_k q_k \log q_k$. As a function of $\log q$ (with $q_k = e^{\log q_k}$):
$u_k = -q_k \log q_k - q_k$. Then $(\star)$, using $\sum_k q_k = 1$ and
$\sum_k q_k \log q_k = -H$:

$$\frac{\partial H}{\partial z_j} = -q_j(\log q_j + 1) + q_j\,(-H + 1)
= -q_j\,(\log q_j + H).$$

It is zero at the uniform distribution ($\log q_j = -\log K = -H$), the maximum.
""")

code(r"""
plain_entropy = lambda z: -jnp.sum(xlogy(jnp.exp(plain_log_softmax(z)), plain_log_softmax(z)), -1)
compare_gradients(plain_entropy, G.entropy_grad, z, name="entropy")
""")

# ------------------------------------------------------------------------------------------
md(r"""
## 3. Forward KL: KL(target ‖ model)

$\mathrm{KL}(p\,\|\,q) = \sum_k p_k(\log p_k - \log q_k)$ with target $p = \mathrm{softmax}(t)$,
model $q = \mathrm{softmax}(z)$.

* **Model logits.** Only $-\sum_k p_k \log q_k$ depends on $z$: that is the cross-entropy, so
  $\partial\,\mathrm{KL}/\partial z = q - p$.
* **Target logits.** Now
  $u_k = \partial\,\mathrm{KL}/\partial \log p_k = p_k(\log p_k - \log q_k) + p_k$,
  and $(\star)$ gives

$$\frac{\partial\,\mathrm{KL}}{\partial t} = p \odot (\log p - \log q + 1) - p\,(\mathrm{KL} + 1)
= p \odot (\log p - \log q - \mathrm{KL}).$$
""")

code(r"""
def plain_kl(log_a, log_b):  # KL(a || b) from log-probabilities
    return jnp.sum(xlogy(jnp.exp(log_a), log_a) - xlogy(jnp.exp(log_a), log_b), -1)

plain_forward_kl = lambda z, t: plain_kl(plain_log_softmax(t), plain_log_softmax(z))
compare_gradients(plain_forward_kl, functools.partial(G.forward_kl_grad, argnums=(0, 1)), z, t,
                  argnums=(0, 1), name="forward KL(p || q)")
""")

md(r"""
## 4. Reverse KL: KL(model ‖ target)

$\mathrm{KL}(q\,\|\,p)$ swaps the roles, so

$$\frac{\partial\,\mathrm{KL}}{\partial z} = q \odot (\log q - \log p - \mathrm{KL}(q\,\|\,p)),
\qquad \frac{\partial\,\mathrm{KL}}{\partial t} = p - q .$$

The model gradient is weighted by $q$: classes the model already gives little mass get little
push. That is why reverse KL is *mode-seeking* and forward KL *mass-covering*. (Reverse KL is
infinite where the model has mass and the target has none, so this check uses a target with
full support where the model has support.)
""")

code(r"""
t_full = jnp.where(jnp.isfinite(z), jnp.asarray(2.0 * rng.standard_normal((4, 5))), -jnp.inf)
plain_reverse_kl = lambda z, t: plain_kl(plain_log_softmax(z), plain_log_softmax(t))
compare_gradients(plain_reverse_kl, functools.partial(G.reverse_kl_grad, argnums=(0, 1)),
                  z, t_full, argnums=(0, 1), name="reverse KL(q || p)")
""")

# ------------------------------------------------------------------------------------------
md(r"""
## 5. Generalized Jensen-Shannon

With $m = \beta p + (1-\beta) q$,
$\mathrm{JS}_\beta = \beta\,\mathrm{KL}(p\,\|\,m) + (1-\beta)\,\mathrm{KL}(q\,\|\,m)$.
Differentiate in $q_k$ first, treating $q$ as free; $\partial m_k / \partial q_k = 1 - \beta$:

$$\frac{\partial\,\mathrm{JS}}{\partial q_k}
= (1-\beta)\Big(\log\frac{q_k}{m_k} + 1\Big) - (1-\beta)\,\frac{\beta p_k + (1-\beta) q_k}{m_k}
= (1-\beta)\log\frac{q_k}{m_k},$$

because the last fraction is exactly 1. Through the softmax Jacobian
($\partial L/\partial z_j = q_j(g_j - \sum_k q_k g_k)$ for $g = \partial L/\partial q$):

$$\frac{\partial\,\mathrm{JS}}{\partial z} = (1-\beta)\, q \odot
\big(\log q - \log m - \mathrm{KL}(q\,\|\,m)\big), \qquad
\frac{\partial\,\mathrm{JS}}{\partial t} = \beta\, p \odot
\big(\log p - \log m - \mathrm{KL}(p\,\|\,m)\big).$$

The endpoints follow the TRL/Liger convention: $\beta = 0$ is forward KL and $\beta = 1$ is
reverse KL (not the degenerate 0 of the formula).
""")

code(r"""
def plain_js(z, t, beta):
    log_q, log_p = plain_log_softmax(z), plain_log_softmax(t)
    m = beta * jnp.exp(log_p) + (1 - beta) * jnp.exp(log_q)
    log_m = jnp.log(jnp.where(m > 0, m, 1.0))
    return beta * plain_kl(log_p, log_m) + (1 - beta) * plain_kl(log_q, log_m)

for beta in (0.5, 0.2):
    display(compare_gradients(functools.partial(plain_js, beta=beta),
                              functools.partial(G.jensen_shannon_grad, beta=beta, argnums=(0, 1)),
                              z, t, argnums=(0, 1), name=f"JS, beta={beta}"))
""")

# ------------------------------------------------------------------------------------------
md(r"""
## 6. Temperature and masks

**Temperature.** The distillation losses evaluate on $z/T$ and $t/T$, so every gradient above
gets the chain factor $1/T$. Near agreement $q - p$ itself shrinks like $1/T$, so the gradient
falls like $1/T^2$: the reason Hinton et al. multiply the distillation loss by $T^2$.

**Masks.** `where=False` turns a class into a $-\infty$ logit: probability exactly 0, gradient
exactly 0, and the other classes renormalize among themselves.
""")

code(r"""
T = 4.0
scaled = G.forward_kl_grad(z, t, temperature=T)
chain = G.forward_kl_grad(z / T, t / T) / T
print("max |grad at T - (grad at z/T) / T| =", float(jnp.max(jnp.abs(scaled - chain))))
for T in (1.0, 4.0, 16.0, 64.0):
    norm = float(jnp.linalg.norm(G.forward_kl_grad(z[2:], t[2:], temperature=T)))  # finite rows
    print(f"T = {T:5.1f}   |grad| = {norm:.3e}   T^2 |grad| = {T * T * norm:.4f}")

where = jnp.ones((4, 5), bool).at[2, 1].set(False)
print("\nrow 2 with class 1 masked:", np.asarray(G.entropy_grad(z, where=where)[2]))
display(compare_gradients(functools.partial(il.jensen_shannon, beta=0.3, temperature=2.0,
                                            where=where),
                          functools.partial(G.jensen_shannon_grad, beta=0.3, temperature=2.0,
                                            where=where, argnums=(0, 1)),
                          z, t, argnums=(0, 1), name="JS, temperature 2, masked"))
""")

# ------------------------------------------------------------------------------------------
md(r"""
## 7. Binary losses

**Sigmoid cross-entropy with `pos_weight`** $w$:
$\ell = w\,y\,\mathrm{softplus}(-z) + (1-y)\,\mathrm{softplus}(z)$, and
$\frac{d}{dz}\mathrm{softplus}(z) = \sigma(z)$,
$\frac{d}{dz}\mathrm{softplus}(-z) = -\sigma(-z) = \sigma(z) - 1$:

$$\frac{\partial \ell}{\partial z} = w\,y\,(\sigma - 1) + (1-y)\,\sigma
= \sigma\,\big(1 + (w-1)\,y\big) - w\,y .$$

**Binary entropy** $H = -\sigma\log\sigma - (1-\sigma)\log(1-\sigma)$:
$dH/d\sigma = \log(1-\sigma) - \log\sigma = -z$ and $d\sigma/dz = \sigma(1-\sigma)$, so
$dH/dz = -z\,\sigma(z)\,\sigma(-z)$.
""")

code(r"""
bz = jnp.asarray(2.0 * rng.standard_normal((4, 5)))
by = jnp.asarray(rng.random((4, 5))).at[0, 0].set(0.0).at[1, 1].set(1.0)
pos_weight = jnp.array([0.5, 1.0, 2.0, 3.0, 1.0])
plain_bce = lambda z, y: -(
    pos_weight * y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z)
)
display(compare_gradients(plain_bce, functools.partial(G.sigmoid_binary_cross_entropy_grad,
                                                       pos_weight=pos_weight, argnums=(0, 1)),
                          bz, by, argnums=(0, 1), name="sigmoid BCE, pos_weight"))
plain_binary_entropy = lambda z: -(jax.nn.sigmoid(z) * jax.nn.log_sigmoid(z)
                                   + jax.nn.sigmoid(-z) * jax.nn.log_sigmoid(-z))
display(compare_gradients(plain_binary_entropy, G.binary_entropy_grad, bz, name="binary entropy"))
""")

# ------------------------------------------------------------------------------------------
md(r"""
## 8. Hessians and Hessian-vector products

Differentiate the cross-entropy gradient $q_i \sum_k y_k - y_i$ once more:

$$\nabla^2_z L = \Big(\sum_k y_k\Big)\big(\mathrm{diag}(q) - q q^\top\big),$$

the covariance matrix of a one-hot sample from $q$: positive semi-definite, with null vector
$\mathbf{1}$ (adding a constant to all logits changes nothing). For the entropy, with
$a = q \odot (\log q + H)$ (so $\nabla H = -a$):

$$\nabla^2_z H = -\mathrm{diag}(a + q) + a q^\top + q a^\top + q q^\top .$$

The HVPs apply these in $O(K)$: $(\sum y)(q \odot v - q\,(q^\top v))$.
""")

code(r"""
h = G.softmax_cross_entropy_hessian(z[1], y[1])
auto = jax.hessian(lambda x: plain_ce(x, y[1]))(z[1])
print("CE Hessian, max |closed form - jax.hessian| =", float(jnp.max(jnp.abs(h - auto))))
print("eigenvalues:", np.asarray(jnp.linalg.eigvalsh(h)))
he = G.entropy_hessian(z[1])
print("entropy Hessian, max |closed form - jax.hessian| =",
      float(jnp.max(jnp.abs(he - jax.hessian(plain_entropy)(z[1])))))

v = jnp.asarray(rng.standard_normal((4, 5)))
jvp_of_grad = lambda loss: jax.jvp(jax.grad(lambda x: jnp.sum(loss(x))), (z,), (v,))[1]
ce_hvp = G.softmax_cross_entropy_hvp(z, y, v)
print("CE HVP, max |closed form - jvp(grad)| =",
      float(jnp.max(jnp.abs(ce_hvp - jvp_of_grad(lambda x: plain_ce(x, y))))))
print("entropy HVP, max |closed form - jvp(grad)| =",
      float(jnp.max(jnp.abs(G.entropy_hvp(z, v) - jvp_of_grad(plain_entropy)))))
""")

# ------------------------------------------------------------------------------------------
md(r"""
## 9. Why train with cross-entropy rather than KL?

Because they are the same objective up to a constant. For a fixed target $p$,

$$H(p, q) = -\sum_k p_k \log q_k = \underbrace{-\sum_k p_k \log p_k}_{H(p)}
+ \underbrace{\sum_k p_k \log\frac{p_k}{q_k}}_{\mathrm{KL}(p\,\|\,q)},$$

and $H(p)$ does not depend on the model, so both have the gradient $q - p$. The numbers:
""")

code(r"""
ce = il.softmax_cross_entropy(z, y)
kl = il.forward_kl(z, t)
h_p = il.entropy(t)
print("H(p, q)               :", np.asarray(ce))
print("H(p) + KL(p || q)     :", np.asarray(h_p + kl))
print("max |difference|      :", float(jnp.max(jnp.abs(ce - h_p - kl))))

grad_ce = jax.grad(lambda x: jnp.sum(il.softmax_cross_entropy(x, y)))(z)
grad_kl = jax.grad(lambda x: jnp.sum(il.forward_kl(x, t)))(z)
print("\ngradient of cross-entropy (example 1):", np.asarray(grad_ce[1]))
print("gradient of KL(p || q)    (example 1):", np.asarray(grad_kl[1]))
print("max |difference| over the batch      :", float(jnp.max(jnp.abs(grad_ce - grad_kl))))
""")

md(r"""
So the choice is not about the optimum or the model gradient. Cross-entropy wins on cost and
simplicity: with hard labels it is $\log Z - z_y$, no target logarithm and no one-hot, and
$H(p) = 0$ anyway. KL is the better *number to report* (it is 0 at a perfect fit, while
cross-entropy bottoms out at $H(p)$), and it matters when the target itself is trained (the
target-side gradients differ), as in some distillation set-ups.

## 10. The `F.kl_div` pitfall

PyTorch's `F.kl_div(input, target)` expects **log**-probabilities as `input`. The background
notes pass `softmax(x)` instead, with $x = [0.5, 0.5]$ and $y = [0.2, 0.8]$, and get a negative
"KL": $-1.1501$ with `reduction='sum'` and $-0.5750$ with `'mean'`. Reproduced:
""")

code(r"""
from infoloss_jax import torch as F

# float32, as PyTorch computes it
x_logits, y_logits = jnp.array([0.5, 0.5], jnp.float32), jnp.array([0.2, 0.8], jnp.float32)
q_probs, p_probs = jax.nn.softmax(x_logits), jax.nn.softmax(y_logits)
misuse_sum = F.kl_div(q_probs, p_probs, reduction="sum")
misuse_mean = F.kl_div(q_probs, p_probs, reduction="mean")
correct = F.kl_div(jnp.log(q_probs), p_probs, reduction="sum")
print(f"F.kl_div(softmax(x), softmax(y), 'sum')      = {float(misuse_sum):.7f}")
print(f"F.kl_div(softmax(x), softmax(y), 'mean')     = {float(misuse_mean):.7f}")
print(f"F.kl_div(log_softmax(x), softmax(y), 'sum')  = {float(correct):.6f}")
print(f"il.forward_kl(x, y) = KL(softmax(y) || softmax(x)) = "
      f"{float(il.forward_kl(x_logits, y_logits)):.6f}")
print(f"-H(p) - <p, q>                               = "
      f"{float(-il.entropy(y_logits) - p_probs @ q_probs):.7f}")
try:
    il.checked(il.kl_divergence)(q_probs, p_probs)
except ValueError as error:
    print("\nil.checked catches it:\n", error)
""")

md(r"""
With probabilities in place of log-probabilities, the "KL" is
$\sum_k p_k(\log p_k - q_k) = -H(p) - \langle p, q\rangle$, always negative. `'mean'` divides
by the number of *elements* (2), not the batch. The gradient is wrong too: the misused loss is
linear in its input ($-p$ whatever the model predicts), so in the logits it is
$-(\mathrm{diag}(q) - qq^\top)\,p$, which does not vanish when the model matches the target.
The true gradient, $q - p$, does:
""")

code(r"""
misuse = lambda x: F.kl_div(jax.nn.softmax(x), p_probs, reduction="sum")
for name, x in [("at x = (0.5, 0.5)", x_logits), ("at x = y, a perfect fit", y_logits)]:
    print(name)
    print("   gradient of the misuse in the logits:", np.asarray(jax.grad(misuse)(x)))
    print("   gradient of KL(p || q) in the logits:", np.asarray(G.forward_kl_grad(x, y_logits)))
""")

# ------------------------------------------------------------------------------------------
md(r"""
## 11. Pictures: losses and gradient fields on the 3-class simplex

Each point of the triangle is a model distribution $q$ over 3 classes (corners: one-hot). The
colour is the loss against the fixed target $p = (0.6, 0.3, 0.1)$ (the white dot); the arrows
show where one gradient-descent step on the **logits** moves $q$:
$\Delta q = -(\mathrm{diag}(q) - qq^\top)\,\nabla_z L$ (for entropy, ascent). Forward KL pulls
toward $p$ from everywhere; reverse KL is flat where $q$ puts little mass; JS is bounded.
""")

code(r"""
corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])

def simplex_grid(n):
    pts = [(i, j, n - i - j) for i in range(n + 1) for j in range(n + 1 - i)]
    q = (np.array(pts, float) + 0.2) / (n + 0.6)  # stay off the edges, where logs diverge
    return q / q.sum(1, keepdims=True)

target = jnp.array([0.6, 0.3, 0.1])
t_target = jnp.log(target)
def against_target(fn):
    return lambda zz: fn(zz, jnp.broadcast_to(t_target, zz.shape))

panels = {
    "forward KL(p || q) = CE - H(p)": (against_target(il.forward_kl),
                                       against_target(G.forward_kl_grad)),
    "reverse KL(q || p)": (against_target(il.reverse_kl), against_target(G.reverse_kl_grad)),
    "Jensen-Shannon (beta = 0.5)": (against_target(il.jensen_shannon),
                                    against_target(G.jensen_shannon_grad)),
    "entropy H(q) (ascent)": (il.entropy, lambda zz: -G.entropy_grad(zz)),
}
fine, coarse = simplex_grid(60), simplex_grid(9)
fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
for ax, (title, (loss, grad)) in zip(axes, panels.items()):
    values = np.asarray(loss(jnp.log(jnp.asarray(fine))))
    xy = fine @ corners
    im = ax.tricontourf(xy[:, 0], xy[:, 1], values, levels=30, cmap="viridis")
    qc = jnp.asarray(coarse)
    gz = grad(jnp.log(qc))
    dq = -(qc * gz - qc * jnp.sum(qc * gz, -1, keepdims=True))  # -(diag q - q q^T) grad
    d_xy = np.asarray(dq) @ corners
    start = coarse @ corners
    ax.quiver(start[:, 0], start[:, 1], d_xy[:, 0], d_xy[:, 1], color="white", angles="xy",
              scale_units="xy", scale=1.5, width=0.004)
    if "entropy" not in title:
        p_xy = np.asarray(target) @ corners
        ax.plot(*p_xy, "o", color="white", markeredgecolor="black", markersize=8)
    ax.set_title(title, fontsize=10)
    for k, (cx, cy) in enumerate(corners):
        ax.annotate(f"class {k}", (cx, cy), textcoords="offset points", ha="center",
                    xytext=(0, -12 if cy == 0 else 4), fontsize=8)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.colorbar(im, ax=ax, shrink=0.7)
plt.tight_layout()
plt.show()
""")

md(r"""
## Entropy against temperature

$H(\mathrm{softmax}(z/T))$ rises from the entropy of a uniform choice among the arg-max
classes ($T \to 0$: 0 bits for a unique maximum, 1 bit for a two-way tie) to $\log_2 K$
($T \to \infty$). Its derivative in $T$ is, by the chain rule through
$\partial H/\partial z$,
$-\frac{1}{T^2}\,\langle \nabla H, z\rangle = \frac{1}{T^2}\sum_j q_j z_j (\log q_j + H)$,
which is $\mathrm{Var}_q(z)/T^3 \ge 0$ (because $\log q_j = z_j/T - \log Z$): entropy never
decreases with temperature.
""")

code(r"""
temperatures = np.logspace(-1.5, 2, 200)
logit_sets = {
    "peaked  z = (4, 1, 0, 0, -2)": jnp.array([4.0, 1.0, 0.0, 0.0, -2.0]),
    "two modes z = (2, 2, -1, -1, -1)": jnp.array([2.0, 2.0, -1.0, -1.0, -1.0]),
    "random z (row 2 of z above)": z[2],
}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
for label, logits in logit_sets.items():
    scaled = logits[None, :] / jnp.asarray(temperatures)[:, None]
    ax1.semilogx(temperatures, il.entropy(scaled, base=2), label=label)
    dH_dT = jnp.sum(G.entropy_grad(scaled) * (-scaled / jnp.asarray(temperatures)[:, None]), -1)
    ax2.semilogx(temperatures, dH_dT / np.log(2), label=label)
ax1.axhline(np.log2(5), color="gray", ls="--", label="log2 K")
ax1.set(xlabel="temperature T", ylabel="entropy (bits)", title="H(softmax(z / T))")
ax2.set(xlabel="temperature T", ylabel="dH/dT (bits per unit T)",
        title="dH/dT from the closed-form gradient (always >= 0)")
ax1.legend(fontsize=8)
ax2.legend(fontsize=8)
plt.tight_layout()
plt.show()
""")

# ------------------------------------------------------------------------------------------
md(r"""
## 12. The whole library at once

`gradient_table()` runs `compare_gradients` for every loss of the library on seeded random
inputs (with an excluded class, zero targets, masks, temperatures and options), against
`jax.grad` of the library's own losses and against float64 finite differences. The
Hessian-vector products are checked as the gradient of $\langle v, \nabla L\rangle$.
""")

code(r"""
table = gradient_table()
print("all agree:", table.ok(rtol=1e-12, atol=1e-15))
table
""")


# ------------------------------------------------------------------------------------------
def build() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    for kind, source in CELLS:
        maker = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(maker(source))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    return nb


def execute(nb: nbformat.NotebookNode, *, timeout: int = 300) -> nbformat.NotebookNode:
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(HERE)}},
        record_timing=False,
    )
    client.execute()
    return nb


def main(argv=None) -> None:
    args = parse_args(argv)

    os.environ.pop("MPLBACKEND", None)  # the inline backend, so the figures are saved
    os.environ.pop("XLA_FLAGS", None)
    start = time.perf_counter()
    nb = execute(build(), timeout=args.timeout)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / NOTEBOOK.name
    nbformat.write(nb, out)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
