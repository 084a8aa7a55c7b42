"""Convergence diagnostics of two-player games: the duality gap and the proximal duality gap.

For a game with value M(G, D) that the critic D maximises and the generator G minimises,

    DG(G, D)   = max_D' M(G, D') - min_G' M(G', D)                   (Grnarova et al. 2019, eq. 2)
    DG^l(G, D) = max_D' M(G, D') - min_G' M^l(G', D)                 (Sidheekh et al. 2021, eq. 6)
    M^l(G', D) = max_D~ [M(G', D~) - l ||D~ - D||^2]                 (Farnia & Ozdaglar 2020)

Both are >= 0 and 0 at a (proximal) equilibrium; DG^l <= DG, and unlike DG the proximal gap also
goes to zero at the proximal equilibria GANs reach when no Nash equilibrium exists (Sidheekh et
al. 2021, arXiv:2105.04801). The distance between critics is measured on their input gradients,
``||D~ - D||^2 = E_x ||grad_x D~(x) - grad_x D(x)||^2`` on real data, as in the reference code.

Estimation, following the reference protocol: the max and min are approximated by training a copy
of one player against the fixed other, each copy first perturbed with small Gaussian noise (the
"perturbed" duality gap, which escapes the stationary point the players may sit on), with the
players' own training losses (so a WGAN-GP critic keeps its penalty). Every value is measured on
one fixed evaluation set (real examples and generator noise), and the players themselves are
candidates of the max and the min, so the estimates keep the true gaps' order:
``M1 >= M(G, D) >= M2`` and ``M2 <= M2^l <= M1``, hence ``DG >= DG^l >= 0`` exactly.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dgm.data.core import Batch, Dataset
from dgm.eval.core import register_monitor


@dataclass
class DualityGap:
    """Estimates (nats for the log-loss games; the game's own unit otherwise)."""

    value: float  # M(G, D) of the players as they are
    m1: float  # max_D' M(G, D'): the worst-case critic against G
    m2: float  # min_G' M(G', D): the worst-case generator against D
    m2_proximal: float  # min_G' M^l(G', D)

    @property
    def plain(self) -> float:
        return self.m1 - self.m2

    @property
    def proximal(self) -> float:
        return self.m1 - self.m2_proximal


def critic_distance(critic: Any, reference: Any, batch: Batch) -> Tensor:
    """E_x ||grad_x D~(x) - grad_x D(x)||^2 over the real examples of ``batch`` (differentiable in D~)."""
    x = batch.x.float().detach().requires_grad_(True)
    moved = critic.critic(critic.real_inputs(Batch(x, batch.y)), batch.y)[0]
    (grad,) = torch.autograd.grad(moved.sum(), x, create_graph=True)
    x_ref = batch.x.float().detach().requires_grad_(True)
    fixed = reference.critic(reference.real_inputs(Batch(x_ref, batch.y)), batch.y)[0]
    (grad_ref,) = torch.autograd.grad(fixed.sum(), x_ref)
    return (grad - grad_ref).flatten(1).pow(2).sum(1).mean()


def duality_gap(model: Any, data: Dataset, *, steps: int = 200, inner_steps: int = 5, lam: float = 0.1,
                batch_size: int = 256, eval_size: int = 2048, perturb: float = 1e-3, seed: int = 0,
                progress: bool = False) -> DualityGap:
    """Estimate the duality gap and the proximal duality gap of an adversarial model.

    Args:
        model: a model with ``critic`` and ``generator`` phases, ``critic_modules()`` and
            ``game_value(batch, draw)``, ``draw(n)``, ``critic(inputs, y)``, ``real_inputs(batch)``
            (:class:`dgm.models.gan.GAN` and its variants).
        data: the training split (the game's data), in the model's representation.
        steps: optimiser steps of each worst-case copy.
        inner_steps: steps of the proximal critic per step of the proximal worst-case generator.
        lam: the proximal weight l; a large l makes DG^l approach DG.
        perturb: standard deviation of the noise added to each copy's parameters first.
        seed: seeds the evaluation set, the batches and the perturbations; the caller's random
            state is left as it was.
        progress: show a progress bar over the optimiser steps of the worst-case copies.
    """
    from dgm.models.base import Progress
    from dgm.models.gan import CRITIC, GENERATOR

    rounds = max(1, steps // inner_steps)
    # M1 and M2 (steps each), M2^l (rounds of inner_steps + 1), two proximal values (inner_steps each)
    total_steps = 2 * steps + rounds * (inner_steps + 1) + 2 * inner_steps
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc="duality gap", unit="step", leave=False, dynamic_ncols=True)

    was_training = model.training
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        fixed = data.subset(min(eval_size, len(data)))
        eval_batch = Batch(fixed.present(torch.arange(len(fixed), device=data.device), g), fixed.labels)
        eval_draw = model.draw(len(fixed))

        def batches():  # fresh training batches, for as long as asked
            while True:
                yield from data.batches(batch_size, shuffle=True, drop_last=True, generator=g)

        stream = batches()

        def value(player: Any) -> float:
            player.eval()
            with torch.inference_mode():
                out = float(player.game_value(eval_batch, eval_draw))
            player.train()
            return out

        def train(player: Any, phase_name: str, n: int, proximal: bool = False, checkpoints: int = 0) -> list[float]:
            """``n`` steps of one player of ``player`` on its own training loss (for the critic, with
            ``proximal``, plus l ||critic - D||^2). Returns the value M at ``checkpoints`` evenly
            spaced points of the way (each point is a candidate player: an optimiser that overshoots
            keeps the best player it passed)."""
            phase = next(p for p in player.phases() if p.name == phase_name)
            optimizer = torch.optim.Adam(phase.parameters, lr=phase.lr or 1e-3, betas=phase.betas or (0.9, 0.999))
            every = max(1, n // checkpoints) if checkpoints else 0
            values = []
            for i in range(1, n + 1):
                batch = next(stream)
                loss = player.loss(batch, phase_name, Progress()).loss
                if proximal:
                    loss = loss + lam * critic_distance(player, model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if phase.after_step is not None:
                    phase.after_step()
                if bar is not None:
                    bar.update()
                if every and (i % every == 0 or i == n):
                    values.append(value(player))
            player.zero_grad(set_to_none=True)
            return values

        def copy_of(phase_name: str) -> Any:
            player = copy.deepcopy(model).train()
            phase = next(p for p in player.phases() if p.name == phase_name)
            with torch.no_grad():
                for p in phase.parameters:
                    p.add_(perturb * torch.randn(p.shape, generator=g).to(p.device, p.dtype))
            return player

        def reset_critic(player: Any) -> None:
            for mine, original in zip(player.critic_modules(), model.critic_modules()):
                mine.load_state_dict(original.state_dict())

        def proximal_value(player: Any) -> tuple[float, float, float]:
            """M^l(G', D) for the generator G' of ``player`` (D itself is a candidate of its max),
            M(G', D~) of the adapted critic D~, and M(G', D)."""
            reset_critic(player)
            at_d = value(player)
            train(player, CRITIC, inner_steps, proximal=True)
            adapted = value(player)
            player.eval()
            distance = float(critic_distance(player, model, eval_batch).detach())
            player.train()
            return max(at_d, adapted - lam * distance), adapted, at_d

        base = value(model)
        # M1: a copy of the critic trained against the fixed generator
        critic = copy_of(CRITIC)
        m1 = max([base, *train(critic, CRITIC, steps, checkpoints=10)])
        # M2: a copy of the generator trained against the fixed critic
        generator = copy_of(GENERATOR)
        m2 = min([base, *train(generator, GENERATOR, steps, checkpoints=10)])
        # M2^l: a copy of the generator trained against proximal critics, each adapted afresh from D
        prox = copy_of(GENERATOR)
        for _ in range(rounds):
            reset_critic(prox)
            train(prox, CRITIC, inner_steps, proximal=True)
            train(prox, GENERATOR, 1)
        prox_value, _, prox_at_d = proximal_value(prox)
        g_value, adapted_vs_g, _ = proximal_value(copy.deepcopy(model).train())
        # every player found is a candidate of every max and min it can enter
        m1 = max(m1, adapted_vs_g)
        m2 = min(m2, prox_at_d)
        m2_proximal = min(prox_value, g_value)
    if bar is not None:
        bar.close()
    model.train(was_training)
    return DualityGap(base, m1, m2, m2_proximal)


@register_monitor("duality_gap")
class DualityGapMonitor:
    """Trainer callback: estimates the plain and proximal duality gaps every ``every`` epochs and
    logs them (``dg/plain``, ``dg/proximal``) in metrics.csv; the report plots them, described by
    :attr:`logs`. A progress bar shows the estimation when the trainer shows progress."""

    #: what the monitor logs, for the report's caption
    logs = {"dg/plain": "the duality gap DG (Grnarova et al. 2019), 0 at an equilibrium",
            "dg/proximal": "the proximal duality gap DG^l (Sidheekh et al. 2021), 0 at a proximal equilibrium",
            "dg/value": "the game value M(G, D) of the players"}

    def __init__(self, *, every: int = 1, steps: int = 200, lam: float = 0.1) -> None:
        self.every, self.steps, self.lam = every, steps, lam

    def on_epoch_end(self, trainer: Any, epoch: int) -> dict[str, float] | None:
        if (epoch + 1) % self.every:
            return None
        gap = duality_gap(trainer.model, trainer.data, steps=self.steps, lam=self.lam,
                          batch_size=trainer.config.batch_size, seed=trainer.config.seed + epoch,
                          progress=trainer.config.progress)
        return {"dg/plain": gap.plain, "dg/proximal": gap.proximal, "dg/value": gap.value}
