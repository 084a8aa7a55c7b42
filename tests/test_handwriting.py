"""Pen strokes and the mixture-density LSTM (Graves 2013): the Hershey parser on a hand-decoded glyph,
the augmentation, the refusal of files without strokes, the mixture's density (it integrates to one;
one component is scipy's bivariate normal), masking, training, sampling and the pictures; words of
glyphs and synthesis with the soft window (section 5: eqs. 46-51 by hand, causality, the text)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from dgm.cli import main
from dgm.data import load
from dgm.data import strokes as stroke_data
from dgm.data.pictures import sample_picture, strokes_picture
from dgm.errors import DgmError
from dgm.models import Progress, capabilities, create
from dgm.nn.likelihoods import PenMixture

GLYPHS = Path(__file__).parent / "data" / "glyphs.jhf"  # 8 glyphs of Hershey's rowmans, one wrapped over two lines
TINY = {"layers": 2, "hidden": 16, "components": 3}


# --- the Hershey format ------------------------------------------------------------------------------------
def test_parser_decodes_the_letter_a_by_hand():
    # "A" of rowmans: 9 vertex pairs, the bounds "I[" first; each character is ord(c) - ord("R"), y down
    (number, strokes), = stroke_data.parse_jhf("  501  9I[RFJ[ RRFZ[ RMTWT\n")
    assert number == 501
    expected = [[[0, 12], [-8, -9]], [[0, 12], [8, -9]], [[-5, -2], [5, -2]]]  # y up: the apex at +12
    assert [s.tolist() for s in strokes] == expected
    offsets = stroke_data.to_offsets(strokes)
    assert offsets.tolist() == [[0, 12, 0], [-8, -21, 1], [8, 21, 0], [8, -21, 1], [-13, 7, 0], [10, 0, 1]]
    assert [s.tolist() for s in stroke_data.to_strokes(offsets)] == expected


def test_a_glyph_wrapped_over_two_lines_reads_as_one():
    glyphs = stroke_data.parse_jhf(GLYPHS.read_text())
    assert [n for n, _ in glyphs] == [501, 502, 601, 602, 701, 702, 514, 615]
    one_line = "  602 18H[LFL[ RLPNNPMSMUNWPXSXUWXUZS[P[NZLX"
    (_, b), = stroke_data.parse_jhf(one_line)
    assert [s.tolist() for s in glyphs[3][1]] == [s.tolist() for s in b]
    assert [len(s) for s in b] == [2, 14]
    assert stroke_data.parse_jhf("  699  1JZ\n") == [(699, [])]  # the space: bounds only, no strokes
    (_, _, bounds), = stroke_data.parse_jhf_bounds("  501  9I[RFJ[ RRFZ[ RMTWT\n")
    assert bounds == (-9, 9)  # "I[": ord("I") - ord("R"), ord("[") - ord("R")


@pytest.mark.parametrize("text, message", [
    ("", "holds no pen strokes"),
    ("  699  1JZ\n\n", "holds no pen strokes"),  # a space glyph only
    ("hello world\n", "is not a Hershey glyph header"),
    ("  501  9I[RFJ[ R", "the file is cut short"),
])
def test_files_without_strokes_are_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "empty.jhf"
    path.write_text(text)
    with pytest.raises(DgmError, match=message) as e:
        load(f"strokes:{path}")
    assert "\n" not in str(e.value)


def test_the_cli_refuses_an_empty_stroke_file_in_one_line(tmp_path, capsys):
    path = tmp_path / "empty.jhf"
    path.write_text("")
    assert main(["train", "mdn-rnn", "--data", f"strokes:{path}", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and "holds no pen strokes" in err
    assert not (tmp_path / "r").exists()


def test_augmentation_is_deterministic_and_keeps_the_pen_bits():
    a, b = load(f"strokes:{GLYPHS}"), load(f"strokes:{GLYPHS}")
    assert torch.equal(a.raw, b.raw) and torch.equal(a.lengths, b.lengths)
    test = load(f"strokes:{GLYPHS}", "test")
    assert (len(a), len(test)) == (7 * stroke_data.COPIES["train"], 1 * stroke_data.COPIES["test"])
    assert a.spec.shape == test.spec.shape == (21, 3) and a.spec.kind == "points" and a.spec.extras["strokes"]
    glyph = stroke_data.parse_jhf(GLYPHS.read_text())[0][1]  # "A"
    one, two = (stroke_data.augment(glyph, np.random.default_rng(7)) for _ in range(2))
    other = stroke_data.augment(glyph, np.random.default_rng(8))
    assert all(np.array_equal(p, q) for p, q in zip(one, two))
    assert [s.shape for s in one] == [s.shape for s in glyph] == [s.shape for s in other]
    assert not np.allclose(one[0], other[0])
    pen = stroke_data.to_offsets(glyph)[:, 2]
    assert np.array_equal(stroke_data.to_offsets(one)[:, 2], pen)
    batch = a.tensors()
    last = batch.x[torch.arange(len(a)), a.lengths - 1]
    assert (last[:, 2] == 1).all()  # every glyph ends a stroke
    assert (batch.x[~batch.mask] == 0).all() and (batch.x[batch.mask].abs().sum(-1) > 0).all()


@pytest.mark.skipif(not stroke_data.HERSHEY_DIR.is_dir(), reason="apt-get install hershey-fonts-data")
def test_hershey_holds_the_letters_of_its_fonts_held_out_by_glyph():
    train, test = load("hershey"), load("hershey", "test")
    assert train.spec.shape == (stroke_data.HERSHEY_MAX_POINTS, 3) and train.spec.num_classes == 62
    glyphs = train.spec.extras["glyphs"]
    held_out = math.ceil(glyphs / 10)
    assert len(test) == held_out * stroke_data.COPIES["test"]
    assert len(train) == (glyphs - held_out) * stroke_data.COPIES["train"]
    assert set(train.labels.tolist()) == set(range(62))


# --- the mixture ---------------------------------------------------------------------------------------------
def random_mixture(components: int, generator: torch.Generator, batch: tuple[int, ...] = ()) -> PenMixture:
    y = torch.randn(*batch, PenMixture.num_params(components), generator=generator, dtype=torch.float64)
    return PenMixture.from_outputs(y, components)


def test_the_pen_mixture_integrates_to_one_over_offsets_and_pen_states():
    g = torch.Generator().manual_seed(0)
    mixture = random_mixture(3, g)  # sigmas exp(N(0, 1)), means N(0, 1), correlations tanh(N(0, 1))
    mixture.log_std = mixture.log_std.clamp(-1.0, 0.5)  # resolved by the grid, inside it
    step = 0.025
    axis = torch.arange(-10, 10, step, dtype=torch.float64) + step / 2  # midpoints
    xy = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1)  # (G, G, 2)
    total = 0.0
    for pen, last in ((0.0, False), (1.0, False), (1.0, True)):  # the pen states (e, s)
        point = torch.cat([xy, torch.full_like(xy[..., :1], pen)], -1)
        log_p = mixture_at(mixture, xy.shape[:2]).log_prob(point, torch.full(xy.shape[:2], last))
        total += log_p.exp().sum().item() * step ** 2
    assert total == pytest.approx(1.0, abs=1e-3)


def mixture_at(m: PenMixture, shape: tuple[int, ...]) -> PenMixture:
    """The same distribution at every position of ``shape``."""
    def grow(t: torch.Tensor, event: int) -> torch.Tensor:
        return t.expand(*shape, *t.shape[t.dim() - event:]) if event else t.expand(shape)

    return PenMixture(grow(m.logits, 1), grow(m.mean, 2), grow(m.log_std, 2), grow(m.rho, 1), grow(m.pen_logit, 0),
                      grow(m.stop_logit, 0))


def test_one_component_is_scipys_bivariate_normal():
    g = torch.Generator().manual_seed(1)
    mixture = random_mixture(1, g)
    x = torch.randn(50, 2, generator=g, dtype=torch.float64)
    mean, std, rho = mixture.mean[0].numpy(), mixture.log_std[0].exp().numpy(), mixture.rho[0].item()
    cov = [[std[0] ** 2, rho * std[0] * std[1]], [rho * std[0] * std[1], std[1] ** 2]]
    expected = multivariate_normal(mean, cov).logpdf(x.numpy())
    np.testing.assert_allclose(mixture_at(mixture, (50,)).offset_log_prob(x).numpy(), expected, rtol=1e-10)


def test_bias_sharpens_the_mixture_as_graves_section_5_4():
    y = torch.randn(PenMixture.num_params(4), generator=torch.Generator().manual_seed(2))
    plain, biased = PenMixture.from_outputs(y, 4), PenMixture.from_outputs(y, 4, bias=1.5)
    torch.testing.assert_close(biased.log_std, plain.log_std - 1.5)
    torch.testing.assert_close(biased.logits, plain.logits * 2.5)


def test_samples_of_the_mixture_follow_its_moments():
    g = torch.Generator().manual_seed(3)
    mixture = mixture_at(random_mixture(2, g), (40_000,))
    point, stop = mixture.sample(g)
    weights = mixture.logits[0].softmax(-1)
    mean = (weights[:, None] * mixture.mean[0]).sum(0)
    torch.testing.assert_close(point[:, :2].mean(0), mean, atol=0.05, rtol=0)
    assert set(point[:, 2].tolist()) <= {0.0, 1.0} and not (stop & (point[:, 2] == 0)).any()
    assert point[:, 2].mean().item() == pytest.approx(torch.sigmoid(-mixture.pen_logit[0]).item(), abs=0.01)


# --- the model -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def glyphs():
    return load(f"strokes:{GLYPHS}")


def model_for(spec, **settings):
    torch.manual_seed(0)
    return create("mdn-rnn", spec, **{**TINY, **settings})


def test_padding_does_not_change_the_likelihood(glyphs):
    model = model_for(glyphs.spec).eval()
    batch = glyphs.tensors(6)
    noisy = torch.where(batch.mask[..., None], batch.x, torch.randn_like(batch.x))
    longest = int(batch.mask.sum(1).max())
    with torch.no_grad():
        exact = model.log_prob(batch.x, mask=batch.mask)
        torch.testing.assert_close(model.log_prob(noisy, mask=batch.mask), exact)
        torch.testing.assert_close(model.log_prob(batch.x[:, :longest], mask=batch.mask[:, :longest]), exact)
        torch.testing.assert_close(model.log_prob(batch.x), exact)  # the mask read from the zero rows
        # one sequence at a time, without the others of its batch
        torch.testing.assert_close(torch.cat([model.log_prob(batch.x[i:i + 1], mask=batch.mask[i:i + 1])
                                              for i in range(6)]), exact)


def test_the_likelihood_is_the_product_of_the_steps_the_sampler_takes(glyphs):
    """Teacher forcing over the whole sequence = the LSTM stepped one point at a time with its state."""
    model = model_for(glyphs.spec).eval()
    batch = glyphs.tensors(1)
    n = int(batch.mask.sum())
    x = batch.x[0, :n].double()
    model.double()
    with torch.no_grad():
        total, point, state = 0.0, model.start.view(1, 1, 3), None
        for t in range(n):
            out, state = model.network(point, None, state)
            mixture = PenMixture.from_outputs(out[0, 0], model.config.components)
            total += mixture.log_prob(x[t], torch.tensor(t == n - 1)).item()
            point = x[t].view(1, 1, 3)
        assert model.log_prob(batch.x.double(), mask=batch.mask).item() == pytest.approx(total, rel=1e-10)


def train_briefly(model, batch, steps: int = 15) -> list[float]:
    """The losses of ``steps`` Adam steps (lr 1e-2) on one batch."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        optimiser.zero_grad()
        out = model.loss(batch, "model", Progress())
        out.loss.backward()
        optimiser.step()
        losses.append(out.loss.item())
    return losses


