"""Whether generated images show what their captions say: ``caption_match``.

DALL-E (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation", arXiv:2102.12092) was judged by
people and by rerankers; on data whose images are rendered from known factors the question has an
exact answer instead. A shipped reader (:mod:`dgm.eval.features`) reads each generated image back,
and an image matches its caption when every factor the caption fixes is read as the caption says::

    match(x, c) = prod_k [ read_k(x) = f_k(c) ]  over the factors k that caption c specifies

* ``scenes`` (:mod:`dgm.data.scenes`): ``scene-net`` reads every factor; the caption fixes the count,
  object A's shape, colour and size, and for two objects object B's and the relation, never the
  position. Captions are scored in two groups: those of compositions seen in training, and the
  held-out ones (a green triangle), which measure composition.
* labelled data captioned by class names (:func:`dgm.data.captions.caption_ids`): the domain
  classifier trained on that very dataset (``fmnist-net`` for Fashion-MNIST) reads the class;
  one group.

Each caption of the evaluation split (at most :data:`CAPTIONS_PER_GROUP` per group, in split
order) gets one image with ``rerank=1``, then the best of :data:`RERANK` candidates by the model's
own contrastive score (DALL-E's reranking with CLIP, sec. 2.5 of the paper). A model that cannot
rerank (its ``sample_captioned`` refuses ``rerank > 1`` with a DgmError) gets the plain scores only.
The fraction is only as good as the reader: its own accuracy on exact renders is in its card and
in ``details``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dgm.data import scenes
from dgm.data.captions import caption_ids, caption_vocabulary
from dgm.data.core import Batch, DataSpec, Dataset, to_unit
from dgm.errors import DgmError
from dgm.eval.core import EvalContext, Plan, Result, Work, metric, progress_bar
from dgm.eval.features import DOMAIN_NETS, Classifier, card, load_domain_net
from dgm.models.base import GenerativeModel

CAPTIONS_PER_GROUP = 500  # captions scored per group (seen, held out), fewer with --num-samples
RERANK = 8  # candidates per caption of the reranked score
READ_BATCH = 500  # images per forward pass of the reader


# --- the scoring: read, then compare -------------------------------------------------------------------
@torch.inference_mode()
def read(net: Classifier, images: Tensor, batch_size: int = READ_BATCH) -> np.ndarray:
    """The reader's most probable class of each head, ``(N, heads)`` int64, of images ``(N, C, H, W)``
    in [0, 1]."""
    device = next(net.parameters()).device
    net.eval()
    out = [net.read(images[i:i + batch_size].to(device).float()).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(net.heads)), np.int64)


def factor_matches(read_factors: np.ndarray, wanted: np.ndarray, specified: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: every specified factor ``(N, K)`` was read as wanted (the others are free)."""
    return ((read_factors == wanted) | ~specified).all(axis=1)


def scene_matches(net: Classifier, images: Tensor, texts: list[str]) -> tuple[np.ndarray, dict[str, float]]:
    """Whether each image ``(N, 3, 32, 32)`` in [0, 1] shows its scene caption, ``(N,)`` bool, and for
    each factor some caption fixes, the fraction of those captions' images that show it."""
    wanted = scenes.caption_factors(texts)
    fixed, got = scenes.specified(wanted), read(net, images)
    right = got == wanted
    per_factor = {name: float(right[fixed[:, k], k].mean())
                  for k, name in enumerate(scenes.FACTORS) if fixed[:, k].any()}
    return factor_matches(got, wanted, fixed), per_factor


def class_matches(net: Classifier, images: Tensor, classes: np.ndarray) -> np.ndarray:
    """Whether the reader's class of each image is the caption's, ``(N,)`` bool."""
    return read(net, images)[:, 0] == classes


# --- which reader, which captions ------------------------------------------------------------------------
def own_net(spec: DataSpec) -> str | None:
    """The domain network trained on ``spec``'s dataset (not merely one of its image size)."""
    return next((n for n, d in DOMAIN_NETS.items()
                 if d["dataset"] == spec.name and d["in_shape"] == tuple(spec.shape)), None)


def readable(spec: DataSpec) -> str | None:
    """Why ``spec``'s captions cannot be read back from images, or None."""
    if not spec.is_image or own_net(spec) is None or caption_vocabulary(spec) is None:
        readers = ", ".join(f"{d['dataset']} ({n})" for n, d in DOMAIN_NETS.items())
        return (f"caption_match reads images back with a classifier trained on the dataset; there is one for "
                f"{readers} only")
    return None


@dataclass
class Group:
    """Captions scored together: ``ids (n, Lc)``, their texts, and the class of each (class captions)."""

    name: str  # "seen", "held-out", or "" for class captions
    ids: Tensor
    texts: list[str]
    classes: np.ndarray | None
    available: int  # captions of the group in the split, before the cap


