"""Disentanglement metrics: MIG, SAP and DCI of a model's codes against known generative factors.

Each scores codes ``z = encode(x)`` ``(N, D)`` (a VAE's posterior means) against the factor indices
``v`` ``(N, K)`` the examples were rendered from (``sprites``: shape, scale, rotation, x, y). The
scoring functions below take arrays and nothing else, so they are testable alone; the registered
metrics at the end encode the data and call them.

**MIG**, the mutual information gap (Chen, Li, Grosse & Duvenaud 2018, "Isolating Sources of
Disentanglement in VAEs", arXiv:1802.04942, section 5), with the discretised estimator of
disentanglement_lib (Locatello et al. 2019, arXiv:1811.12359): each code dim is cut into
:data:`MIG_BINS` equal-width bins over its range (``_histogram_discretize``), the plug-in mutual
information ``I(z_i; v_k)`` of each (dim, factor) pair is computed from the counts
(``sklearn.metrics.mutual_info_score``, nats), and

    MIG = 1/K sum_k ( I(z_(1); v_k) - I(z_(2); v_k) ) / H(v_k)

where ``z_(1)``, ``z_(2)`` are the dims of highest and second-highest information about ``v_k``.
A perfectly disentangled code (one dim per factor, each factor value in its own bin) scores 1;
copies of one signal score 0. With one code dim the second is taken as 0.

**SAP**, the separated attribute predictability (Kumar, Sattigeri & Balakrishnan 2018, "Variational
Inference of Disentangled Latent Concepts from Unlabeled Observations", arXiv:1711.00848, section 3),
in the paper's variant for discrete factors: ``S_ik`` is the *balanced* accuracy (mean recall over
the factor's values) of predicting ``v_k`` from ``z_i`` alone by thresholds on ``z_i``; here ``K_k -
1`` thresholds (a ``K_k``-leaf CART tree on the one dim, balanced class weights), fitted on a train
part and scored on a test part (as disentanglement_lib does; the paper fits on the test examples).
Inactive dims (variance over the train part at most :data:`~dgm.eval.metrics.ACTIVE_UNIT_THRESHOLD`)
get ``S_ik = 0``, as in the paper. ``SAP = 1/K sum_k (S_(1)k - S_(2)k)``, the mean gap between the
top two scores of each factor. A threshold classifier on a dim independent of ``v_k`` has balanced
accuracy exactly ``1 / K_k`` on a test set with every factor combination equally often, so a perfectly
disentangled code scores ``1/K sum_k (1 - 1/K_k)``, not 1. Not comparable with disentanglement_lib's
discrete SAP, which uses a ``LinearSVC`` (one-vs-rest lines cannot isolate the middle values of a
factor on one dim) and plain accuracy.

**DCI** (Eastwood & Williams 2018, "A Framework for the Quantitative Evaluation of Disentangled
Representations", ICLR, section 2): a predictor per factor from all code dims gives the importance
matrix ``R`` ``(D, K)``; with ``P_ik = R_ik / sum_k' R_ik'`` and ``P~_ik = R_ik / sum_i' R_i'k``,

    D_i = 1 - H_K(P_i.)     disentanglement = sum_i rho_i D_i,   rho_i = sum_k R_ik / sum R
    C_k = 1 - H_D(P~_.k)    completeness = sum_k (sum_i R_ik / sum R) C_k

(entropies in base ``K`` and ``D``; the completeness weights are disentanglement_lib's and equal the
plain mean over factors whenever every predictor used some dim, since each column of ``R`` then
sums to 1), and informativeness = the predictors' mean test accuracy. The predictors are random
forests (:data:`DCI_TREES` trees, every dim considered at each split, impurity importances), as in
the paper, not disentanglement_lib's ``GradientBoostingClassifier``: its 100 rounds x one tree per
value take about 1.5 minutes for the 40 rotations of 10,000 sprites on one core, the forests a few
seconds. Numbers are therefore not directly comparable with published disentanglement_lib DCI
values (forests spread less importance on spurious dims than boosting, and I is a forest's
accuracy). Entropies are exact (``0 log 0 = 0``, no 1e-11 added), so a perfect code scores 1.

Defined values where the data or the code is degenerate: a constant code dim falls into one bin
(MI 0), is inactive for SAP (scores 0) and gets no importance in DCI (weight 0); a factor with one
value in the examples scored is left out of every mean (its per-factor value is NaN), and a call
where no factor varies raises :class:`~dgm.errors.DgmError`; when no dim has any importance, D = C
= 0.

Which examples: codes of the evaluation split (``dgm eval --split``, at most :data:`EVAL_EXAMPLES`)
are scored; SAP's thresholds and DCI's forests are fitted on codes of the first
:data:`FIT_EXAMPLES` examples of the training split (as the representation probes of
:mod:`dgm.eval.quality`), and MIG, which fits nothing, uses the evaluation codes alone. Every random
choice (the trees) is seeded by ``dgm.evaluate(seed=)``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dgm.data.core import DataSpec
from dgm.errors import DgmError
from dgm.eval.core import EvalContext, Plan, Result, Work, metric
from dgm.eval.metrics import ACTIVE_UNIT_THRESHOLD
from dgm.eval.quality import latent_means, require_train
from dgm.models.base import GenerativeModel

MIG_BINS = 20  # equal-width bins per code dim (disentanglement_lib's num_bins for MIG)
FIT_EXAMPLES = 10_000  # training codes SAP's thresholds and DCI's forests are fitted on (disentanglement_lib: 10,000)
EVAL_EXAMPLES = 10_000  # evaluation codes scored, at most (sprites' test split has 2,000)
DCI_TREES = 50  # trees per factor's random forest
MAX_CODE_DIMS = 256  # wider codes (a flow's image-shaped z) are refused: a forest over them takes minutes


# --- the scores, from arrays ------------------------------------------------------------------------
@dataclass
class MIGScore:
    value: float  # MIG, the mean over varying factors of the normalised gap
    per_factor: np.ndarray  # (K,) (I(z_(1); v_k) - I(z_(2); v_k)) / H(v_k); NaN for a constant factor
    normalised_mi: np.ndarray  # (D, K) I(z_i; v_k) / H(v_k); NaN columns for constant factors


@dataclass
class SAPScore:
    value: float  # SAP, the mean over varying factors of the top-two gap
    per_factor: np.ndarray  # (K,) S_(1)k - S_(2)k; NaN for a factor constant in the train part
    scores: np.ndarray  # (D, K) S_ik, balanced test accuracy of thresholds on dim i for factor k


@dataclass
class DCIScore:
    disentanglement: float  # sum_i rho_i D_i
    completeness: float  # sum_k (importance share of k) C_k
    informativeness: float  # mean test accuracy of the forests over varying factors
    importance: np.ndarray  # (D, K) R: the forests' impurity importances, each used column sums to 1
    per_code: np.ndarray  # (D,) D_i (0 for a dim with no importance)
    per_factor: np.ndarray  # (K,) C_k; NaN for a factor no forest could use
    accuracy: np.ndarray  # (K,) test accuracy of each factor's forest; NaN for a constant factor
    train_accuracy: np.ndarray  # (K,) their accuracy on the train part (overfitting check)


def _check(codes: np.ndarray, factors: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``codes`` as ``(N, D)`` float64 and ``factors`` as ``(N, K)`` int64, or a :class:`DgmError`."""
    z, v = np.asarray(codes, dtype=np.float64), np.asarray(factors)
    if z.ndim != 2 or v.ndim != 2:
        raise DgmError(f"{what} needs codes (N, D) and factors (N, K), got {z.shape} and {v.shape}")
    if len(z) != len(v) or len(z) < 2:
        raise DgmError(f"{what} needs one factor row per code and at least 2 of each, got {len(z)} codes "
                       f"and {len(v)} factor rows")
    if not np.isfinite(z).all():
        raise DgmError(f"the codes given to {what} contain NaN or infinite values: check the encoder")
    if not np.issubdtype(v.dtype, np.integer):
        raise DgmError(f"{what} needs factor indices (integers), got {v.dtype}")
    return z, v.astype(np.int64)