def test_a_few_steps_lower_the_loss(glyphs):
    losses = train_briefly(model_for(glyphs.spec), glyphs.tensors(16))
    assert losses[-1] < losses[0] - 1.0


def test_samples_are_padded_sequences_with_pen_bits(glyphs):
    model = model_for(glyphs.spec).eval()
    x = model.sample(16, generator=torch.Generator().manual_seed(0), bias=0.5)
    assert x.shape == (16, 21, 3) and not x.requires_grad
    real = (x != 0).any(-1)
    lengths = real.sum(1)
    assert (lengths >= 1).all() and torch.equal(real, torch.arange(21) < lengths[:, None])  # real rows first
    assert set(x[..., 2].unique().tolist()) <= {0.0, 1.0}
    ended = lengths < 21  # a sequence ends at a point that ends a stroke
    assert (x[ended, lengths[ended] - 1, 2] == 1).all()
    again = model.sample(16, generator=torch.Generator().manual_seed(0), bias=0.5)
    assert torch.equal(x, again)
    with pytest.raises(DgmError, match="--bias"):
        model.sample(2, bias=-1.0)


def test_a_conditional_model_marginalises_over_the_classes():
    spec = load(f"strokes:{GLYPHS}").spec
    labelled = type(spec)(**{**spec.to_json(), "num_classes": 3})
    model = model_for(labelled, conditional=True).eval()
    batch = load(f"strokes:{GLYPHS}").tensors(4)
    with torch.no_grad():
        per_class = torch.stack([model.log_prob(batch.x, mask=batch.mask, y=torch.full((4,), k)) for k in range(3)], 1)
        torch.testing.assert_close(model.log_prob(batch.x, mask=batch.mask), per_class.logsumexp(1) - math.log(3))
    assert model.sample(2, condition=1).shape == (2, 21, 3)
    with pytest.raises(DgmError, match="class 5"):
        model.sample(2, condition=5)


