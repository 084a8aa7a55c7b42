"""Semi-supervised classification with a trained model: its test error from few labels.

One command for every model that can classify, whatever its family, so the numbers sit side by
side (Kingma et al. 2014, arXiv:1406.5298, Table 1 compares exactly these):

* a model with its own classifier (``classify``: M2, M1+M2, the partially supervised VAE) is
  scored by argmax q(y|x), learned from the labels of its run (``--labels`` when it trained);
* a model of p(x | y) (``conditional_log_prob`` of a conditional PixelCNN, the conditional VAE's
  bounds, the conditional DDPM's bound) is a *generative classifier*: p(y | x) by Bayes' rule with
  the class frequencies of the labelled training examples as p(y) (:mod:`dgm.eval.bayes`; bounds
  compared under common random numbers);
* a model with an encoder (``encode``: a VAE, BiGAN, PPCA, ...) gets a *probe*: logistic regression
  fit on the codes E[z|x] of the labelled training examples alone (the run's ``--labels`` subset, or
  ``--labels N`` chosen here the same way, class-balanced with ``data.seed``), scored on the test
  codes; that is M1 + a classifier when the model is a VAE.

The test error goes into the run's ``eval.json`` as ``classification_error`` (with how it was
obtained), so ``dgm compare`` ranks the runs on it; a classifier with probabilities (its own q(y|x)
or Bayes' rule) also gives its calibration: ``classification_ece`` (expected calibration error, %)
and ``classification_nll`` (nats of the true class).
"""
from __future__ import annotations

import argparse
from typing import Literal

import torch

from dgm.apps import App, register_app
from dgm.apps.options import POSITIVE
from dgm.errors import DgmError
from dgm.eval.core import CONDITIONAL_LIKELIHOODS
from dgm.models.base import GenerativeModel, capabilities

Via = Literal["auto", "classifier", "bayes", "probe"]


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


def classification_results(model: GenerativeModel, run_dir: str, *, via: Via = "auto", labels: int | None = None,
                           k: int = 1, max_examples: int | None = None, seed: int = 0,
                           progress: bool = False) -> list:
    """The :class:`~dgm.eval.Result` ``classification_error`` of ``model`` on its run's test split, with
    ``classification_ece`` and ``classification_nll`` for a classifier with probabilities."""
    from dgm import run
    from dgm.eval import Result
    from dgm.eval.bayes import bayes_probabilities, class_log_prior, conditional_estimator
    from dgm.eval.probes import labelled_probe_error
    from dgm.eval.quality import class_probabilities, latent_means

    have = capabilities(model)
    routes = {"classifier": {"classify"}, "bayes": set(CONDITIONAL_LIKELIHOODS), "probe": {"encode"}}
    possible = [route for route, needs in routes.items() if needs & have]
    if via == "auto":
        via = possible[0] if possible else "classifier"
    if via not in possible:
        other = f"use --via {' or '.join(possible)}" if possible else "this model cannot classify"
        raise DgmError(f"model {model.name!r} has no {' or '.join(sorted(routes[via]))}, so --via {via} cannot run: "
                       f"{other}")
    if k > 1 and via != "bayes":
        raise DgmError("--k sets the importance samples of a bound on log p(x|y): drop it, or use --via bayes")
    config, _ = run.read_config(run_dir)
    test = run.load_data(config, "test")
    if test.labels is None:
        raise DgmError(f"the run's data {config.data.name!r} has no test labels to score a classifier on")
    if max_examples:
        test = test.subset(max_examples)
    known = config.data.labelled
    if via == "classifier":
        if labels is not None:
            raise DgmError("the model's own classifier learned from the labels of its run: drop --labels "
                           "(it chooses the labels of a probe, --via probe)")
        probs, truth = class_probabilities(model, test, progress=progress)
        how = f"argmax q(y|x), {known} labels" if known else "argmax q(y|x), every training label"
        return probability_results(probs, truth, how, f"test, n={len(test)}")
    if via == "bayes":
        if labels is not None:
            raise DgmError("a generative classifier learned p(x|y) from the labels of its run: drop --labels "
                           "(it chooses the labels of a probe, --via probe)")
        estimator = conditional_estimator(model, k)
        train = labelled_training_split(run_dir, None)
        prior = class_log_prior(train.labels, model.spec.num_classes)
        probs, truth = bayes_probabilities(model, test, prior, k=k, seed=seed, progress=progress)
        bound = {"conditional_log_prob": "exact log p(x|y)", "conditional_elbo": "ELBO of log p(x|y)",
                 "conditional_iwae_bound": f"IWAE bound (k={k}) on log p(x|y)"}[estimator]
        how = f"Bayes' rule over the {bound}, p(y) from {len(train)} training labels"
        return probability_results(probs, truth, how, f"test, n={len(test)}")
    train = labelled_training_split(run_dir, labels)
    with torch.random.fork_rng(devices=[]):  # a binarized training split is drawn afresh: from `seed`
        torch.manual_seed(seed)
        train_z, train_y = latent_means(model, train, limit=len(train), progress=progress)
        test_z, test_y = latent_means(model, test, limit=len(test), progress=progress)
    error = labelled_probe_error(train_z, train_y, test_z, test_y, seed=seed)
    return [Result("classification_error", error, "%", f"logistic regression on E[z|x] of {len(train)} labelled "
                   f"examples", f"test, n={len(test)}")]


