"""dgm's diffusion process and samplers against diffusers' schedulers, on the same inputs.

Run in an environment that has diffusers next to torch 2.13.0+cpu (diffusers is not a dependency
of dgm), with dgm's sources on the path:

    python3 -m venv /tmp/peer && /tmp/peer/bin/pip install torch==2.13.0 diffusers
    PYTHONPATH=src /tmp/peer/bin/python benchmarks/parity_diffusers.py

Compared, in float64 where diffusers allows it: the linear and cosine ("squaredcos_cap_v2")
schedules' abar_t; q_sample against ``add_noise``; one ancestral step with the fixed-small and
fixed-large variances against ``DDPMScheduler.step`` (variance_type "fixed_small" / "fixed_large"),
with the same noise; one DDIM step with eta = 0 and eta = 1 against ``DDIMScheduler.step`` (with
``use_clipped_model_output``: dgm derives eps from the clipped x0, as its DDPM step does); the
v-prediction target against ``get_velocity``. Prints the largest absolute difference of each.
"""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from dgm.models import samplers
from dgm.models.diffusion import SCHEDULES, GaussianDiffusion


def main() -> None:
    torch.manual_seed(0)
    T = 1000
    rows = []
    for ours, theirs in (("linear", "linear"), ("cosine", "squaredcos_cap_v2")):
        process = GaussianDiffusion(SCHEDULES[ours](T))
        ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=theirs)
        rows.append((f"abar_t, {ours} schedule", (process.alphas_cumprod - ref.alphas_cumprod.double()).abs().max()))

    process = GaussianDiffusion(SCHEDULES["linear"](T))
    x0, noise = torch.rand(8, 1, 28, 28) * 2 - 1, torch.randn(8, 1, 28, 28)
    t = torch.randint(0, T, (8,))
    ref = DDPMScheduler(num_train_timesteps=T)
    rows.append(("q_sample vs add_noise", (process.q_sample(x0, t, noise) - ref.add_noise(x0, noise, t)).abs().max()))
    v_ref = DDPMScheduler(num_train_timesteps=T, prediction_type="v_prediction").get_velocity(x0, noise, t)
    rows.append(("v target vs get_velocity", (GaussianDiffusion(SCHEDULES["linear"](T), prediction="v")
                                              .training_target(x0, noise, t) - v_ref).abs().max()))

    xt, eps_hat, z = torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)
    for variance, theirs in (("fixed-small", "fixed_small"), ("fixed-large", "fixed_large")):
        for step in (999, 500, 10, 1):
            ours = GaussianDiffusion(SCHEDULES["linear"](T), variance=variance, clip=True)
            ref = DDPMScheduler(num_train_timesteps=T, variance_type=theirs, clip_sample=True)
            ref.set_timesteps(T)
            z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(step))  # the noise diffusers draws
            got = samplers.ddpm_step(ours, eps_hat, xt, step, z)
            want = ref.step(eps_hat, step, xt, generator=torch.Generator().manual_seed(step)).prev_sample
            rows.append((f"DDPM step t={step}, {variance}", (got - want).abs().max()))
    for eta in (0.0, 1.0):
        ours = GaussianDiffusion(SCHEDULES["linear"](T), clip=True)
        ref = DDIMScheduler(num_train_timesteps=T, clip_sample=True, set_alpha_to_one=True, timestep_spacing="leading")
        ref.set_timesteps(50)  # leading spacing: 980, 960, ..., 0 (dgm's timesteps() include 999; the step is the same formula)
        for step in (980, 500, 20):
            prev = step - T // 50
            got = samplers.ddim_step(ours, eps_hat, xt, step, prev, eta, z)
            # dgm recomputes eps from the clipped x0 (so that eta = 1 is exactly the DDPM update): diffusers' option for it
            want = ref.step(eps_hat, step, xt, eta=eta, variance_noise=z, use_clipped_model_output=True).prev_sample
            rows.append((f"DDIM step {step}->{prev}, eta={eta}", (got - want).abs().max()))
    width = max(len(name) for name, _ in rows)
    for name, diff in rows:
        print(f"{name:<{width}}  max |dgm - diffusers| = {float(diff):.2e}")


if __name__ == "__main__":
    main()
