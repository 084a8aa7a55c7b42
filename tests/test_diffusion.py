"""Known answers for the diffusion family: the forward process's moments, the posterior q(x_{t-1} |
x_t, x_0) against Bayes' rule, L_T, the discretized decoder, the bound of an exactly optimal denoiser
on 1-D Gaussian data against the true NLL, DDIM (eta = 1, every step) against DDPM, restoration, and
guidance."""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from conftest import image_dataset
from dgm import DgmError, create
from dgm.data.core import DataSpec
from dgm.models import Progress
from dgm.models import samplers
from dgm.models.diffusion import SCHEDULES, GaussianDiffusion, discretized_gaussian_log_prob


@pytest.fixture(params=["linear", "cosine"])
def process(request) -> GaussianDiffusion:
    return GaussianDiffusion(SCHEDULES[request.param](100))


# --- the forward process ----------------------------------------------------------------------------
def test_iterating_the_one_step_kernel_gives_the_moments_of_q_xt_given_x0(process):
    x0 = torch.tensor([-1.0, 0.0, 0.5, 1.0], dtype=torch.float64)
    x = x0.expand(50_000, 4).clone()
    g = torch.Generator().manual_seed(0)
    for t in range(process.num_timesteps):  # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps   (eq. 2)
        beta = process.betas[t]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(x.shape, generator=g, dtype=x.dtype)
        if t in (0, 9, 49, 99):
            mean, var = process.q_mean_variance(x0[None], torch.tensor([t]))  # eq. 4
            assert torch.allclose(x.mean(0), mean[0], atol=4 * var[0, 0].sqrt().item() / math.sqrt(len(x)))
            assert torch.allclose(x.var(0), var[0], rtol=0.03, atol=1e-6)


def test_posterior_is_bayes_rule_on_the_two_gaussians(process):
    x0 = torch.tensor([[-0.7, 0.2, 1.0]], dtype=torch.float64)
    xt = torch.tensor([[0.3, -1.5, 0.8]], dtype=torch.float64)
    for t in (1, 2, 30, 99):
        abar_prev, beta = process.alphas_cumprod[t - 1], process.betas[t]
        # prior q(x_{t-1} | x_0) = N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}); likelihood N(x_t; sqrt(1-beta) x_{t-1}, beta)
        precision = 1 / (1 - abar_prev) + (1 - beta) / beta
        mean = (abar_prev.sqrt() * x0 / (1 - abar_prev) + (1 - beta).sqrt() * xt / beta) / precision
        got_mean, got_logvar = process.q_posterior(x0, xt, torch.tensor([t]))
        torch.testing.assert_close(got_mean, mean)
        torch.testing.assert_close(got_logvar, (1 / precision).log().expand_as(xt))
    mean0, _ = process.q_posterior(x0, xt, torch.tensor([0]))  # t = 1 in the paper: x_0 itself
    torch.testing.assert_close(mean0, x0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_prior_term_vanishes_for_the_standard_schedules(schedule):
    process = GaussianDiffusion(SCHEDULES[schedule](1000))
    x0 = torch.rand(16, 1, 8, 8, dtype=torch.float64) * 2 - 1
    per_dim = process.prior_kl(x0) / 64
    assert (per_dim >= 0).all() and per_dim.max() < 1e-4


def test_discretized_gaussian_is_a_pmf_over_the_levels_and_matches_high_precision():
    mpmath = pytest.importorskip("mpmath")  # installed with torch (via sympy)
    mpmath.mp.dps = 50
    levels = 17
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)
    edges = [-mpmath.inf] + [mpmath.mpf(-1) + (2 * i + 1) * mpmath.mpf(1) / (levels - 1) for i in range(levels - 1)] + [mpmath.inf]
    for mean, std in [(0.0, 0.1), (0.93, 0.01), (-3.0, 0.5), (0.2, 1e-3), (5.0, 0.01)]:
        m, lv = torch.full_like(grid, mean), torch.full_like(grid, 2 * math.log(std))
        log_p = discretized_gaussian_log_prob(grid, m, lv, levels)
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
        expected = [float(mpmath.log(mpmath.ncdf(b, mean, std) - mpmath.ncdf(a, mean, std)))
                    for a, b in zip(edges[:-1], edges[1:])]
        finite = torch.tensor(expected) > -1e4  # beyond, 50 digits are not enough for the reference
        torch.testing.assert_close(log_p[finite], torch.tensor(expected, dtype=torch.float64)[finite], rtol=1e-9, atol=1e-9)