def probability_results(probs: torch.Tensor, truth: torch.Tensor, how: str, split: str) -> list:
    """The test error, expected calibration error and true-class NLL of class probabilities ``probs``."""
    from dgm.eval import Result
    from dgm.eval.bayes import expected_calibration_error, true_class_nll
    from dgm.eval.probes import error_rate

    error, per_class = error_rate(probs.argmax(1), truth, probs.shape[1])
    return [Result("classification_error", error, "%", how, split, {"per_class": per_class}),
            Result("classification_ece", expected_calibration_error(probs, truth), "%", how, split),
            Result("classification_nll", true_class_nll(probs, truth), "nats", how, split)]


@register_app
class Classify(App):
    name = "classify"
    description = ("test error and calibration of a classifier: the model's own q(y|x), Bayes' rule over its "
                   "p(x|y), or a probe on its codes")
    requires_any = frozenset({"classify", "encode", *CONDITIONAL_LIKELIHOODS})

    def add_arguments(self, parser: argparse.ArgumentParser, model_class: type[GenerativeModel] | None) -> None:
        parser.add_argument("--via", choices=["auto", "classifier", "bayes", "probe"], default="auto",
                            help="the model's own classifier q(y|x), Bayes' rule over its class-conditional "
                                 "likelihood p(x|y), or a logistic-regression probe on its codes (auto: the first "
                                 "of these the model has)")
        parser.add_argument("--labels", type=POSITIVE, metavar="N",
                            help="probe: fit on N labelled training examples, class-balanced (default: the run's "
                                 "--labels, else every labelled example)")
        parser.add_argument("--k", type=POSITIVE, default=1,
                            help="bayes: importance samples of a bound on log p(x|y) (the conditional VAE's IWAE "
                                 "bound; 1: its ELBO); exact likelihoods take none")
        parser.add_argument("--max-examples", type=POSITIVE, help="score on the first N test examples only")

    def run(self, model: GenerativeModel, args: argparse.Namespace) -> str:
        from dgm.eval.core import record_results

        results = classification_results(model, args.run, via=args.via, labels=args.labels, k=args.k,
                                         max_examples=args.max_examples, seed=args.seed, progress=not args.quiet)
        record_results(args.run, results)
        error, *calibration = results
        more = "".join(f", {r.metric.removeprefix('classification_')} " + (f"{r.value:.2f}%" if r.unit == "%" else
                                                                           f"{r.value:.3f} {r.unit}") for r in calibration)
        return f"{args.run}: test error {error.value:.2f}%{more} ({error.qualifier}; {error.split}) -> eval.json"
