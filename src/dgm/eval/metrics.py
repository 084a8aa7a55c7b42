"""The built-in metrics: likelihoods (exact or bounded) and posterior-collapse diagnostics."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dgm.eval.core import EvalContext, Plan, Result, Work, metric, register_monitor
from dgm.eval.likelihood import bits_per_dim, nats_per_unit
from dgm.models.base import GenerativeModel, capabilities

#: examples x importance samples per forward pass of an IWAE bound (memory vs speed)
IWAE_SAMPLES_PER_PASS = 8192


def likelihood_results(name: str, log_px: Tensor, qualifier: str, model: GenerativeModel,
                       ctx: EvalContext) -> list[Result]:
    """Mean NLL in nats, and in bits/dim where the data is discrete (see :mod:`dgm.eval.likelihood`);
    for padded tokens and points, also per real token (bits) or per real point (nats, bits/dim)."""
    nll = -log_px.double().mean().item()
    stderr = log_px.double().std().item() / math.sqrt(len(log_px)) if len(log_px) > 1 else 0.0
    spec = model.spec
    what = f"{qualifier}, {spec.representation}"
    if spec.is_variable_length:
        return [Result(name, nll, "nats", f"{qualifier}, per {EXAMPLE[spec.kind]}", ctx.split, {"stderr": stderr}),
                *per_unit_results(name, log_px, qualifier, model, ctx)]
    out = [Result(name, nll, "nats", what, ctx.split, {"stderr": stderr})]
    bpd = bits_per_dim(nll, spec, model.likelihood_kind)
    if bpd is not None:
        unit = "bits/sample" if spec.kind == "audio" else "bits/dim"  # an audio clip's dimensions are its samples
        out.append(Result(name, bpd, unit, what, ctx.split, {"stderr": stderr / (spec.dim * math.log(2))}))
    return out


#: what one example of a padded kind is, and what it is counted in
EXAMPLE = {"tokens": "sequence", "points": "set"}
UNIT = {"tokens": "token", "points": "point"}


def per_unit_results(name: str, log_px: Tensor, qualifier: str, model: GenerativeModel,
                     ctx: EvalContext) -> list[Result]:
    """Bits per real token, or nats and bits per real point and bits/dim of the continuous points: the
    split's lengths count the real units of each example (padding is left out)."""
    spec = model.spec
    real = ctx.data.lengths[:len(log_px)]  # (N,) in the order of the evaluation batches
    units = model.scored_units(real)  # a language model also scores each sequence's end token
    nats, stderr = nats_per_unit(log_px, units)
    unit = UNIT[spec.kind]
    ends = f", with {int((units - real).sum())} end tokens" if bool((units != real).any()) else ""
    what = (f"{qualifier}, per scored {unit} ({int(units.sum())} in {len(units)} {EXAMPLE[spec.kind]}s{ends}, "
            f"padding left out)")
    if spec.kind == "tokens":
        return [Result(name, nats / math.log(2), "bits/token", what, ctx.split, {"stderr": stderr / math.log(2)})]
    d = spec.shape[-1]  # coordinates of one point
    return [Result(name, nats, "nats/point", what, ctx.split, {"stderr": stderr}),
            Result(name, nats / math.log(2), "bits/point", what, ctx.split, {"stderr": stderr / math.log(2)}),
            Result(name, nats / (d * math.log(2)), "bits/dim",
                   f"{what}, density of the continuous coordinates (no dequantization term)", ctx.split,
                   {"stderr": stderr / (d * math.log(2))})]