# --- the bound of an exactly optimal denoiser on 1-D Gaussian data ----------------------------------
M, S = 0.5, 0.3  # data N(M, S^2)


class OptimalDenoiser(nn.Module):
    """For x_0 ~ N(M, S^2), x_t and x_0 are jointly Gaussian, so the optimal network is known:
    E[eps | x_t] = sigma_t (x_t - a_t M) / (a_t^2 S^2 + sigma_t^2) with a_t = sqrt(abar_t), sigma_t^2 =
    1 - abar_t, and the true reverse variance is beta~_t + coef_x0^2 Var[x_0 | x_t], which the
    learned-variance head can express exactly (it lies between beta~_t and beta_t)."""

    def __init__(self, process: GaussianDiffusion, variance: bool) -> None:
        super().__init__()
        self.process, self.variance = process, variance

    def forward(self, x, t, y=None):
        p = self.process
        abar = p.alphas_cumprod[t][:, None]
        a, sigma2 = abar.sqrt(), 1 - abar
        eps = sigma2.sqrt() * (x - a * M) / (a ** 2 * S ** 2 + sigma2)
        if not self.variance:
            return eps
        var_x0 = S ** 2 * sigma2 / (a ** 2 * S ** 2 + sigma2)  # Var[x_0 | x_t]
        true_var = p.posterior_variance[t][:, None] + p.posterior_mean_coef_x0[t][:, None] ** 2 * var_x0
        small, large = p.posterior_log_variance[t][:, None], p.betas[t][:, None].log()
        return torch.cat([eps, 2 * (true_var.log() - small) / (large - small) - 1], 1)


def gaussian_bound_gap(variance: str, schedule: str = "linear", n: int = 20_000, **settings):
    spec = DataSpec("gaussian", (1,), "continuous", levels=None)
    loss = "simple" if variance != "learned" else "hybrid"
    model = create("ddpm", spec, variance=variance, loss=loss, schedule=schedule, **settings).double()
    model.network = OptimalDenoiser(model.process, variance == "learned")
    torch.manual_seed(0)
    x = M + S * torch.randn(n, 1, dtype=torch.float64)
    with torch.no_grad():
        bound = -model.elbo(x)
    true_nll = 0.5 * math.log(2 * math.pi * S ** 2) + (x[:, 0] - M) ** 2 / (2 * S ** 2)
    gap = bound - true_nll
    return gap.mean().item(), gap.std().item() / math.sqrt(n)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_bound_of_the_optimal_denoiser_equals_the_true_nll(schedule):
    gap, stderr = gaussian_bound_gap("learned", schedule)
    assert abs(gap) < max(4 * stderr, 0.01) and stderr < 0.01, (gap, stderr)


def test_fixed_variances_give_a_looser_but_valid_bound():
    small, stderr = gaussian_bound_gap("fixed-small", n=5000)
    large, _ = gaussian_bound_gap("fixed-large", n=5000)
    assert small > large > 4 * stderr  # both above the NLL; beta_t is nearer the truth for this wide data


def test_stratified_bound_estimate_is_unbiased():
    exact, stderr = gaussian_bound_gap("fixed-large", n=4000)
    estimate, stderr_k = gaussian_bound_gap("fixed-large", n=4000, bound_timesteps=20)
    assert abs(estimate - exact) < 4 * math.hypot(stderr, stderr_k)