def caption_groups(data: Dataset, cap: int) -> list[Group]:
    """The groups of the split's captions, the first ``cap`` of each: seen and held-out scene
    captions, or the class captions of the labelled examples."""
    spec = data.spec
    batch = data.tensors()
    vocab = caption_vocabulary(spec)
    if batch.captions is not None:
        ids = batch.captions.cpu()
        texts = vocab.decode(ids)
        held = scenes.is_heldout(scenes.caption_factors(texts))
        return [Group(name, ids[rows[:cap]], [texts[i] for i in rows[:cap]], None, len(rows))
                for name, rows in (("seen", np.flatnonzero(~held)), ("held-out", np.flatnonzero(held)))]
    known = np.flatnonzero(batch.y.cpu().numpy() >= 0) if batch.y is not None else np.zeros(0, np.int64)
    if not len(known):
        raise DgmError(f"the evaluation split of {spec.name!r} has no labelled examples to caption: "
                       "evaluate on a split with labels")
    rows = torch.from_numpy(known[:cap])
    y = batch.y.cpu()[rows]
    ids = caption_ids(Batch(batch.x[rows], y), spec).cpu()
    return [Group("", ids, vocab.decode(ids), y.numpy(), len(known))]


def captions_per_group(ctx: EvalContext) -> int:
    return min(CAPTIONS_PER_GROUP, ctx.num_samples)


# --- generation -------------------------------------------------------------------------------------------
def generate(model: GenerativeModel, ids: Tensor, *, rerank: int, seed: int, batch_size: int,
             progress: bool = False) -> Tensor:
    """One image per caption ``ids (N, Lc)`` (the best of ``rerank``), in [0, 1] on the CPU; seeded."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    size = max(1, batch_size // rerank)  # the model draws rerank candidates per caption at once
    starts = range(0, len(ids), size)
    desc = f"{len(ids)} captioned samples" + (f", best of {rerank}" if rerank > 1 else "")
    out = []
    for lo in progress_bar(starts, enabled=progress, total=len(starts), desc=desc):
        x = model.sample_captioned(ids[lo:lo + size].to(model.device), generator=generator, rerank=rerank)
        out.append(to_unit(x, model.spec).cpu())
    return torch.cat(out)


# --- the metric ---------------------------------------------------------------------------------------------
def caption_match_plan(model: GenerativeModel, ctx: EvalContext) -> Plan:
    groups = caption_groups(ctx.data, captions_per_group(ctx))
    n = sum(len(g.ids) for g in groups)
    ids = torch.cat([g.ids for g in groups])
    generator = torch.Generator(device=model.device).manual_seed(ctx.seed + 1)

    def probe(rerank: int):
        return lambda k: model.sample_captioned(ids[:k].to(model.device), generator=generator, rerank=rerank)

    named = ", ".join(f"{len(g.ids)} {g.name}".rstrip() for g in groups)
    return Plan(f"{named} captions: 1 sample each, then the best of {RERANK}; read back by "
                f"{own_net(ctx.data.spec)}",
                [Work("captioned samples", n, probe(1), 4), Work("reranked captioned samples", n, probe(RERANK), 2)],
                "--num-samples N (at most N captions per group)")


@metric("caption_match", requires=("sample_captioned",), data=readable, plan=caption_match_plan, default=False,
        description="fraction of captioned samples that a shipped classifier reads back as their caption, seen "
                    "and held-out compositions, 1 sample and best of 8 (DALL-E, Ramesh et al. 2021)")
def caption_match(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    spec = ctx.data.spec
    name = own_net(spec)
    info = card(name)
    net = load_domain_net(name, model.device)
    groups = caption_groups(ctx.data, captions_per_group(ctx))
    ids = torch.cat([g.ids for g in groups])
    bounds = np.cumsum([0] + [len(g.ids) for g in groups])
    results = []
    for rerank in (1, RERANK):
        try:
            images = generate(model, ids, rerank=rerank, seed=ctx.seed, batch_size=ctx.batch_size,
                              progress=ctx.progress)
        except DgmError as e:
            if rerank == 1:
                raise
            # a model without a reranker (alignDRAW) still gets its plain score
            print(f"dgm: note: caption_match with reranking left out: {e}", file=sys.stderr)
            break
        how = "1 sample per caption" if rerank == 1 else f"reranked, {rerank} candidates"
        for g, lo, hi in zip(groups, bounds[:-1], bounds[1:]):
            if not len(g.ids):
                continue
            details = {"captions": len(g.ids), "reader_accuracy": info.test_accuracy}
            if g.classes is None:
                matches, details["per_factor"] = scene_matches(net, images[lo:hi], g.texts)
                what = f"all specified factors read by {name}"
            else:
                matches = class_matches(net, images[lo:hi], g.classes)
                what = f"class read by {name}"
            metric_name = "caption_match" + (f"_{g.name.replace('-', '')}" if g.name else "") + \
                          ("" if rerank == 1 else f"_rerank{rerank}")
            split = f"{ctx.split}, {len(g.ids)} {g.name + ' ' if g.name else ''}captions of {g.available}"
            results.append(Result(metric_name, float(matches.mean()), "fraction", f"{what}; {how}", split, details))
    return results