def test_the_model_refuses_data_that_is_not_strokes():
    with pytest.raises(DgmError, match="--data hershey"):
        create("mdn-rnn", load("shapes2d", "test").spec)


# --- pictures and a run through the CLI ----------------------------------------------------------------------
def test_a_lifted_pen_leaves_a_gap_in_the_drawing():
    # two horizontal strokes, (0, 0)-(1, 0) and (2, 0)-(3, 0); the pen lifted between them
    rows = torch.tensor([[[0.0, 0, 0], [1, 0, 1], [1, 0, 0], [1, 0, 1]]])
    picture = np.asarray(strokes_picture(rows, torch.ones(1, 4, dtype=torch.bool), cell=64).convert("L"))
    line = picture[1 + 32]  # the middle row of the cell (1 pixel of padding above)
    ink = line < 128
    assert ink[1 + 8] and ink[1 + 55] and not ink[1 + 32]  # both strokes drawn, nothing between them


def test_training_evaluation_and_report_on_a_stroke_file(tmp_path, capsys):
    run = tmp_path / "run"
    settings = [f"--set model.{k}={v}" for k, v in TINY.items()]
    assert main(["train", "mdn-rnn", "--data", f"strokes:{GLYPHS}", "--epochs", "1", "--out", str(run), "--quiet",
                 "--set", "train.batch_size=32", *" ".join(settings).split()]) == 0
    assert (run / "samples" / "epoch_001.png").exists()
    assert main(["eval", str(run), "--metrics", "nll", "--quiet"]) == 0
    units = {r["unit"]: r for r in json.loads((run / "eval.json").read_text())}
    assert "nats/point" in units
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "Test strokes" in page and "each a pen drawing" in page
    picture = sample_picture(load(f"strokes:{GLYPHS}", "test").tensors().x, load(f"strokes:{GLYPHS}").spec)
    assert picture.width > 64