# --- samplers -----------------------------------------------------------------------------------------
def wiggly(x, t):
    """A fixed, nonlinear stand-in for a network: depends on x_t and t."""
    return torch.sin(3 * x) * 0.5 + 0.01 * t.view(-1, *([1] * (x.dim() - 1)))


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_with_eta_one_on_every_step_is_the_ddpm_update(clip):
    process = GaussianDiffusion(SCHEDULES["linear"](50), clip=clip)
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn_like(x)
    for t in (49, 20, 1, 0):
        output = wiggly(x, torch.full((6,), t))
        ddpm = samplers.ddpm_step(process, output, x, t, noise)
        ddim = samplers.ddim_step(process, output, x, t, t - 1, 1.0, noise)
        torch.testing.assert_close(ddim, ddpm, rtol=1e-5, atol=1e-5)
    chains = [samplers.run(process, wiggly, x, sampler, steps=50, eta=1.0, generator=torch.Generator().manual_seed(3))
              for sampler in ("ddpm", "ddim")]
    torch.testing.assert_close(chains[0], chains[1], rtol=1e-4, atol=1e-4)


def test_ddim_timesteps_and_determinism():
    assert samplers.timesteps(1000, 10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert samplers.timesteps(10, 10) == list(range(9, -1, -1))
    with pytest.raises(DgmError, match="sampling steps"):
        samplers.timesteps(10, 11)
    model = create("ddpm", image_dataset(representation="signed").spec, timesteps=20, channel_mults=(1, 2), width=8)
    for p in model.parameters():  # break the zero initialisation so that the samples depend on the network
        nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        a, b = [model.sample(3, generator=torch.Generator().manual_seed(5), sampler="ddim", steps=7, eta=0.5)
                for _ in range(2)]
        c = model.sample(3, generator=torch.Generator().manual_seed(6), sampler="ddim", steps=7, eta=0.5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


# --- restoration ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_restoration_keeps_what_is_known(sampler):
    process = GaussianDiffusion(SCHEDULES["linear"](30), clip=True)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    mask = torch.rand(2, 1, 8, 8, generator=g) < 0.5
    start = torch.randn(2, 3, 8, 8, generator=g)
    kwargs = dict(steps=10, eta=0.0, generator=torch.Generator().manual_seed(1), resample=3)
    inpainted = samplers.run(process, wiggly, start, sampler, known=samplers.Inpaint(image, mask), **kwargs)
    known = mask.expand_as(image)
    assert torch.equal(inpainted[known], image[known])  # exactly, bit for bit
    assert not torch.allclose(inpainted[~known], image[~known])
    low = torch.nn.functional.avg_pool2d(image, 2)
    upscaled = samplers.run(process, wiggly, start, sampler, known=samplers.SuperResolution(low, 2), **kwargs)
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(upscaled, 2), low)
    grey = image.mean(1, keepdim=True)
    coloured = samplers.run(process, wiggly, start, sampler, known=samplers.Colorization(grey, 3), **kwargs)
    torch.testing.assert_close(coloured.mean(1, keepdim=True), grey)


# --- the model ----------------------------------------------------------------------------------------
def labelled_signed():
    return image_dataset(n=64, labels=True, representation="signed")


def test_guidance_mixes_the_conditional_and_unconditional_predictions():
    data = labelled_signed()
    model = create("ddpm", data.spec, timesteps=10, channel_mults=(1, 2), width=8, conditional=True)
    for p in model.parameters():
        nn.init.normal_(p, std=0.05)
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([9, 4, 0]), torch.tensor([0, 1, 3])
    with torch.no_grad():
        cond, uncond = model.denoise(x, t, y), model.denoise(x, t, torch.full_like(y, 4))
        torch.testing.assert_close(model.guided(y, 3.0)(x, t), uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.guided(y, 1.0)(x, t), cond)
        torch.testing.assert_close(model.guided(None, 3.0)(x, t), uncond)
        assert model.sample(4, torch.tensor(2), guidance=2.0, sampler="ddim", steps=3).shape == (4, 1, 8, 8)


def test_bad_requests_get_one_clear_line():
    data = labelled_signed()
    unconditional = create("ddpm", data.spec, timesteps=10, channel_mults=(1, 2), width=8)
    with pytest.raises(DgmError, match="guidance needs a class-conditional model"):
        unconditional.sample(2, guidance=3.0)
    with pytest.raises(DgmError, match="unconditional"):
        unconditional.sample(2, torch.tensor(1))
    conditional = create("ddpm", data.spec, timesteps=10, channel_mults=(1, 2), width=8, conditional=True)
    with pytest.raises(DgmError, match=r"class labels must be in 0\.\.3"):
        conditional.sample(2, torch.tensor(4))
    with pytest.raises(DgmError, match="DDPM sampler runs all 10 steps"):
        unconditional.sample(2, sampler="ddpm", steps=5)
    with pytest.raises(DgmError, match="model.loss=hybrid"):
        create("ddpm", data.spec, variance="learned")
    with pytest.raises(DgmError, match="'signed'"):
        create("ddpm", image_dataset(representation="unit").spec)


def test_unet_levels_default_by_image_size_and_an_explicit_choice_the_size_cannot_take_is_refused():
    def levels(model) -> int:  # one stride-2 convolution per level but the last
        return 1 + sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in model.network.modules())

    small, large = (image_dataset(n=4, size=size, representation="signed").spec for size in (8, 16))
    assert levels(create("ddpm", small, width=8)) == 2 and levels(create("ddpm", large, width=8)) == 3
    assert levels(create("ddpm", small, width=8, channel_mults=(1, 2, 2))) == 3  # honoured, not cut: 8, 4, 2
    with pytest.raises(DgmError, match=r"8x8 does not allow .*multiples of 16.*at most 4 levels.*channel_mults=1,2,2,2$"):
        create("ddpm", small, width=8, channel_mults=(1, 2, 2, 2, 2))


