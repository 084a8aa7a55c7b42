"""Semi-supervised classification with a trained model: its test error from few labels.

One command for every model that can classify, whatever its family, so the numbers sit side by
side (Kingma et al. 2014, arXiv:1406.5298, Table 1 compares exactly these):

* a model with its own classifier (``classify``: M2, M1+M2, the partially supervised VAE) is
  scored by argmax q(y|x), learned from the labels of its run (``--labels`` when it trained);
* a model with an encoder (``encode``: a VAE, BiGAN, PPCA, ...) gets a *probe*: logistic regression
  fit on the codes E[z|x] of the labelled training examples alone (the run's ``--labels`` subset, or
  ``--labels N`` chosen here the same way, class-balanced with ``data.seed``), scored on the test
  codes; that is M1 + a classifier when the model is a VAE.

The test error goes into the run's ``eval.json`` as ``classification_error`` (with how it was
obtained), so ``dgm compare`` ranks the runs on it.
"""
from __future__ import annotations

import argparse
from typing import Literal

import torch

from dgm.apps import App, register_app
from dgm.apps.options import POSITIVE
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, capabilities

Via = Literal["auto", "classifier", "probe"]


def labelled_training_split(run_dir: str, labels: int | None):  # noqa: ANN201 (a dgm.data.Dataset)
    """The labelled training examples a probe may use: the run's own labelled subset, or ``labels``
    of them chosen as ``--labels`` chooses (class-balanced, with the run's ``data.seed``), or every
    labelled training example when neither is set."""
    from dgm import run

    config, _ = run.read_config(run_dir)
    if labels is not None:
        if config.data.labelled and labels != config.data.labelled:
            raise DgmError(f"the run was trained with --labels {config.data.labelled}: a probe on {labels} other "
                           f"labels would not be the same experiment; drop --labels")
        config.data.labelled = labels
    train = run.load_data(config, "train")
    if train.labels is None:
        raise DgmError(f"the run's data {config.data.name!r} has no labels: classification needs a labelled dataset")
    return train.known_labels()


def classification_result(model: GenerativeModel, run_dir: str, *, via: Via = "auto", labels: int | None = None,
                          max_examples: int | None = None, seed: int = 0, progress: bool = False):  # noqa: ANN201
    """The :class:`~dgm.eval.Result` ``classification_error`` of ``model`` on its run's test split."""
    from dgm import run
    from dgm.eval import Result
    from dgm.eval.probes import error_rate, labelled_probe_error
    from dgm.eval.quality import class_predictions, latent_means

    have = capabilities(model)
    if via == "auto":
        via = "classifier" if "classify" in have else "probe"
    needed = {"classifier": "classify", "probe": "encode"}[via]
    if needed not in have:
        raise DgmError(f"model {model.name!r} has no {needed!r}, so --via {via} cannot run: use --via "
                       f"{'probe' if via == 'classifier' else 'classifier'}")
    config, _ = run.read_config(run_dir)
    test = run.load_data(config, "test")
    if test.labels is None:
        raise DgmError(f"the run's data {config.data.name!r} has no test labels to score a classifier on")
    if max_examples:
        test = test.subset(max_examples)
    if via == "classifier":
        if labels is not None:
            raise DgmError("the model's own classifier learned from the labels of its run: drop --labels "
                           "(it chooses the labels of a probe, --via probe)")
        predicted, truth = class_predictions(model, test, progress=progress)
        error, per_class = error_rate(predicted, truth, model.spec.num_classes)
        known = config.data.labelled
        how = f"argmax q(y|x), {known} labels" if known else "argmax q(y|x), every training label"
        return Result("classification_error", error, "%", how, f"test, n={len(test)}", {"per_class": per_class})
    train = labelled_training_split(run_dir, labels)
    with torch.random.fork_rng(devices=[]):  # a binarized training split is drawn afresh: from `seed`
        torch.manual_seed(seed)
        train_z, train_y = latent_means(model, train, limit=len(train), progress=progress)
        test_z, test_y = latent_means(model, test, limit=len(test), progress=progress)
    error = labelled_probe_error(train_z, train_y, test_z, test_y, seed=seed)
    return Result("classification_error", error, "%", f"logistic regression on E[z|x] of {len(train)} labelled "
                  f"examples", f"test, n={len(test)}")


@register_app
class Classify(App):
    name = "classify"
    description = "test error of a classifier from few labels: the model's own q(y|x), or a probe on its codes"
    requires_any = frozenset({"classify", "encode"})

    def add_arguments(self, parser: argparse.ArgumentParser, model_class: type[GenerativeModel] | None) -> None:
        parser.add_argument("--via", choices=["auto", "classifier", "probe"], default="auto",
                            help="the model's own classifier q(y|x), or a logistic-regression probe on its codes "
                                 "(auto: the classifier when it has one)")
        parser.add_argument("--labels", type=POSITIVE, metavar="N",
                            help="probe: fit on N labelled training examples, class-balanced (default: the run's "
                                 "--labels, else every labelled example)")
        parser.add_argument("--max-examples", type=POSITIVE, help="score on the first N test examples only")

    def run(self, model: GenerativeModel, args: argparse.Namespace) -> str:
        from dgm.eval.core import record_results

        result = classification_result(model, args.run, via=args.via, labels=args.labels,
                                        max_examples=args.max_examples, seed=args.seed, progress=not args.quiet)
        record_results(args.run, [result])
        return f"{args.run}: test error {result.value:.2f}% ({result.qualifier}; {result.split}) -> eval.json"
