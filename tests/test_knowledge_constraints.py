"""Known answers for the learnable knowledge constraints (Hu et al. 2018, arXiv:1806.09764): on a
categorical q_theta over a few outcomes with a table f, the target p = q exp(alpha f) / Z, its
self-normalised importance estimate, and the gradients of both updates against exact enumeration."""
from __future__ import annotations

import pytest
import torch

from conftest import image_dataset
from dgm.errors import DgmError
from dgm.models import Progress, create
from dgm.models.knowledge_constraints import (
    centroid,
    constraint_objective,
    generator_objective,
    importance_weights,
    target_log_probs,
)

ALPHA = 1.5


def toy():
    """q_theta: a categorical over 5 outcomes (logits theta); f: a table; d: the examples' distribution."""
    theta = torch.tensor([0.3, -1.0, 0.8, 0.0, -0.4], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([1.0, -1.0, 0.2, 0.7, -0.5], dtype=torch.float64)
    d = torch.tensor([0.5, 0.0, 0.1, 0.4, 0.0], dtype=torch.float64)
    return theta, f, d


def exact_p(theta, f):
    q = torch.softmax(theta.detach(), 0)
    unnormalised = q * torch.exp(ALPHA * f)
    return unnormalised / unnormalised.sum()  # eq. (1), directly


def test_target_matches_direct_computation():
    theta, f, _ = toy()
    p = exact_p(theta, f)
    torch.testing.assert_close(target_log_probs(torch.log_softmax(theta, 0), f, ALPHA).exp(), p)
    # the weights over an enumeration of every outcome, each with its q mass, are p itself
    torch.testing.assert_close(importance_weights(ALPHA * f, torch.log_softmax(theta.detach(), 0)), p)


def test_self_normalised_importance_estimates_converge_to_p():
    theta, f, _ = toy()
    p = exact_p(theta, f)
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(torch.softmax(theta.detach(), 0), 200_000, replacement=True, generator=g)  # x ~ q
    w = importance_weights(ALPHA * f[x])  # (n,), eq. (4)
    p_hat = torch.zeros(5, dtype=torch.float64).index_add_(0, x, w)
    torch.testing.assert_close(p_hat, p, atol=5e-3, rtol=0)
    torch.testing.assert_close((w * f[x]).sum(), (p * f).sum(), atol=5e-3, rtol=0)  # E_p[f]
    assert not torch.allclose(p_hat, torch.softmax(theta.detach(), 0), atol=5e-2)  # p is not q: the test can fail


def test_generator_gradient_is_the_exact_gradient_of_kl_p_q():
    theta, f, _ = toy()
    p = exact_p(theta, f)
    log_q = torch.log_softmax(theta, 0)
    weights = importance_weights(ALPHA * f, log_q.detach())  # every outcome enumerated
    (grad,) = torch.autograd.grad(-generator_objective(log_q, weights), theta)
    kl = (p * (p.log() - torch.log_softmax(theta, 0))).sum()  # KL(p || q_theta), p held fixed (the M-step)
    (exact,) = torch.autograd.grad(kl, theta)
    torch.testing.assert_close(grad, exact)
    torch.testing.assert_close(grad, torch.softmax(theta.detach(), 0) - p)  # closed form: q - p


def test_constraint_objective_is_the_log_likelihood_of_p_and_its_gradient():
    theta, f0, d = toy()
    f = f0.clone().requires_grad_(True)  # a table f_phi: phi = f
    log_q = torch.log_softmax(theta.detach(), 0)
    outcomes = torch.arange(5)
    examples = torch.repeat_interleave(outcomes, (d * 10).long())  # 10 examples with frequencies d
    objective = constraint_objective(f[examples], f, ALPHA, log_base=log_q)
    log_p = target_log_probs(log_q, f, ALPHA)
    # E_d[log p(x)] = objective + E_d[log q(x)]: the maximum likelihood of p on the examples (eq. 2)
    torch.testing.assert_close(objective + log_q[examples].mean(), log_p[examples].mean())
    (grad,) = torch.autograd.grad(objective, f)
    torch.testing.assert_close(grad, ALPHA * (d - log_p.detach().exp()))  # alpha (E_d - E_p) of grad f
    # from draws of q instead of the enumeration, the gradient converges to the same
    g = torch.Generator().manual_seed(1)
    x = torch.multinomial(log_q.exp(), 200_000, replacement=True, generator=g)
    (sampled,) = torch.autograd.grad(constraint_objective(f[examples], f[x], ALPHA), f)
    torch.testing.assert_close(sampled, grad, atol=1e-2, rtol=0)


def test_centroid_and_the_position_rule():
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, 1, 0] = 1.0  # a pixel in column 0, row 1
    torch.testing.assert_close(centroid(x), torch.tensor([[0.125, 0.375], [0.5, 0.5]]))  # blank: the middle


def tiny_vae(constraint):
    data = image_dataset(n=64)
    data = data.with_representation("binary-dynamic")
    torch.manual_seed(0)
    model = create("constrained-vae", data.spec, latent_dim=3, hidden=(16,), constraint=constraint, examples=4,
                   proposals=8, constraint_hidden=8)
    model.prepare(data)
    return model, data


def test_phases_and_the_three_constraints():
    learned, data = tiny_vae("learned")
    assert [p.name for p in learned.phases()] == ["constraint", "generator"]
    assert learned.rule(learned.constraint_examples).all()  # the examples satisfy the rule
    fixed, _ = tiny_vae("fixed")
    assert [p.name for p in fixed.phases()] == ["generator"] and fixed.constraint is None
    assert len(fixed.phases()[0].parameters) == len(list(fixed.parameters()))
    batch = data.tensors(16)
    out = fixed.loss(batch, "generator", Progress(generator=torch.Generator().manual_seed(0)))
    assert {"pr", "satisfied", "ess"} <= set(out.metrics)
    none, _ = tiny_vae("none")
    base = none.loss(batch, "generator", Progress(generator=torch.Generator().manual_seed(0)))
    assert "pr" not in base.metrics  # the base VAE's loss, untouched


def test_a_bad_template_or_too_few_examples_is_refused():
    from test_contract import token_dataset  # the contract's token data

    data = token_dataset()
    with pytest.raises(DgmError, match="model.template"):
        create("constrained-lm", data.spec, template="(unclosed")
    model = create("constrained-lm", data.spec, template="^zebra", examples=2, width=8, hidden=16, layers=1)
    with pytest.raises(DgmError, match="model.examples"):
        model.prepare(data)
    model = create("constrained-lm", data.spec, template="^the ", examples=2, width=8, hidden=16, layers=1,
                   constraint="fixed")
    assert model.rule(data.tensors(5).x).tolist() == [False, True, False, False, True]