@pytest.mark.parametrize("settings", [
    dict(), dict(prediction="x0"), dict(prediction="v", schedule="cosine"),
    dict(variance="learned", loss="hybrid"), dict(loss="vlb", variance="fixed-large"),
])
def test_every_objective_trains_and_the_bound_is_in_bits_per_dim(settings):
    data = labelled_signed()
    model = create("ddpm", data.spec, timesteps=20, channel_mults=(1, 2), width=8, **settings)
    out = model.loss(data.tensors(16), "model", Progress())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    with torch.no_grad():
        bound = -model.elbo(data.tensors(4).x) / (64 * math.log(2))  # bits/dim of 17-level images
    assert torch.isfinite(bound).all() and (bound > 0).all()  # a bound on -log P of a discrete image is positive


# --- the bound, term by term -------------------------------------------------------------------------
def bound_terms_written_out(model, x: Tensor, noises: list[Tensor]) -> list[Tensor]:
    """-elbo(x)'s terms [L_T, L_0, L_1, ..., L_{T-1}], nats ``(B,)`` in float64, from Ho et al.'s
    formulas written out here: x_t of eq. 4 with the given noise, q(x_{t-1} | x_t, x_0) of eqs. 6-7,
    p(x_{t-1} | x_t) from the network's output, the KLs by torch.distributions, and L_0 (eq. 13) as
    the Gaussian's mass of each pixel's bin, a difference of mpmath's normal CDFs (images), or its
    density (vectors). Only the network and the beta schedule are taken from the model."""
    mpmath = pytest.importorskip("mpmath")
    c, levels = model.config, model.spec.levels
    betas = model.process.betas.double()
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    beta_tilde = (1 - abar_prev) / (1 - abar) * betas  # eq. 7; beta~_1 = 0
    x = x.double()

    def per_example(a: Tensor) -> Tensor:
        return a.flatten(1).sum(1)

    def posterior_mean(x0: Tensor, xt: Tensor, t: int) -> Tensor:  # mu~_t(x_t, x_0), eq. 7
        return (abar_prev[t].sqrt() * betas[t] / (1 - abar[t]) * x0
                + alphas[t].sqrt() * (1 - abar_prev[t]) / (1 - abar[t]) * xt)

    prior = Normal(abar[-1].sqrt() * x, (1 - abar[-1]).sqrt())  # q(x_T | x_0), eq. 4
    terms = [per_example(kl_divergence(prior, Normal(0.0, 1.0)))]
    for t, noise in enumerate(noises):  # code index t is the paper's t + 1
        xt = abar[t].sqrt() * x + (1 - abar[t]).sqrt() * noise.double()  # eq. 4
        with torch.no_grad():
            out = model.network(xt.float(), torch.full((len(x),), t)).double()
        head, v = out.chunk(2, 1) if c.variance == "learned" else (out, None)
        if c.prediction == "epsilon":
            x0_hat = (xt - (1 - abar[t]).sqrt() * head) / abar[t].sqrt()
        elif c.prediction == "x0":
            x0_hat = head
        else:  # v = sqrt(abar) eps - sqrt(1 - abar) x0
            x0_hat = abar[t].sqrt() * xt - (1 - abar[t]).sqrt() * head
        if levels and c.bound_clip:
            x0_hat = x0_hat.clamp(-1, 1)  # images lie in [-1, 1]: the bound clips x0 as the reference evaluators do
        mean = posterior_mean(x0_hat, xt, t)
        if c.prediction == "epsilon" and not levels:  # the same mean by eq. 11
            torch.testing.assert_close(mean, (xt - betas[t] / (1 - abar[t]).sqrt() * head) / alphas[t].sqrt())
        small = beta_tilde[max(t, 1)]  # beta~_1 = 0: Ho's code uses beta~_2 at t = 1
        if c.variance == "fixed-small":
            var = small
        elif c.variance == "fixed-large":
            var = betas[t] if t > 0 else small
        else:  # Nichol eq. 15: log Sigma = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1) / 2
            frac = (v + 1) / 2
            var = (frac * betas[t].log() + (1 - frac) * small.log()).exp()
        p = Normal(mean, var.sqrt() if isinstance(var, Tensor) else math.sqrt(var))
        if t > 0:  # L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), eq. 5
            q = Normal(posterior_mean(x, xt, t), beta_tilde[t].sqrt())
            terms.append(per_example(kl_divergence(q, p)))
        elif not levels:  # L_0 = -log p(x_0 | x_1), a density
            terms.append(-per_example(p.log_prob(x)))
        else:  # L_0 = -log P(x_0 | x_1): each pixel's bin of half-width 1/(levels - 1), the outer bins to +-inf
            half = 1 / (levels - 1)
            mu, sd = mean.expand_as(x).flatten(1).tolist(), p.stddev.expand_as(x).flatten(1).tolist()
            nll = []
            with mpmath.workdps(30):
                for xs, ms, ss in zip(x.flatten(1).tolist(), mu, sd):
                    total = mpmath.mpf(0)
                    for xi, mi, si in zip(xs, ms, ss):
                        low = mpmath.mpf(xi - half) if xi > -1 + half / 2 else -mpmath.inf
                        high = mpmath.mpf(xi + half) if xi < 1 - half / 2 else mpmath.inf
                        if low > mi:  # mirror a bin above the mean below it: the CDFs there are not near 1
                            low, high = 2 * mi - high, 2 * mi - low
                        total -= mpmath.log(mpmath.ncdf(high, mi, si) - mpmath.ncdf(low, mi, si))
                    nll.append(float(total))
            terms.append(torch.tensor(nll, dtype=torch.float64))
    return terms


