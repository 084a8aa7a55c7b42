"""Sample-quality, mode-coverage, representation and memorisation metrics.

Each metric asks the model only for what it needs (``sample``, ``encode``) and names its feature
network and sample sizes in its qualifier, e.g. ``FID[fmnist-net, 10000 samples vs test n=10000]``.
Samples, their features and the reference features of the data are computed once per
:func:`~dgm.eval.evaluate` call (and the data's are cached on disk, see :mod:`dgm.eval.features`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dgm.data.core import DataSpec, Dataset, to_unit
from dgm.errors import DgmError
from dgm.eval.core import EvalContext, Plan, Result, Work, metric, progress_bar
from dgm.eval.features import FEATURE_BATCH, FeatureExtractor, cache_path, cached_features, feature_extractor
from dgm.eval.fidelity import GaussianStats, frechet_distance, inception_score, kid, precision_recall
from dgm.models.base import GenerativeModel

SAMPLE_BATCH = 500


# --- what the metrics share ------------------------------------------------------------------------
def samples(model: GenerativeModel, ctx: EvalContext) -> Tensor:
    """``ctx.num_samples`` samples of the model, in its data representation, on the CPU: drawn in
    batches of :data:`SAMPLE_BATCH`, each from its own seed (:meth:`EvalContext.spread`: shared by
    the processes of a torchrun launch, the same samples however many draw them)."""

    def draw() -> Tensor:
        sizes = [min(SAMPLE_BATCH, ctx.num_samples - lo) for lo in range(0, ctx.num_samples, SAMPLE_BATCH)]

        def one(size: int) -> Tensor:
            generator = torch.Generator(device=model.device).manual_seed(torch.initial_seed())  # the batch's seed
            return model.sample(size, generator=generator).cpu()

        return torch.cat(ctx.spread(sizes, one, total=len(sizes), desc=f"sampling {ctx.num_samples}"))

    return ctx.once("samples", draw)


def extractor(model: GenerativeModel, ctx: EvalContext) -> FeatureExtractor:
    return ctx.once("extractor", lambda: feature_extractor(ctx.feature_net, model.spec,
                                                           inception_weights=ctx.inception_weights,
                                                           device=model.device))


def features(net: FeatureExtractor, images: Tensor, ctx: EvalContext, desc: str) -> tuple[Tensor, Tensor]:
    """``net(images)``: features and class probabilities, the batches shared by the processes."""
    starts = range(0, len(images), FEATURE_BATCH)
    parts = ctx.spread(starts, lambda lo: net(images[lo:lo + FEATURE_BATCH]), total=len(starts),
                       desc=f"{desc} ({net.name})")
    return torch.cat([f for f, _ in parts]), torch.cat([p for _, p in parts])


def split_images(ctx: EvalContext, split: str) -> Tensor:
    """A whole split as [0, 1] images in the model's representation (binarized data stays binary),
    made once per evaluation (the memorisation grid reuses the training images)."""
    data = ctx.data if split == "test" else require_train(ctx)
    return ctx.once(f"images-{split}", lambda: to_unit(data.tensors().x, data.spec).cpu())


def cache_key(data: Dataset) -> str:
    return f"{data.spec.name.replace('/', '_').replace(':', '_')}-{'train' if data.train else 'test'}-" \
           f"{data.spec.representation}"


def real_features(model: GenerativeModel, ctx: EvalContext, split: str = "test") -> tuple[Tensor, Tensor]:
    data = ctx.data if split == "test" else require_train(ctx)

    def compute() -> tuple[Tensor, Tensor]:
        net, images = extractor(model, ctx), split_images(ctx, split)
        return cached_features(net, images, cache_key(data), world=ctx.world,
                               compute=lambda: features(net, images, ctx, f"features of {split} data"))

    return ctx.once(f"real-{split}", compute)


def sample_features(model: GenerativeModel, ctx: EvalContext) -> tuple[Tensor, Tensor]:
    return ctx.once("fake", lambda: features(extractor(model, ctx), to_unit(samples(model, ctx), model.spec), ctx,
                                             "features of samples"))


def require_train(ctx: EvalContext) -> Dataset:
    if ctx.train is None:
        raise DgmError("this metric needs the training split: pass train= to dgm.evaluate (dgm eval does)")
    return ctx.train


def needs_images(spec: DataSpec) -> str | None:
    return None if spec.is_image else "sample-quality metrics need image data (for 2-D toys use mode_coverage)"


def needs_one_class(spec: DataSpec) -> str | None:
    """IS reads one class variable: refuse data whose own network reads several factors (scene-net)."""
    from dgm.eval.features import card, default_net

    reason = needs_images(spec)
    name = default_net(spec) if reason is None else "inception"
    if name != "inception" and len(card(name).heads) > 1:
        return (f"the inception score needs one class per image, but {name} reads {len(card(name).heads)} factors "
                f"of {spec.name!r}: use fid or caption_match")
    return reason


def needs_labels(spec: DataSpec) -> str | None:
    return None if spec.num_classes else f"{spec.name!r} has no labels to probe"


def needs_modes(spec: DataSpec) -> str | None:
    return None if "modes" in spec.extras else "mode coverage needs a 2-D mixture with known modes (ring8, grid25)"


def versus(model: GenerativeModel, ctx: EvalContext) -> str:
    return f"{extractor(model, ctx).name}, {ctx.num_samples} samples vs {ctx.split}"


# --- what the metrics will cost (the estimate dgm eval prints first) -------------------------------
def sampling_work(model: GenerativeModel, ctx: EvalContext) -> Work:
    generator = torch.Generator(device=model.device).manual_seed(ctx.seed + 1)
    return Work("samples", ctx.num_samples, lambda n: model.sample(n, generator=generator))


def feature_work(model: GenerativeModel, ctx: EvalContext, split: str | None) -> Work:
    """Features of the samples (``split`` None) or of a split's images (no work when cached on disk)."""
    net = extractor(model, ctx)
    if split is None:
        images = ctx.data.tensors(8).x
        return Work("sample features", ctx.num_samples, lambda n: net(to_unit(images[:n], model.spec)), 8)
    data = ctx.data if split == "test" else require_train(ctx)
    images = split_images(ctx, split)
    units = 0 if cache_path(net, images, cache_key(data)).exists() else len(images)
    return Work(f"{split} features", units, lambda n: net(images[:n]), 8)