# --- words and synthesis (section 5) ---------------------------------------------------------------------
def test_a_word_advances_the_pen_by_each_glyphs_width():
    (_, a, bounds), = stroke_data.parse_jhf_bounds("  501  9I[RFJ[ RRFZ[ RMTWT\n")
    strokes = stroke_data.write("AA", {"A": (a, bounds)})
    assert len(strokes) == 6
    for first, second in zip(strokes[:3], strokes[3:]):  # the second "A" is the first moved right by 18 units
        np.testing.assert_array_equal(second, first + [18, 0])
    np.testing.assert_array_equal(strokes[0][0], [0 + 9, 12])  # the left bound at the pen's start, x = 0
    pen = stroke_data.to_offsets(strokes)[:, 2]
    assert pen.tolist() == [0, 1] * 6  # the pen lifted at the end of every stroke, between the glyphs too


@pytest.mark.skipif(not stroke_data.HERSHEY_DIR.is_dir(), reason="apt-get install hershey-fonts-data")
def test_hershey_words_are_captioned_and_held_out_by_string():
    train, test = load("hershey-words"), load("hershey-words", "test")
    alphabet = train.spec.extras["caption_characters"]
    assert train.spec.shape == (stroke_data.WORDS_MAX_POINTS, 3) and train.labels is None
    assert len(train) + len(test) + train.spec.extras["dropped_words"] + test.spec.extras["dropped_words"] == \
        stroke_data.WORDS
    assert train.spec.extras["dropped_words"] < 20 and len(test) > 400

    def strings(data):
        return ["".join(alphabet[i - 1] for i in row if i) for row in data.captions.tolist()]

    seen, held_out = strings(train), strings(test)
    assert not set(seen) & set(held_out) and len(set(seen)) == len(seen)
    assert {len(t) for t in seen} == set(range(2, 7))
    again = load("hershey-words", "test")
    assert torch.equal(again.raw, test.raw) and torch.equal(again.captions, test.captions)
    batch = train.tensors(64)
    assert (batch.x[torch.arange(64), train.lengths[:64] - 1, 2] == 1).all()
    # a word has at least as many strokes (pen-up bits) as characters
    assert ((batch.x[..., 2] == 1).sum(1) >= (batch.captions != 0).sum(1)).all()