@pytest.mark.parametrize("settings", [
    dict(data="images", short_chain=True),
    dict(data="images", short_chain=True, bound_clip=False),
    dict(data="images", prediction="v", variance="fixed-large", schedule="cosine"),
    dict(data="images", prediction="x0", variance="learned", loss="hybrid", short_chain=True),
    dict(data="vectors", variance="learned", loss="hybrid", schedule="cosine"),
    dict(data="vectors", prediction="x0", variance="fixed-large", short_chain=True),
])
def test_the_bound_is_minus_the_sum_of_its_terms_written_out(settings):
    """elbo(x) = -(L_T + sum_t L_{t-1} + L_0) with each term recomputed independently, for a network
    whose weights are perturbed away from their initialisation (so its output is far from zero).
    The T = 10 standard schedules end at abar_T ~ 0, so L_T ~ 0; ``short_chain`` swaps in betas
    from 0.001 to 0.2 (abar_T ~ 0.35) so that L_T is not ~0 and its check bites."""
    from conftest import vector_dataset

    settings = dict(settings)
    short_chain = settings.pop("short_chain", False)
    if settings.pop("data") == "images":
        data = image_dataset(n=8, representation="signed")  # 17 levels: the discretized decoder
        net = dict(channel_mults=(1, 2), width=8)
    else:
        data = vector_dataset(n=8, dim=3)  # continuous: a density decoder
        net = dict(hidden=(16, 16))
    torch.manual_seed(0)
    model = create("ddpm", data.spec, timesteps=10, **net, **settings).eval()
    if short_chain:
        c = model.config
        model.process = GaussianDiffusion(torch.linspace(1e-3, 0.2, 10, dtype=torch.float64), prediction=c.prediction,
                                          variance=c.variance, clip=model.process.clip)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    x = data.tensors(3).x
    torch.manual_seed(1)
    noises = [torch.randn_like(x) for _ in range(10)]  # elbo draws one x_t per term, in order of t
    torch.manual_seed(1)
    with torch.no_grad():
        elbo = model.elbo(x)
        prior = model.process.prior_kl(x)
        xts = [model.process.q_sample(x, torch.full((3,), t), noise) for t, noise in enumerate(noises)]
        vlb = [model.process.vlb_term(model.denoise(xt, torch.full((3,), t)), x, xt, torch.full((3,), t),
                                      model.spec.levels, clip=model.bound_clipped) for t, xt in enumerate(xts)]
    terms = bound_terms_written_out(model, x, noises)
    assert len(terms) == 11 and all(term.shape == (3,) for term in terms)
    assert all((term > 0).all() for term in terms[2:])  # KLs of distinct Gaussians
    assert (terms[1] > 0).all() or not model.spec.levels  # -log of a probability < 1 (a density may exceed 1)
    torch.testing.assert_close(prior.double(), terms[0], rtol=1e-4, atol=1e-6)
    assert (terms[0] > 0.1).all() or not short_chain
    for t in range(10):
        torch.testing.assert_close(vlb[t].double(), terms[1 + t], rtol=1e-4, atol=1e-3, msg=f"term {t}")
    torch.testing.assert_close(elbo.double(), -sum(terms), rtol=1e-5, atol=1e-3)