def iwae_log_px(model: GenerativeModel, ctx: EvalContext, k: int) -> Tensor:
    chunk = min(k, 500)
    batch = max(1, IWAE_SAMPLES_PER_PASS // chunk)
    return ctx.once(f"iwae-{k}", lambda: ctx.per_example(lambda x, **options: model.iwae_bound(x, k, chunk=chunk, **options),
                                                         batch, f"IWAE k={k}"))


def elbo_log_px(model: GenerativeModel, ctx: EvalContext) -> Tensor:
    """The ELBO of every example, computed once per evaluation (``nll`` of a model without a tighter
    bound and ``elbo`` share it: for a diffusion model it is T network calls per example)."""
    return ctx.once("elbo", lambda: ctx.per_example(model.elbo, desc=model.elbo_description))


def first_examples(ctx: EvalContext, n: int) -> Tensor:
    return ctx.data.tensors(min(n, len(ctx.data))).x


def first_inputs(ctx: EvalContext, n: int) -> tuple[Tensor, dict[str, Tensor]]:
    """The first ``n`` examples and the keyword arguments a likelihood takes with them (the mask of
    padded data, as :meth:`EvalContext.inputs`)."""
    batch = ctx.data.tensors(min(n, len(ctx.data)))
    return batch.x, ({} if batch.mask is None else {"mask": batch.mask})


def on_first(ctx: EvalContext, n: int, method: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Tensor:
    """``method(x, *args, **kwargs)`` on the first ``n`` examples, with their mask where padded."""
    x, options = first_inputs(ctx, n)
    return method(x, *args, **kwargs, **options)


# --- what each likelihood will cost (the estimate dgm eval prints first) ---------------------------
def log_prob_work(model: GenerativeModel, ctx: EvalContext) -> Work:
    return Work("exact log-likelihoods", len(ctx.data), lambda n: on_first(ctx, n, model.log_prob))


def iwae_work(model: GenerativeModel, ctx: EvalContext) -> Work:
    return Work(f"IWAE k={ctx.k} bounds", len(ctx.data),
                lambda n: on_first(ctx, n, model.iwae_bound, ctx.k, chunk=min(ctx.k, 500)))


def elbo_work(model: GenerativeModel, ctx: EvalContext) -> Work:
    return Work("ELBO", len(ctx.data), lambda n: on_first(ctx, n, model.elbo))


def nll_plan(model: GenerativeModel, ctx: EvalContext) -> Plan:
    have, n = capabilities(model), len(ctx.data)
    if "log_prob" in have:
        return Plan(f"exact log-likelihood on {n} examples", [log_prob_work(model, ctx)], "--max-examples N")
    if "iwae_bound" in have:
        return Plan(f"IWAE bound, k={ctx.k}, on {n} examples", [iwae_work(model, ctx)], "--max-examples N or --k K")
    return Plan(f"{model.elbo_description}, on {n} examples", [elbo_work(model, ctx)], "--max-examples N")


@metric("nll", requires_any=("log_prob", "iwae_bound", "elbo"), description="negative log-likelihood in nats and bits/dim: exact where the "
        "model has it, else the tightest bound it has (IWAE k, then ELBO)", plan=nll_plan)
def nll(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    return likelihood_results("nll", *best_log_px(model, ctx), model, ctx)


def best_log_px(model: GenerativeModel, ctx: EvalContext) -> tuple[Tensor, str]:
    """log p(x) of every example of the split by the best estimate the model has: exact where it
    has ``log_prob``, else the IWAE bound with ``ctx.k`` samples, else the ELBO; and what it is."""
    have = capabilities(model)
    if "log_prob" in have:
        return ctx.per_example(model.log_prob, desc="log p(x)"), model.log_prob_description
    if "iwae_bound" in have:
        return iwae_log_px(model, ctx, ctx.k), f"bound (IWAE k={ctx.k})"
    return elbo_log_px(model, ctx), f"bound ({model.elbo_description})"


@metric("elbo", requires=("elbo",), description="negative ELBO (VAEs: one-sample Monte Carlo, analytic KL; "
        "diffusion: the variational bound)",
        plan=lambda model, ctx: Plan(f"{model.elbo_description}, on {len(ctx.data)} examples",
                                     [elbo_work(model, ctx)], "--max-examples N"))
def elbo(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    return likelihood_results("neg_elbo", elbo_log_px(model, ctx), f"bound ({model.elbo_description})", model, ctx)


@metric("iwae", requires=("iwae_bound",), description="negative IWAE bound with k importance samples",
        default=False, plan=lambda model, ctx: Plan(f"IWAE bound, k={ctx.k}, on {len(ctx.data)} examples",
                                                    [iwae_work(model, ctx)], "--max-examples N or --k K"))
def iwae(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    return likelihood_results("neg_iwae", iwae_log_px(model, ctx, ctx.k), f"bound (IWAE k={ctx.k})", model, ctx)


#: Burda et al. 2016, sec. 5.2: a unit is active when Cov_x(E_q[z_u | x]) exceeds this
ACTIVE_UNIT_THRESHOLD = 1e-2


def active_units(means: Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> tuple[int, Tensor]:
    """Number of active latent units and the activity A_u = Var_x(E_q[z_u|x]) of each, from the
    posterior means ``(N, latent_dim)`` of a data set."""
    activity = means.double().var(0, unbiased=True)
    return int((activity > threshold).sum()), activity


def posterior_plan(model: GenerativeModel, ctx: EvalContext) -> Plan:
    def probe(n: int) -> None:
        x = first_examples(ctx, n)
        model.kl_per_dim(x)
        model.encode(x)

    return Plan(f"KL per latent dimension and posterior means of {len(ctx.data)} examples",
                [Work("posterior", len(ctx.data), probe)], "--max-examples N")


@metric("posterior_collapse", requires=("kl_per_dim", "encode"),
        description="KL per latent dimension and active units (Burda et al. 2016)", plan=posterior_plan)
def posterior_collapse(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    kl_rows, means = ctx.per_example(lambda x, **_: (model.kl_per_dim(x).double(), model.encode(x).double()),
                                     desc="posterior")
    kl = kl_rows.mean(0)  # (latent_dim,)
    count, activity = active_units(means)
    dims = len(kl)
    return [
        Result("kl", kl.sum().item(), "nats", model.kl_description, ctx.split,
               {"per_dim": [round(v, 5) for v in kl.tolist()]}),
        Result("active_units", count, "units", f"of {dims}, Var_x E[z|x] > {ACTIVE_UNIT_THRESHOLD}", ctx.split,
               {"activity": [round(v, 5) for v in activity.tolist()]}),
        Result("collapsed_dims", int((kl < 0.01).sum()), "units", f"of {dims}, KL < 0.01 nats", ctx.split),
    ]


def kl_per_layer_plan(model: GenerativeModel, ctx: EvalContext) -> Plan:
    return Plan(f"KL term of each stochastic layer on {len(ctx.data)} examples",
                [Work("KL per layer", len(ctx.data), lambda n: model.kl_per_layer(first_examples(ctx, n)))],
                "--max-examples N")


@metric("kl_per_layer", requires=("kl_per_layer",), description="KL term of each stochastic layer of a "
        "hierarchical VAE (layer 1 next to the data), nats: which layers the model uses", plan=kl_per_layer_plan)
def kl_per_layer(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    kl = ctx.per_example(lambda x, **_: model.kl_per_layer(x).double(), desc="KL per layer")  # (N, L)
    n, layers = kl.shape
    stderr = kl.std(0) / math.sqrt(n) if n > 1 else torch.zeros(layers, dtype=kl.dtype)
    return [Result(f"kl_layer{i + 1}", kl[:, i].mean().item(), "nats",
                   f"layer {i + 1} of {layers} (1: next to x), its term of the {model.elbo_description}", ctx.split,
                   {"stderr": stderr[i].item()})
            for i in range(layers)]


# --- held-out likelihood during training ------------------------------------------------------------
@register_monitor("heldout_nll")
class HeldOutNLLMonitor:
    """Trainer callback: the held-out negative log-likelihood every ``every`` epochs, in bits per
    scored unit (per character of text: :meth:`~dgm.models.base.GenerativeModel.scored_units`; per
    dimension otherwise) on the first ``max_examples`` test examples: exact where the model has
    ``log_prob``, else its ELBO (an upper bound, drawn with a fixed seed so a resumed run logs the
    same numbers). The report plots it beside the training curve."""

    needs_test = True  # run.monitors passes the test split
    logs = {"test/bits": "held-out negative log-likelihood in bits per character (per dimension for "
                         "fixed-size data): exact, or the negative ELBO where the model has no exact likelihood"}

    def __init__(self, *, test: Any, max_examples: int = 500, every: int = 1, batch_size: int = 128) -> None:
        self.test, self.max_examples, self.every, self.batch_size = test, max_examples, every, batch_size

    def on_epoch_end(self, trainer: Any, epoch: int) -> dict[str, float] | None:
        if (epoch + 1) % self.every:
            return None
        model = trainer.model
        exact = "log_prob" in capabilities(model)
        was_training = model.training
        model.eval()
        log_pxs, units = [], []
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the ELBO's draws: the same at every epoch and after a resume
            data = self.test.subset(min(self.max_examples, len(self.test))).to(model.device)
            for batch in data.batches(self.batch_size):
                options = {} if batch.mask is None else {"mask": batch.mask}
                log_pxs.append(model.log_prob(batch.x, **options) if exact else model.elbo(batch.x, **options))
                units.append(model.scored_units(batch.mask.sum(1)) if batch.mask is not None else
                             torch.full((len(batch.x),), model.spec.dim, device=batch.x.device))
        model.train(was_training)
        nats, _ = nats_per_unit(torch.cat(log_pxs), torch.cat(units))
        return {"test/bits": nats / math.log(2)}