def _check_parts(train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray,
                 test_factors: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The train and test parts of a metric that fits on one and scores the other, each checked
    (:func:`_check`), or a :class:`DgmError` when their widths differ."""
    ztr, vtr = _check(train_codes, train_factors, what)
    zte, vte = _check(test_codes, test_factors, what)
    if ztr.shape[1] != zte.shape[1] or vtr.shape[1] != vte.shape[1]:
        raise DgmError(f"{what} got train codes/factors of widths {ztr.shape[1]}/{vtr.shape[1]} but test ones of "
                       f"{zte.shape[1]}/{vte.shape[1]}: encode both parts with the same model")
    return ztr, vtr, zte, vte


def _varying(factors: np.ndarray, what: str) -> np.ndarray:
    """``(K,)`` True where the factor takes more than one value in ``factors``; raises when none does."""
    varies = np.array([len(np.unique(v)) > 1 for v in factors.T])
    if not varies.any():
        raise DgmError(f"{what} needs factors that vary, but every factor is constant in these {len(factors)} "
                       "examples: use more examples")
    return varies


def _top_two_gap(matrix: np.ndarray) -> np.ndarray:
    """``(K,)`` the highest minus the second-highest entry of each column of ``matrix`` ``(D, K)``
    (the second is 0 when ``D`` is 1)."""
    ordered = np.sort(matrix, axis=0)[::-1]
    second = ordered[1] if len(ordered) > 1 else np.zeros(matrix.shape[1])
    return ordered[0] - second


def discretize(codes: np.ndarray, bins: int = MIG_BINS) -> np.ndarray:
    """``(N, D)`` bin indices 1..``bins`` of each code dim cut into ``bins`` equal-width bins over its
    range (disentanglement_lib's ``_histogram_discretize``); a constant dim gets numpy's
    ``[c - 0.5, c + 0.5]`` range, so every example falls into one bin."""
    z = np.asarray(codes, dtype=np.float64)
    out = np.empty(z.shape, dtype=np.int64)
    for i, column in enumerate(z.T):
        edges = np.histogram_bin_edges(column, bins)  # (bins + 1,)
        out[:, i] = np.digitize(column, edges[:-1])  # the maximum lands in the last bin, not past it
    return out


def mutual_information(codes: np.ndarray, factors: np.ndarray, bins: int = MIG_BINS) -> np.ndarray:
    """``(D, K)`` plug-in mutual information ``I(z_i; v_k)`` in nats between each discretised code dim
    (:func:`discretize`) and each factor."""
    from sklearn.metrics import mutual_info_score

    z, v = _check(codes, factors, "the mutual information")
    binned = discretize(z, bins)
    return np.array([[mutual_info_score(factor, dim) for factor in v.T] for dim in binned.T])


def normalised_mutual_information(codes: np.ndarray, factors: np.ndarray, bins: int = MIG_BINS) -> np.ndarray:
    """``(D, K)`` ``I(z_i; v_k) / H(v_k)`` (:func:`mutual_information` over the factor's entropy, in
    [0, 1]); NaN columns for factors with one value (no entropy to normalise by)."""
    from sklearn.metrics import mutual_info_score

    z, v = _check(codes, factors, "the mutual information")
    entropy = np.array([mutual_info_score(factor, factor) for factor in v.T])  # (K,) H(v_k) in nats
    mi = mutual_information(z, v, bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(entropy > 0, mi / np.where(entropy > 0, entropy, 1), np.nan)


def mig(codes: np.ndarray, factors: np.ndarray, *, bins: int = MIG_BINS) -> MIGScore:
    """The mutual information gap of ``codes`` ``(N, D)`` against ``factors`` ``(N, K)`` (module docstring)."""
    z, v = _check(codes, factors, "MIG")
    varies = _varying(v, "MIG")
    normalised = normalised_mutual_information(z, v, bins)
    gap = np.where(varies, _top_two_gap(np.nan_to_num(normalised)), np.nan)
    return MIGScore(float(gap[varies].mean()), gap, normalised)


def balanced_accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Mean over the values present in ``truth`` of the fraction of their examples predicted right
    (scikit-learn's, without its warning about predicted values absent from ``truth``)."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(truth, predicted))


def sap(train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray, test_factors: np.ndarray,
        *, inactive_below: float = ACTIVE_UNIT_THRESHOLD, seed: int = 0) -> SAPScore:
    """The separated attribute predictability (module docstring): thresholds fitted on the train part,
    balanced accuracy on the test part; dims with train variance at most ``inactive_below`` score 0."""
    from sklearn.tree import DecisionTreeClassifier

    ztr, vtr, zte, vte = _check_parts(train_codes, train_factors, test_codes, test_factors, "SAP")
    varies = _varying(vtr, "SAP")
    active = ztr.var(0) > inactive_below  # (D,)
    scores = np.zeros((ztr.shape[1], vtr.shape[1]))
    for k in np.flatnonzero(varies):
        values = len(np.unique(vtr[:, k]))
        for i in np.flatnonzero(active):
            # values - 1 thresholds: enough to give every value its own interval of z_i
            stump = DecisionTreeClassifier(max_leaf_nodes=values, class_weight="balanced", random_state=seed)
            stump.fit(ztr[:, i:i + 1], vtr[:, k])
            scores[i, k] = balanced_accuracy(stump.predict(zte[:, i:i + 1]), vte[:, k])
    gap = np.where(varies, _top_two_gap(scores), np.nan)
    return SAPScore(float(gap[varies].mean()), gap, scores)


def _one_minus_normalised_entropy(weights: np.ndarray) -> np.ndarray:
    """``1 - H(p) / log(n)`` of each row of ``weights`` ``(M, n)`` normalised to a distribution ``p``
    (``0 log 0 = 0``); 0 for a row of zeros, 1 when ``n`` is 1 (nothing to spread over)."""
    from scipy.stats import entropy

    out = np.zeros(len(weights))
    used = weights.sum(1) > 0
    if used.any():
        h = entropy(weights[used], axis=1)  # nats; scipy normalises each row
        out[used] = 1 - h / np.log(weights.shape[1]) if weights.shape[1] > 1 else 1.0
    return out


def dci_from_importance(importance: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Disentanglement, completeness, per-code ``D_i`` ``(D,)`` and per-factor ``C_k`` ``(K,)`` of an
    importance matrix ``R`` ``(D, K)`` (module docstring); ``C_k`` is NaN for a column of zeros."""
    R = np.abs(np.asarray(importance, dtype=np.float64))
    total = R.sum()
    per_code = _one_minus_normalised_entropy(R)  # (D,) D_i = 1 - H_K(P_i.)
    per_factor = _one_minus_normalised_entropy(R.T)  # (K,) C_k = 1 - H_D(P~_.k)
    per_factor[R.sum(0) == 0] = np.nan
    if total == 0:
        return 0.0, 0.0, per_code, per_factor
    rho = R.sum(1) / total  # (D,) each dim's share of the importance
    share = R.sum(0) / total  # (K,) each factor's share
    return float(rho @ per_code), float(np.nansum(share * per_factor)), per_code, per_factor


def dci(train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray, test_factors: np.ndarray,
        *, trees: int = DCI_TREES, seed: int = 0) -> DCIScore:
    """Disentanglement, completeness and informativeness (module docstring) from one random forest per
    factor, fitted on the train part, its accuracy measured on the test part."""
    from sklearn.ensemble import RandomForestClassifier

    ztr, vtr, zte, vte = _check_parts(train_codes, train_factors, test_codes, test_factors, "DCI")
    varies = _varying(vtr, "DCI")
    D, K = ztr.shape[1], vtr.shape[1]
    R = np.zeros((D, K))
    accuracy, train_accuracy = np.full(K, np.nan), np.full(K, np.nan)
    for k in np.flatnonzero(varies):
        # max_features=None: every dim competes at every split, so a dim independent of the factor is
        # chosen only when it reduces the impurity of the bootstrap sample (spurious importance stays small)
        forest = RandomForestClassifier(n_estimators=trees, max_features=None, random_state=seed, n_jobs=1)
        forest.fit(ztr, vtr[:, k])
        R[:, k] = forest.feature_importances_  # sums to 1 unless every tree is a single leaf
        accuracy[k] = forest.score(zte, vte[:, k])
        train_accuracy[k] = forest.score(ztr, vtr[:, k])
    d, c, per_code, per_factor = dci_from_importance(R)
    return DCIScore(d, c, float(accuracy[varies].mean()), R, per_code, per_factor, accuracy, train_accuracy)


# --- the registered metrics -------------------------------------------------------------------------
def needs_factors(spec: DataSpec) -> str | None:
    return None if "factors" in spec.extras else (
        f"{spec.name!r} has no known generative factors: disentanglement metrics need data rendered from "
        "known factors, such as --data sprites")


def factor_names(spec: DataSpec, k: int) -> list[str]:
    return list(spec.extras.get("factors") or [f"factor {j}" for j in range(k)])


def factor_codes(model: GenerativeModel, ctx: EvalContext, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Codes ``(N, D)`` and factor indices ``(N, K)`` of the first examples of ``split`` (the evaluation
    split, or the training split for fitting), encoded once per evaluation."""
    data = ctx.data if split == "test" else require_train(ctx)
    limit = EVAL_EXAMPLES if split == "test" else FIT_EXAMPLES

    def compute() -> tuple[np.ndarray, np.ndarray]:
        if data.factors is None:
            raise DgmError(f"the {split} split of {data.spec.name!r} has no factor values: disentanglement "
                           "metrics need data rendered from known factors, such as --data sprites")
        codes = latent_means(model, data, limit, progress=ctx.progress)[0].numpy()  # (N, D)
        if codes.shape[1] > MAX_CODE_DIMS:
            raise DgmError(f"model {model.name!r} encodes to {codes.shape[1]} dims: the disentanglement metrics "
                           f"score codes of at most {MAX_CODE_DIMS} dims (a VAE's latent)")
        return codes, data.factors[:limit].cpu().numpy()

    return ctx.once(f"factor-codes-{split}", compute)


def disentanglement_plan(then: str, score: Callable[..., object] | None = None
                         ) -> Callable[[GenerativeModel, EvalContext], Plan]:
    """The plan of a metric that encodes the evaluation split and, when it fits predictors (``score``:
    :func:`sap` or :func:`dci`), the training split, then computes ``then``."""
    def plan(model: GenerativeModel, ctx: EvalContext) -> Plan:
        splits = ("test",) if score is None else ("train", "test")
        work = []
        for split in splits:
            data = ctx.data if split == "test" else require_train(ctx)
            x = data.tensors(8).x
            units = min(EVAL_EXAMPLES if split == "test" else FIT_EXAMPLES, len(data))
            work.append(Work(f"factor codes of {split} examples", units, lambda n, x=x: model.encode(x[:n])))
        if score is None:
            return Plan(f"codes of {work[0].units} test examples, then {then}", work, "--max-examples N")
        width = model.encode(ctx.data.tensors(1).x).flatten(1).shape[1]
        sizes = ctx.data.spec.extras.get("factor_sizes") or [2]
        import sklearn.ensemble  # noqa: F401  (imported before the timing, which should not count it)
        import sklearn.tree  # noqa: F401

        work.append(Work(then, work[0].units, lambda n: _fit_probe(score, n, width, sizes, ctx.seed), 1000))
        return Plan(f"codes of {work[0].units} train and {work[1].units} test examples, then {then}", work,
                    f"--max-examples N (fewer test codes; the fits use the first {FIT_EXAMPLES} training examples)")

    return plan


def _fit_probe(score: Callable[..., object], n: int, width: int, sizes: list[int], seed: int) -> None:
    """``score`` (:func:`sap`, :func:`dci`) of ``n`` random codes of ``width`` dims: its fitting work,
    timed for the estimate."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, width))  # (n, D)
    v = np.stack([rng.integers(size, size=n) for size in sizes], axis=1)  # (n, K)
    score(z, v, z, v, seed=seed)


def _per_factor(spec: DataSpec, values: np.ndarray) -> dict[str, float | None]:
    return {name: (None if np.isnan(x) else round(float(x), 5)) for name, x in
            zip(factor_names(spec, len(values)), values)}


def _matrix(values: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(x) else round(float(x), 5) for x in row] for row in values]


@metric("mig", requires=("encode",), data=needs_factors,
        plan=disentanglement_plan(f"mutual information, {MIG_BINS} bins per dim"),
        description="mutual information gap of the codes against known generative factors (Chen et al. 2018)")
def mig_metric(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    z, v = factor_codes(model, ctx, "test")
    score = mig(z, v, bins=MIG_BINS)
    return [Result("mig", score.value, "", f"discretised MI / H(factor), {MIG_BINS} equal-width bins per code dim; "
                   f"{z.shape[1]}-dim codes", ctx.split,
                   {"per_factor": _per_factor(ctx.data.spec, score.per_factor),
                    "normalised_mi": _matrix(score.normalised_mi)})]


@metric("sap", requires=("encode",), data=needs_factors,
        plan=disentanglement_plan("thresholds per code dim and factor", sap),
        description="separated attribute predictability: gap between the two code dims that best predict "
                    "each known factor (Kumar et al. 2018)")
def sap_metric(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    ztr, vtr = factor_codes(model, ctx, "train")
    z, v = factor_codes(model, ctx, "test")
    score = sap(ztr, vtr, z, v, seed=ctx.seed)
    return [Result("sap", score.value, "", f"balanced accuracy of K-1 thresholds per code dim, fit on "
                   f"{len(ztr)} train codes; {z.shape[1]}-dim codes", ctx.split,
                   {"per_factor": _per_factor(ctx.data.spec, score.per_factor), "scores": _matrix(score.scores)})]


@metric("dci", requires=("encode",), data=needs_factors,
        plan=disentanglement_plan(f"a random forest per factor ({DCI_TREES} trees)", dci),
        description="disentanglement, completeness and informativeness of the codes from random-forest "
                    "importances (Eastwood & Williams 2018)")
def dci_metric(model: GenerativeModel, ctx: EvalContext) -> list[Result]:
    ztr, vtr = factor_codes(model, ctx, "train")
    z, v = factor_codes(model, ctx, "test")
    score = dci(ztr, vtr, z, v, seed=ctx.seed)
    spec = ctx.data.spec
    held = "training-split (not held-out)" if ctx.data.train else "test"  # dgm eval --split train
    what = f"random forests ({DCI_TREES} trees), fit on {len(ztr)} train codes; {z.shape[1]}-dim codes"
    return [Result("dci_disentanglement", score.disentanglement, "", what, ctx.split,
                   {"per_code": [round(float(x), 5) for x in score.per_code], "importance": _matrix(score.importance)}),
            Result("dci_completeness", score.completeness, "", what, ctx.split,
                   {"per_factor": _per_factor(spec, score.per_factor)}),
            Result("dci_informativeness", score.informativeness, "", f"{held} accuracy of {what}",
                   ctx.split, {"per_factor": _per_factor(spec, score.accuracy),
                               "train_accuracy": _per_factor(spec, score.train_accuracy)})]