# --- clipping the predicted x0: the bound clips, the training loss does not -----------------------------
def test_the_clipped_term_is_the_unclipped_one_of_the_clamped_x0():
    """L_{t-1} from an epsilon network with clipping equals, term for term, L_{t-1} of an x0 network
    that outputs the clamped x0 without clipping: the same where the predicted x0 is inside [-1, 1],
    different where it is outside."""
    betas = SCHEDULES["linear"](10)
    process, reads_x0 = GaussianDiffusion(betas, clip=True), GaussianDiffusion(betas, prediction="x0")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 17, (8, 1, 4, 4), generator=g).double() / 8 - 1  # on the 17-level grid
    t = torch.tensor([0, 1, 3, 5, 6, 8, 9, 9])
    xt = process.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=x0.dtype))
    abar = process.alphas_cumprod[t].view(-1, 1, 1, 1)
    for x0_hat, inside in [(0.95 * torch.randn(x0.shape, generator=g, dtype=x0.dtype).tanh(), True),
                           (3 * torch.randn(x0.shape, generator=g, dtype=x0.dtype), False)]:
        eps_hat = (xt - abar.sqrt() * x0_hat) / (1 - abar).sqrt()  # the epsilon network whose x0 is x0_hat
        clipped, unclipped, default = [process.vlb_term(eps_hat, x0, xt, t, 17, clip=clip) for clip in (True, False, None)]
        torch.testing.assert_close(default, clipped)  # a process of bounded data clips unless told otherwise
        torch.testing.assert_close(unclipped, reads_x0.vlb_term(x0_hat, x0, xt, t, 17))
        torch.testing.assert_close(clipped, reads_x0.vlb_term(x0_hat.clamp(-1, 1), x0, xt, t, 17))
        if inside:
            torch.testing.assert_close(clipped, unclipped)
        else:
            assert ((clipped - unclipped).abs() > 1e-3 * unclipped).all()  # late terms are tiny: compare relatively