@pytest.fixture(scope="module")
def words():
    """The glyphs of GLYPHS, each with a random string of 1 to 3 characters of "abcd" as its caption."""
    from dgm.data.core import Dataset

    data = load(f"strokes:{GLYPHS}")
    spec = type(data.spec)(**{**data.spec.to_json(), "name": "words",
                              "extras": {**data.spec.extras, "caption_characters": "abcd", "caption_length": 3}})
    g = torch.Generator().manual_seed(0)
    captions = torch.randint(1, 5, (len(data), 3), generator=g)
    captions[torch.arange(3) >= torch.randint(1, 4, (len(data), 1), generator=g)] = 0
    return Dataset(data.raw, None, spec, train=True, lengths=data.lengths, captions=captions)


def test_the_window_is_eqs_46_to_51_for_hand_set_parameters(words):
    model = model_for(words.spec, window_components=2).double()
    alpha, beta, step = torch.tensor([0.7, 1.5]), torch.tensor([0.5, 2.0]), torch.tensor([0.3, 0.8])
    with torch.no_grad():  # the window's outputs fixed: alpha^ = log alpha, beta^ = log beta, kappa^ = log step
        model.window.weight.zero_()
        model.window.bias.copy_(torch.cat([alpha, beta, step]).log())
    captions = torch.tensor([[2, 4, 1], [3, 0, 0]])
    text = model.one_hot(captions)  # (2, 3, 4)
    T = 6
    with torch.no_grad():
        _, state, w = model.first_layer(torch.randn(2, T, 3, dtype=torch.float64), text, None)
    for t in range(1, T + 1):
        kappa = t * step  # eq. 51 from kappa_0 = 0
        for b in range(2):
            phi = [float((alpha * torch.exp(-beta * (kappa - u) ** 2)).sum()) for u in (1, 2, 3, 4)]  # eq. 46
            expected = sum(phi[u] * text[b, u] for u in range(3))  # eq. 47
            torch.testing.assert_close(w[b, t - 1], expected.double())
    torch.testing.assert_close(state[2], (T * step).double().expand(2, 2))
    torch.testing.assert_close(state[4][0, 3].exp(), torch.tensor(phi[3], dtype=torch.float64))  # phi(T, U + 1)


def test_the_window_only_moves_forward(words):
    model = model_for(words.spec, window_components=3).eval()
    batch = words.tensors(4)
    text, state, kappas = model.one_hot(batch.captions), None, []
    inputs = torch.cat([model.start.expand(4, 1, 3), batch.x[:, :-1]], 1)
    with torch.no_grad():
        for t in range(inputs.shape[1]):
            _, state = model.network(inputs[:, t:t + 1], None, state, text)
            kappas.append(state[0][2])
    kappas = torch.stack(kappas, 1)  # (4, N, K)
    assert (kappas.diff(dim=1) > 0).all() and (kappas > 0).all()
    # stepping one point at a time gives what teacher forcing over the whole sequence gives
    with torch.no_grad():
        out, _ = model.network(inputs, None, None, text)
        one, _ = model.network(inputs[:, :5], None, None, text)
    torch.testing.assert_close(out[:, :5], one)


def test_the_likelihood_given_the_text_is_causal_and_ignores_padding(words):
    model = model_for(words.spec, window_components=3).double()
    batch = words.tensors(6)
    x = batch.x.double().requires_grad_()
    point = model.log_prob_per_point(x, batch.mask, captions=batch.captions)  # (6, N)
    n = int(batch.mask[0].sum())
    for t in range(n):
        grad, = torch.autograd.grad(point[0, t], x, retain_graph=True)
        assert (grad[0, t + 1:] == 0).all() and (grad[1:] == 0).all()  # no later point, no other sequence
        assert grad[0, :t + 1].abs().sum() > 0
    model.eval()
    with torch.no_grad():
        exact = model.conditional_log_prob(batch.x, batch.captions, mask=batch.mask)
        noisy = torch.where(batch.mask[..., None], batch.x, torch.randn_like(batch.x))
        torch.testing.assert_close(model.log_prob(noisy, batch.mask, captions=batch.captions), exact)
        wider = torch.cat([batch.captions, torch.zeros(6, 2, dtype=torch.long)], 1)  # more caption padding
        torch.testing.assert_close(model.log_prob(batch.x, batch.mask, captions=wider), exact)
        one_by_one = [model.log_prob(batch.x[i:i + 1], batch.mask[i:i + 1], captions=batch.captions[i:i + 1])
                      for i in range(6)]
        torch.testing.assert_close(torch.cat(one_by_one), exact)
        other = batch.captions.clone()
        other[:, 0] = other[:, 0] % 4 + 1  # another first character
        assert (model.log_prob(batch.x, batch.mask, captions=other) != exact).all()  # the text matters
    assert "conditional_log_prob" in capabilities(model) and "log_prob" not in capabilities(model)
    assert "conditional_log_prob" not in capabilities(model_for(words.spec))