def sample_quality_plan(splits: tuple[str, ...], then: str = "") -> Callable[[GenerativeModel, EvalContext], Plan]:
    """The plan of a metric of samples and their features against the features of ``splits``."""
    def plan(model: GenerativeModel, ctx: EvalContext) -> Plan:
        work = [sampling_work(model, ctx), feature_work(model, ctx, None)]
        work += [feature_work(model, ctx, split) for split in splits]
        against = f" vs {' and '.join(splits)} data" if splits else ""
        what = f"{ctx.num_samples} samples and their {extractor(model, ctx).name} features{against}{then}"
        return Plan(what, work, "--num-samples N")

    return plan


# --- metrics ------------------------------------------------------------------------------------
@metric("fid", requires=("sample",), data=needs_images, plan=sample_quality_plan(("test",)),
        description="Frechet distance of feature Gaussians, samples vs the evaluation split (Heusel et al. 2017)")
def fid(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    real, _ = real_features(model, ctx)
    fake, _ = sample_features(model, ctx)
    value = frechet_distance(GaussianStats.from_features(fake), GaussianStats.from_features(real))
    return [Result("fid", value, "", f"FID[{versus(model, ctx)}]", ctx.split)]


@metric("kid", requires=("sample",), data=needs_images, plan=sample_quality_plan(("test",)),
        description="kernel inception distance, unbiased MMD^2 with a cubic kernel (Binkowski et al. 2018)")
def kernel_inception_distance(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    real, _ = real_features(model, ctx)
    fake, _ = sample_features(model, ctx)
    size = ctx.kid_subset_size or min(1000, len(real), len(fake))
    mean, std = kid(fake, real, subsets=100, subset_size=size, seed=ctx.seed)
    return [Result("kid", mean, "", f"KID[{versus(model, ctx)}, 100 subsets of {size}]", ctx.split, {"std": std})]


@metric("is", requires=("sample",), data=needs_one_class, plan=sample_quality_plan(()),
        description="inception score exp(E KL(p(y|x) || p(y))), 10 splits (Salimans et al. 2016)")
def inception_score_metric(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    _, probs = sample_features(model, ctx)
    mean, std = inception_score(probs, splits=10)
    name = extractor(model, ctx).name
    classes = probs.shape[1]
    return [Result("is", mean, "", f"IS[{name}, {ctx.num_samples} samples, 10 splits; max {classes}]", ctx.split,
                   {"std": std})]


@metric("precision_recall", requires=("sample",), data=needs_images,
        plan=sample_quality_plan(("test",)),
        description="improved precision and recall, k=3 (Kynkaanniemi et al. 2019)")
def precision_and_recall(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    real, _ = real_features(model, ctx)
    fake, _ = sample_features(model, ctx)
    precision, recall = precision_recall(real, fake, k=3)
    what = f"PR[{versus(model, ctx)}, k=3]"
    return [Result("precision", precision, "", what, ctx.split), Result("recall", recall, "", what, ctx.split)]


@metric("mode_coverage", requires=("sample",), data=needs_modes,
        plan=lambda model, ctx: Plan(f"{ctx.num_samples} samples, nearest modes of {min(ctx.num_samples, 2500)}",
                                     [sampling_work(model, ctx)], "--num-samples N"),
        description="modes captured, % high-quality samples, reverse KL to uniform (VEEGAN / PacGAN protocol)")
def mode_coverage_metric(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    from dgm.eval.toys import mode_coverage

    extras = model.spec.extras
    n = min(ctx.num_samples, 2500)  # the protocol's 2500 samples
    out = mode_coverage(samples(model, ctx)[:n], torch.tensor(extras["modes"]), extras["mode_std"])
    what = f"{n} samples, within 3 sd = {3 * extras['mode_std']}"
    modes = len(extras["modes"])
    return [Result("modes_captured", out["modes_captured"], "modes", f"of {modes}; {what}", ctx.split,
                   {"counts": out["counts"]}),
            Result("high_quality", 100 * out["high_quality"], "%", what, ctx.split),
            Result("reverse_kl", out["reverse_kl"], "nats", f"KL(sample mode histogram || uniform); {what}", ctx.split)]


#: examples of a split whose codes the probes use
PROBE_EXAMPLES = 20000


def latent_means(model: GenerativeModel, data: Dataset, limit: int = PROBE_EXAMPLES, *,
                 progress: bool = False) -> tuple[Tensor, Tensor | None]:
    """The codes ``(N, D)`` (float64, flattened) of the first ``limit`` examples of ``data`` and their
    labels (``None`` for unlabelled data)."""
    data = data.subset(min(limit, len(data)))
    batch = data.tensors()
    starts = range(0, len(data), 500)
    bar = progress_bar(starts, enabled=progress, total=len(starts),
                       desc=f"codes of {'train' if data.train else 'test'} data")
    codes = torch.cat([model.encode(batch.x[i:i + 500]).flatten(1).double().cpu() for i in bar])
    return codes, None if batch.y is None else batch.y.cpu()


def codes(model: GenerativeModel, ctx: EvalContext, split: str) -> tuple[Tensor, Tensor]:
    data = ctx.data if split == "test" else require_train(ctx)
    data = data.known_labels()  # partly labelled (--labels): a probe learns from the known labels only
    return ctx.once(f"codes-{split}", lambda: latent_means(model, data, progress=ctx.progress))


def probe_plan(classifier: str) -> Callable[[GenerativeModel, EvalContext], Plan]:
    def plan(model: GenerativeModel, ctx: EvalContext) -> Plan:
        work = []
        for split in ("train", "test"):
            data = ctx.data if split == "test" else require_train(ctx)
            x = data.tensors(8).x
            work.append(Work(f"{split} codes", min(PROBE_EXAMPLES, len(data)), lambda n, x=x: model.encode(x[:n])))
        return Plan(f"codes of {work[0].units} train and {work[1].units} test examples, then {classifier}", work)

    return plan


@metric("linear_probe", requires=("encode",), data=needs_labels, plan=probe_plan("logistic regression"),
        description="test accuracy of logistic regression on the latent means (representation quality)")
def linear_probe_metric(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    from dgm.eval.probes import linear_probe

    train_z, train_y = codes(model, ctx, "train")
    test_z, test_y = codes(model, ctx, "test")
    accuracy = linear_probe(train_z, train_y, test_z, test_y, seed=ctx.seed)
    return [Result("linear_probe", 100 * accuracy, "%", f"logistic regression on E[z|x], {len(train_z)} train codes",
                   ctx.split)]


@metric("knn", requires=("encode",), data=needs_labels, plan=probe_plan("5-NN"),
        description="test accuracy of 5-nearest-neighbours on the latent means")
def knn_metric(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    from dgm.eval.probes import knn_accuracy

    train_z, train_y = codes(model, ctx, "train")
    test_z, test_y = codes(model, ctx, "test")
    accuracy = knn_accuracy(train_z, train_y, test_z, test_y, k=5)
    return [Result("knn", 100 * accuracy, "%", f"5-NN on E[z|x], {len(train_z)} train codes", ctx.split)]


def class_probabilities(model: GenerativeModel, data: Dataset, *, progress: bool = False) -> tuple[Tensor, Tensor]:
    """The model's own classifier's q(y|x) on ``data`` ``(N, K)`` and the true labels ``(N,)``."""
    probs, labels = [], []
    bar = progress_bar(data.batches(500), enabled=progress, total=data.num_batches(500), desc="classifying")
    with torch.inference_mode():
        for batch in bar:
            probs.append(model.classify(batch.x).float().cpu())
            labels.append(batch.y.cpu())
    return torch.cat(probs), torch.cat(labels)


def classification_plan(model: GenerativeModel, ctx: EvalContext) -> Plan:
    x = ctx.data.tensors(8).x
    return Plan(f"q(y|x) on {len(ctx.data)} examples", [Work("classify", len(ctx.data), lambda n: model.classify(x[:n]))])


@metric("classification_error", requires=("classify",), data=needs_labels, plan=classification_plan,
        description="test error of the model's own classifier, argmax q(y|x) (semi-supervised models)")
def classification_error(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    from dgm.eval.probes import error_rate

    probs, labels = class_probabilities(model, ctx.data, progress=ctx.progress)
    error, per_class = error_rate(probs.argmax(1), labels, model.spec.num_classes)
    return [Result("classification_error", error, "%", "argmax q(y|x)", ctx.split, {"per_class": per_class})]


@metric("memorization", requires=("sample",), data=needs_images, default=False,
        plan=sample_quality_plan(("train", "test"), ", then their nearest training neighbours"),
        description="nearest-training-neighbour distances of samples vs of test examples, in feature space")
def memorization(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    from dgm.eval.memorization import memorization_summary, nearest_neighbours
    from dgm.io.images import data_uri, grid

    train, test = real_features(model, ctx, "train")[0], real_features(model, ctx)[0]
    fake, _ = sample_features(model, ctx)
    summary = memorization_summary(fake, train, test, progress=ctx.progress)
    # a picture for the report: 16 samples (top) above their nearest training images (bottom)
    _, index = nearest_neighbours(fake[:16], train)
    pairs = torch.cat([to_unit(samples(model, ctx)[:16], model.spec),
                       split_images(ctx, "train")[index]])
    scale = max(1, 64 // model.spec.shape[-1])
    figure = data_uri(grid(pairs, nrow=16, scale=scale))
    what = f"{extractor(model, ctx).name} features, {len(fake)} samples / {len(test)} test vs {len(train)} train"
    return [Result("nn_distance_ratio", summary["median_ratio"], "",
                   f"median NN distance to train, samples / test; {what}", ctx.split,
                   {**summary, "figure": figure}),
            Result("copy_fraction", 100 * summary["copy_fraction"], "%",
                   f"samples closer to train than 99% of test examples are; {what}", ctx.split)]