@pytest.mark.parametrize("loss", ["vlb", "hybrid"])
def test_the_training_loss_uses_the_unclipped_term_and_the_bound_says_which_it_is(loss):
    data = labelled_signed()
    variance = "learned" if loss == "hybrid" else "fixed-large"
    model = create("ddpm", data.spec, timesteps=10, channel_mults=(1, 2), width=8, loss=loss, variance=variance)
    with torch.no_grad():
        for param in model.parameters():  # away from the zero output layer: x0 predictions far outside [-1, 1]
            param.add_(0.2 * torch.randn_like(param))
    x0, T, D = data.tensors(16).x, 10, data.spec.dim
    torch.manual_seed(0)
    metric = model.loss(data.tensors(16), "model", Progress()).metrics["vlb_per_dim"]
    torch.manual_seed(0)  # the same draws as the loss: t, then the noise
    t = torch.randint(0, T, (16,))
    xt = model.process.q_sample(x0, t, torch.randn_like(x0))
    with torch.no_grad():
        output = model.denoise(xt, t)
        terms = {clip: (model.process.vlb_term(output, x0, xt, t, 17, clip=clip) * T / D).mean() for clip in (False, True)}
    torch.testing.assert_close(metric.detach(), terms[False])
    assert abs(terms[True] - terms[False]) > 1e-3
    assert model.elbo_description == "diffusion VLB, all 10 terms, clipped x0"
    unclipped = create("ddpm", data.spec, timesteps=10, channel_mults=(1, 2), width=8, loss=loss, variance=variance,
                       bound_clip=False, bound_timesteps=5)
    assert unclipped.elbo_description == "diffusion VLB, unbiased 5-of-10-term estimate, unclipped"