def test_a_few_steps_with_the_window_lower_the_loss(words):
    model = model_for(words.spec, window_components=3)
    losses = train_briefly(model, words.tensors(16))
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < losses[0] - 1.0


def test_synthesis_samples_are_padded_sequences_of_the_text(words):
    model = model_for(words.spec, window_components=3).eval()
    g = torch.Generator().manual_seed(0)
    x = model.sample(8, condition=["ab", "dcb"] * 4, generator=g, bias=0.5)
    assert x.shape == (8, 21, 3) and not x.requires_grad
    real = (x != 0).any(-1)
    lengths = real.sum(1)
    assert (lengths >= 1).all() and torch.equal(real, torch.arange(21) < lengths[:, None])
    assert set(x[..., 2].unique().tolist()) <= {0.0, 1.0}
    ended = lengths < 21
    assert (x[ended, lengths[ended] - 1, 2] == 1).all()
    assert torch.equal(model.sample(8, condition=["ab", "dcb"] * 4, generator=torch.Generator().manual_seed(0),
                                    bias=0.5), x)
    assert model.sample(3, caption="abc").shape == (3, 21, 3) and model.sample(2).shape == (2, 21, 3)
    with torch.no_grad():  # a window that jumps past the text at once: every sequence stops after one point
        model.window.bias[6:] = math.log(10.0)
    x = model.sample(4, caption="ab", generator=g)
    assert ((x != 0).any(-1).sum(1) == 1).all() and (x[:, 0, 2] == 1).all()
    with pytest.raises(DgmError, match="'abcd'") as e:
        model.sample(2, caption="abz")
    assert "\n" not in str(e.value)
    with pytest.raises(DgmError, match="reads no text"):
        model_for(words.spec).sample(2, caption="ab")


def test_a_window_needs_data_with_character_captions(words):
    with pytest.raises(DgmError, match="hershey-words") as e:
        model_for(load(f"strokes:{GLYPHS}").spec, window_components=3)
    assert "\n" not in str(e.value)
    labelled = type(words.spec)(**{**words.spec.to_json(), "num_classes": 3})
    with pytest.raises(DgmError, match="model.conditional=false"):
        model_for(labelled, window_components=3, conditional=True)
    model = model_for(words.spec, window_components=3)
    with pytest.raises(DgmError, match="needs the text") as e:
        model.loss(load(f"strokes:{GLYPHS}").tensors(4), "model", Progress())
    assert "\n" not in str(e.value)


def test_a_synthesis_model_round_trips_through_its_config_and_weights(words, tmp_path):
    from dgm.models import MODELS
    from dgm.models.base import config_to_json, make_config
    from dgm.train import checkpoint as ckpt

    model = model_for(words.spec, window_components=3).eval()
    x = model.sample(3, caption="cab", generator=torch.Generator().manual_seed(1))
    ckpt.save_tensors(model.state_dict(), tmp_path / "w.safetensors")
    clone = MODELS["mdn-rnn"](make_config(MODELS["mdn-rnn"], config_to_json(model.config)), words.spec).eval()
    ckpt.load_state_dict_checked(clone, ckpt.load_tensors(tmp_path / "w.safetensors"), tmp_path)
    assert torch.equal(clone.sample(3, caption="cab", generator=torch.Generator().manual_seed(1)), x)


def test_nll_of_a_synthesis_model_says_its_likelihood_needs_the_text(words):
    from dgm.eval import evaluate

    model = model_for(words.spec, window_components=3).eval()
    with pytest.raises(DgmError, match="only given its condition") as e:
        evaluate(model, words, ["nll"], progress=False)
    assert "\n" not in str(e.value) and "conditional_log_prob" in str(e.value)
