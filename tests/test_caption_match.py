"""caption_match and its reader, on models whose answers are known: one that renders exactly what
each caption says (every caption matches), one that draws black or recolours object A (none does),
and one without the capability (refused)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dgm
from dgm.data import scenes
from dgm.data.captions import caption_vocabulary, class_caption
from dgm.data.core import DataSpec
from dgm.errors import DgmError
from dgm.eval.captions import factor_matches, read
from dgm.eval.core import METRICS, supported
from dgm.eval.features import card, feature_extractor, load_domain_net
from dgm.models.base import GenerativeModel, capability


class Fixed(GenerativeModel):
    """A model with nothing to learn (one dummy parameter, so it has a device)."""

    name = "fixed"

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(None, spec)
        self.dummy = torch.nn.Parameter(torch.zeros(1))


class Renderer(Fixed):
    """Draws each caption's scene exactly (positions at their canonical value), after ``change``."""

    name = "renderer"

    def change(self, factors: np.ndarray) -> np.ndarray:
        return factors

    @capability
    def sample_captioned(self, captions, *, generator=None, rerank=1):
        factors = self.change(scenes.caption_factors(caption_vocabulary(self.spec).decode(captions)))
        return torch.from_numpy(scenes.render(factors)).float() / 255


class Recoloured(Renderer):
    def change(self, factors):
        factors[:, 2] = (factors[:, 2] + 1) % len(scenes.COLOURS)  # object A in the next colour
        return factors


class NoReranker(Renderer):
    @capability
    def sample_captioned(self, captions, *, generator=None, rerank=1):
        if rerank != 1:
            raise DgmError("no reranker: use rerank=1")
        return super().sample_captioned(captions, generator=generator)


class Black(Fixed):
    @capability
    def sample_captioned(self, captions, *, generator=None, rerank=1):
        return torch.zeros(len(captions), *self.spec.shape)


@pytest.fixture(scope="module")
def test_scenes():
    return dgm.data.load("scenes", "test")


def by_metric(results):
    return {r.metric: r for r in results}


def test_factor_matches_needs_only_the_specified_factors():
    wanted = np.array([[1, 2], [1, 2], [1, 2]])
    read_ = np.array([[1, 0], [1, 2], [0, 2]])
    specified = np.array([[True, False], [True, True], [True, True]])
    assert factor_matches(read_, wanted, specified).tolist() == [True, True, False]


def test_shipped_scene_net_reads_fresh_renders_with_its_card_accuracy():
    info = card("scene-net")
    assert info.heads == dict(zip(scenes.FACTORS, scenes.FACTOR_SIZES))
    rng = np.random.default_rng(7)  # a draw of its own, over every combination (held-out ones too)
    factors = np.stack([rng.integers(k, size=2000) for k in scenes.FACTOR_SIZES], axis=1)
    factors[np.ix_(factors[:, 0] == 0, scenes.B_FACTORS)] = 0
    images = torch.from_numpy(scenes.render(factors)).float() / 255
    accuracy = factor_matches(read(load_domain_net("scene-net"), images), factors, scenes.specified(factors)).mean()
    assert accuracy == pytest.approx(info.test_accuracy, abs=0.01)
    weights = load_domain_net.__globals__["WEIGHTS_DIR"] / "scene-net.safetensors"
    assert weights.stat().st_size < 2**20


def test_exact_renders_match_every_caption_and_wrong_ones_none(test_scenes):
    def scores(model):
        return by_metric(dgm.evaluate(model, test_scenes, ["caption_match"], num_samples=100, progress=False))

    exact = scores(Renderer(test_scenes.spec))
    assert set(exact) == {"caption_match_seen", "caption_match_heldout", "caption_match_seen_rerank8",
                          "caption_match_heldout_rerank8"}
    for r in exact.values():
        assert r.value == 1.0 and r.details["captions"] == 100
    assert "held-out captions" in exact["caption_match_heldout"].split
    assert "reranked, 8 candidates" in exact["caption_match_seen_rerank8"].qualifier
    for r in scores(Recoloured(test_scenes.spec)).values():
        assert r.value == 0.0
    # one black image for every caption is one reading: it matches at most the captions that say it
    for r in scores(Black(test_scenes.spec)).values():
        assert r.value <= 0.05, r
    # a model without a reranker keeps its plain score
    assert set(scores(NoReranker(test_scenes.spec))) == {"caption_match_seen", "caption_match_heldout"}


def test_a_model_without_the_capability_is_refused(test_scenes):
    model = Fixed(test_scenes.spec)
    assert "caption_match" not in supported(model, test_scenes.spec)
    with pytest.raises(DgmError, match="cannot give 'caption_match'"):
        dgm.evaluate(model, test_scenes, ["caption_match"], progress=False)
    assert not METRICS["caption_match"].default
    assert METRICS["caption_match"].unsuitable(DataSpec("cifar10", (3, 32, 32), class_names=list("abcdefghij")))
    assert METRICS["caption_match"].unsuitable(test_scenes.spec) is None


def test_class_captions_are_read_by_the_datasets_own_classifier():
    try:
        test = dgm.data.load("fashion-mnist", "test")
    except DgmError as e:
        pytest.skip(str(e))
    net = load_domain_net("fmnist-net")
    batch = test.tensors(2000)
    right = read(net, batch.x)[:, 0] == batch.y.numpy()
    # one image per class that fmnist-net reads right: a model that draws it for its caption matches always
    examples = torch.stack([batch.x[np.flatnonzero(right & (batch.y.numpy() == c))[0]] for c in range(10)])
    captions = [class_caption(name) for name in test.spec.class_names]

    class ByClass(Fixed):
        shift = 0

        @capability
        def sample_captioned(self, ids, *, generator=None, rerank=1):
            classes = [captions.index(t) for t in caption_vocabulary(self.spec).decode(ids)]
            return examples[(torch.tensor(classes) + self.shift) % 10]

    class NextClass(ByClass):
        shift = 1

    for model, value in ((ByClass(test.spec), 1.0), (NextClass(test.spec), 0.0)):
        results = by_metric(dgm.evaluate(model, test, ["caption_match"], num_samples=50, progress=False))
        assert set(results) == {"caption_match", "caption_match_rerank8"}
        assert all(r.value == value for r in results.values())


def test_default_feature_nets_by_dataset_then_by_size(test_scenes, monkeypatch):
    assert feature_extractor(None, test_scenes.spec).name == "scene-net"
    assert feature_extractor(None, DataSpec("mnist", (1, 28, 28))).name == "fmnist-net"
    monkeypatch.delenv("DGM_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(DgmError, match="DGM_INCEPTION_WEIGHTS"):  # CIFAR-10 keeps Inception
        feature_extractor(None, DataSpec("cifar10", (3, 32, 32)))
    with pytest.raises(DgmError, match="takes 3x32x32 images"):
        feature_extractor("scene-net", DataSpec("mnist", (1, 28, 28)))


def test_the_inception_score_refuses_scenes_whose_reader_has_several_heads():
    from dgm.eval.quality import needs_one_class

    assert "reads 10 factors" in needs_one_class(dgm.data.load("scenes", "test").spec)
    assert needs_one_class(dgm.data.load("digits", "test").spec) is None