# --- the command line ---------------------------------------------------------------------------------
def test_cli_train_eval_sample_restore_and_bad_pictures(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from dgm.cli import main

    out = tmp_path / "ddpm"
    tiny = ["--set", "model.timesteps=20", "--set", "model.width=8", "--set", "model.sample_steps=5", "--quiet"]
    assert main(["train", "ddpm", "--data", "digits", "--epochs", "1", "--out", str(out), *tiny]) == 0
    import json

    assert json.loads((out / "config.json").read_text())["train"]["ema"] == 0.999  # EMA weights by default
    assert (out / "ema.safetensors").exists()
    assert main(["eval", str(out), "--metrics", "nll", "--max-examples", "32", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "bits/dim" in printed and "diffusion VLB, all 20 terms" in printed
    assert main(["sample", str(out), "-n", "4", "--sampler", "ddim", "--steps", "3", "--eta", "0.5",
                 "-o", str(tmp_path / "s.png")]) == 0
    report = (out / "report.html").read_text()
    assert "Restoration: inpainting" in report and "Restoration: 2x super-resolution" in report

    digit = np.full((8, 8), 40, np.uint8)
    digit[2:6, 3:5] = 250
    Image.fromarray(digit).save(tmp_path / "digit.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 255  # white: generate the right half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(digit[::2, ::2]).save(tmp_path / "low.png")
    assert main(["restore", str(out), "--task", "inpaint", "--input", str(tmp_path / "digit.png"), "--mask",
                 str(tmp_path / "mask.png"), "-n", "3", "-o", str(tmp_path / "inpainted.png"), "--quiet"]) == 0
    assert Image.open(tmp_path / "inpainted.png").size[0] > 4 * 8 * 8  # the input and 3 restorations, 8x larger
    assert main(["restore", str(out), "--task", "super-resolution", "--input", str(tmp_path / "low.png"),
                 "-o", str(tmp_path / "sr.png"), "--quiet"]) == 0
    capsys.readouterr()

    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "mask9.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8) + np.array([200, 0, 0], np.uint8)).save(tmp_path / "red.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "big.png")
    bad = [
        (["--task", "inpaint", "--input", "digit.png", "--mask", "mask9.png"], "the mask .* is 9x9, the image is 8x8"),
        (["--task", "inpaint", "--input", "big.png", "--mask", "mask.png"], "is 10x10, the model makes 8x8 images"),
        (["--task", "inpaint", "--input", "red.png", "--mask", "mask.png"], "has colour, the model makes grey images"),
        (["--task", "colorize", "--input", "digit.png"], "colorize needs a model of colour images"),
        (["--task", "super-resolution", "--input", "digit.png"], "needs a picture whose sides divide those"),
    ]
    import re

    for flags, message in bad:
        flags = [str(tmp_path / f) if f.endswith(".png") else f for f in flags]
        assert main(["restore", str(out), *flags]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and err.count("\n") == 1 and "Traceback" not in err, err
    assert main(["sample", str(out), "--guidance", "3", "-o", str(tmp_path / "g.png")]) == 2
    assert "guidance needs a class-conditional model" in capsys.readouterr().err


def test_vectors_use_the_mlp_denoiser_and_a_density_bound():
    from conftest import vector_dataset

    data = vector_dataset(n=64, dim=2)
    model = create("ddpm", data.spec, timesteps=20, hidden=(16, 16), variance="learned", loss="hybrid")
    assert type(model.network).__name__ == "FlatDenoiser"
    out = model.loss(data.tensors(32), "model", Progress())
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.likelihood_kind == "density"
    with torch.no_grad():
        assert model.sample(7, generator=torch.Generator().manual_seed(0)).shape == (7, 2)
        assert torch.isfinite(model.elbo(data.tensors(5).x)).all()


def test_an_8x8_run_of_dgm_0_1_still_loads_its_two_level_unet(tmp_path):
    """dgm 0.1 stored channel_mults (1, 2, 2) for 8x8 digits and used two levels; 0.2 reads such a
    run as it was trained (DDPM.migrate_config), and builds three levels for a 0.2 config."""
    import json

    import dgm
    from dgm.cli import main

    run_dir = tmp_path / "old"
    assert main(["train", "ddpm", "--data", "digits", "--epochs", "1", "--out", str(run_dir), "--quiet",
                 "--set", "train.max_steps_per_epoch=1", "--set", "model.timesteps=10", "--set", "model.width=8",
                 "--set", "model.channel_mults=1,2", "--set", "train.sample_every=0"]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    config["model_config"]["channel_mults"] = [1, 2, 2]
    (run_dir / "config.json").write_text(json.dumps({**config, "dgm_version": "0.1.0"}))
    assert dgm.load(run_dir).config.channel_mults == (1, 2)
    (run_dir / "config.json").write_text(json.dumps({**config, "dgm_version": "0.2.0"}))
    with pytest.raises(DgmError, match="do not fit the model"):
        dgm.load(run_dir)
