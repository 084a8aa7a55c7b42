"""Known answers of the language models (``lstm-lm``, ``transformer-lm``, by bytes or subwords): the causal
order of both networks, cached against uncached sampling, exactly 8 bits per token from a uniform
model through the evaluator, the likelihood with its end token against a sum by hand, the truncation
of the logits (temperature, top-k, nucleus) on a hand-made vector, prompts and refusals, and a few
training steps that lower the loss; the subword tokenizer's lossless round trip and its life in the weights."""
from __future__ import annotations

import math

import pytest
import torch

from dgm.data import load
from dgm.data.core import DataSpec
from dgm.errors import DgmError
from dgm.eval import evaluate
from dgm.models import Progress, create
from dgm.models.language import END, truncate_logits

LINES = ["hello world", "the quick brown fox", "jumps over the lazy dog", "The end is near", "a",
         "The cat sat on the mat", "ünïcödé bytes", "padding is not data", "eight bits a byte",
         "To be or not to be"] * 3
TINY = {"lstm-lm": {"width": 8, "hidden": 16, "layers": 2, "dropout": 0.0},
        "transformer-lm": {"width": 8, "depth": 2, "heads": 2, "dropout": 0.0}}
NAMES = sorted(TINY)


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return f"text:{path}"


def short_spec(length: int) -> DataSpec:
    """Token sequences of ``length`` positions (a short context keeps the hand computations small)."""
    return DataSpec("short", (length,), "levels", levels=256, kind="tokens")


def build(name: str, spec: DataSpec, seed: int = 0):
    torch.manual_seed(seed)
    return create(name, spec, **TINY[name]).eval()


def tokens(*texts: str, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts as padded tokens ``(B, length)`` and their mask."""
    x = torch.zeros(len(texts), length, dtype=torch.long)
    for i, s in enumerate(texts):
        data = s.encode()
        x[i, :len(data)] = torch.tensor(list(data))
    mask = torch.arange(length) < torch.tensor([len(s.encode()) for s in texts])[:, None]
    return x, mask


# --- the causal order -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_logits_at_a_position_do_not_depend_on_later_inputs(name):
    """d logits_i / d embedding_j is exactly 0 for j > i, and not for every j <= i (autograd)."""
    model = build(name, short_spec(12))
    net = model.network
    seen = []

    def keep(module, inputs, out):  # noqa: ANN001, ANN202 (a forward hook: returns None, output unchanged)
        out.retain_grad()
        seen.append(out)

    net.embedding.register_forward_hook(keep)
    ids = torch.randint(0, 257, (2, 12), generator=torch.Generator().manual_seed(0))
    logits, _ = net(ids)
    for i in range(12):
        (grad,) = torch.autograd.grad(logits[:, i].sum(), seen[0], retain_graph=True)  # (2, 12, width)
        assert (grad[:, i + 1:] == 0).all(), f"output {i} sees a later input"
        assert (grad[:, :i + 1].abs().sum((0, 2)) > 0).all(), f"output {i} does not see every earlier input"


@pytest.mark.parametrize("name", NAMES)
def test_the_conditional_of_a_token_does_not_read_the_token_itself(name):
    """Changing x_j changes log p(x_t | x_<t) only at t >= j (the inputs are shifted by the start symbol)."""
    model = build(name, short_spec(10))
    x, mask = tokens("abcdefgh", length=10)
    before = model.step_log_probs(x, mask)
    x[0, 4] = ord("z")
    after = model.step_log_probs(x, mask)
    assert torch.equal(before[:, :4], after[:, :4])
    assert not torch.equal(before[:, 4:], after[:, 4:])


# --- the likelihood ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_log_prob_is_the_sum_of_the_conditionals_of_the_real_tokens_and_the_end_token(name):
    L = 6
    model = build(name, short_spec(L))
    x, mask = tokens("hey", "abcdef", length=L)  # the second fills every position: no end token
    start = model.vocab

    def by_hand(row: torch.Tensor, n: int) -> float:
        total = 0.0
        for t in range(min(n + 1, L)):  # one network pass per position, on the prefix alone
            prefix = torch.tensor([[start, *row[:t].tolist()]])
            target = int(row[t]) if t < n else END
            total += torch.log_softmax(model.network(prefix)[0][0, -1].double(), -1)[target].item()
        return total

    with torch.no_grad():
        lp = model.log_prob(x, mask=mask)
        expected = [by_hand(x[0], 3), by_hand(x[1], 6)]
        torch.testing.assert_close(lp.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)
        garbage = x.clone()
        garbage[0, 4:] = torch.tensor([7, 9])  # after the end token: not modelled
        assert torch.equal(model.log_prob(garbage, mask=mask), lp)
        assert torch.equal(model.log_prob(x), lp)  # without a mask: the tokens before the first 0
        # the end token is scored: a model that never ends has a different likelihood
        no_end = model.step_log_probs(x, mask)
        assert no_end.shape == (2, 6) and no_end[0, 3] != 0 and (no_end[0, 4:] == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_a_uniform_model_gives_8_bits_per_scored_token_through_the_evaluator(name, text):
    test = load(text, "test")
    model = create(name, test.spec, **TINY[name]).eval()
    with torch.no_grad():
        model.network.head.weight.zero_()
        model.network.head.bias.zero_()
    batch = test.tensors()
    n = test.lengths
    ended = (n < test.spec.shape[0]).long()
    with torch.no_grad():  # per sequence: (real tokens + end token) x 8 bits
        bits = -model.log_prob(batch.x, mask=batch.mask).double() / math.log(2)
    torch.testing.assert_close(bits, 8.0 * (n + ended).double(), rtol=1e-6, atol=0)
    results = {r.unit: r for r in evaluate(model, test, ["nll"], progress=False, batch_size=4)}
    # the metric divides by the scored tokens: the real ones and each sequence's end token
    assert results["bits/token"].value == pytest.approx(8.0, rel=1e-6)  # float32 log-softmax
    assert f"with {int(ended.sum())} end tokens" in results["bits/token"].qualifier
    assert results["nats"].value == pytest.approx((n + ended).double().mean().item() * math.log(256), rel=1e-6)


# --- the truncation of the logits -------------------------------------------------------------------
P = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)


def probs(**options) -> torch.Tensor:
    return truncate_logits(P.log(), **options).softmax(-1)


def test_truncation_keeps_the_right_tokens_and_renormalises():
    torch.testing.assert_close(probs(), P)
    torch.testing.assert_close(probs(top_k=2), torch.tensor([5 / 7, 2 / 7, 0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(probs(top_k=1), torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(probs(top_p=0.6), torch.tensor([5 / 7, 2 / 7, 0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(probs(top_p=0.45), torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(probs(top_p=0.55), torch.tensor([5 / 7, 2 / 7, 0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(probs(top_p=1e-9), torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(probs(top_p=0.86), torch.cat([P[:4] / 0.95, P.new_zeros(1)]))
    torch.testing.assert_close(probs(top_p=1.0), P)
    # temperature 2: softmax(log p / 2), proportional to sqrt(p)
    torch.testing.assert_close(probs(temperature=2.0), P.sqrt() / P.sqrt().sum())
    # top-p acts on the distribution after top-k: [0.5, 0.2, 0.15] / 0.85 reaches 0.8 at its second token
    torch.testing.assert_close(probs(top_k=3, top_p=0.8), torch.tensor([5 / 7, 2 / 7, 0, 0, 0], dtype=torch.float64))
    # order does not matter: the same vector shuffled
    order = torch.tensor([3, 0, 4, 2, 1])
    torch.testing.assert_close(truncate_logits(P.log()[order], top_p=0.6).softmax(-1),
                               torch.tensor([5 / 7, 2 / 7, 0, 0, 0], dtype=torch.float64)[order])


# --- sampling ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_cached_sampling_equals_recomputing_the_prefix(name):
    model = build(name, short_spec(24)).double()  # float64: no rounding difference to flip a draw
    prompt = torch.tensor(list(b"Th"))
    for options in ({}, {"temperature": 1.5, "top_k": 50, "top_p": 0.95}):
        cached = model.generate(6, prompt, generator=torch.Generator().manual_seed(3), **options)
        again = model.generate(6, prompt, generator=torch.Generator().manual_seed(3), cached=False, **options)
        assert torch.equal(cached, again)
        assert (cached[:, :2] == prompt).all() and cached[:, 2:].ne(END).any()


def greedy(model, prompt: bytes, n: int) -> torch.Tensor:
    """Greedy decoding by hand: the argmax of each conditional, whole prefix every step."""
    L = model.length
    x = torch.zeros(n, L, dtype=torch.long)
    x[:, :len(prompt)] = torch.tensor(list(prompt))
    for t in range(len(prompt), L):
        ids = torch.cat([torch.full((n, 1), model.vocab), x[:, :t]], 1)
        x[:, t] = model.network(ids)[0][:, -1].argmax(-1)
        if (x[:, t] == END).all():
            break
    ended = (x == END).long().cumsum(1) > 0
    return x.masked_fill(ended, END)


@pytest.mark.parametrize("name", NAMES)
def test_top_k_1_and_a_tiny_top_p_are_greedy_decoding(name):
    model = build(name, short_spec(16))
    with torch.no_grad():
        expected = greedy(model, b"ab", 3)
    for options in ({"top_k": 1}, {"top_p": 1e-6}):
        x = model.sample(3, generator=torch.Generator().manual_seed(0), prompt="ab", **options)
        assert torch.equal(x, expected), options


@pytest.mark.parametrize("name", NAMES)
def test_samples_begin_with_the_prompt_and_are_padded_after_their_end(name, text):
    data = load(text)
    model = create(name, data.spec, **TINY[name]).eval()
    x = model.sample(5, generator=torch.Generator().manual_seed(0), prompt="Thé ", temperature=0.7)
    assert x.shape == (5, data.spec.shape[0]) and x.dtype == torch.int64
    assert (x[:, :5] == torch.tensor(list("Thé ".encode()))).all()
    ended = (x == END).long().cumsum(1) > 0
    assert (x[ended] == END).all()  # nothing after the end token
    again = model.sample(5, generator=torch.Generator().manual_seed(0), prompt="Thé ", temperature=0.7)
    assert torch.equal(x, again)


@pytest.mark.parametrize(("options", "message"), [
    ({"prompt": "a\x00b"}, "NUL byte"),
    ({"prompt": "x" * 16}, "prompt is 16 bytes"),
    ({"top_p": 0.0}, r"--top-p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"--top-p must be in \(0, 1\]"),
    ({"temperature": 0.0}, "--temperature must be > 0"),
    ({"temperature": -1.0}, "--temperature must be > 0"),
    ({"top_k": 0}, "--top-k must be >= 1"),
    ({"sampler": "beam"}, "no sampler 'beam'"),
])
def test_bad_sampling_options_are_refused_in_one_line(options, message):
    model = build("transformer-lm", short_spec(16))
    with pytest.raises(DgmError, match=message) as info:
        model.sample(2, **options)
    assert "\n" not in str(info.value)


def test_the_models_refuse_data_that_is_not_token_sequences():
    from conftest import image_dataset

    for name in NAMES:
        with pytest.raises(DgmError, match="models token sequences") as info:
            create(name, image_dataset(n=8).spec)
        assert "\n" not in str(info.value)


# --- training ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_a_few_training_steps_lower_the_loss(name, text):
    data = load(text)
    torch.manual_seed(0)
    model = create(name, data.spec, **TINY[name])
    batch = data.tensors(16)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model.loss(batch, "model", Progress()).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(256), rel=0.05)  # about uniform at initialisation
    assert losses[-1] < losses[0] - 0.5, losses


# --- subwords ---------------------------------------------------------------------------------------
ODD_TEXTS = [b"caf\xc3\xa9 au lait", b"stray \xff\xfe bytes \x80 that are not UTF-8", b"  two spaces\tand a tab",
             b"line\nbreaks\r\n", b"", b"x", "日本語のテキスト".encode()]


def test_subword_tokenisation_round_trip_is_lossless_and_shortens_text():
    """decode(encode(t)) == t for any bytes (invalid UTF-8 included); merges learnt from the text
    spell it in fewer tokens; the numbering: bytes first, then each merge as a pair of earlier tokens."""
    from dgm.data.tokenize import NUM_BYTES, Subwords, learn_merges

    corpus = [line.encode() for line in LINES]
    merges = learn_merges(corpus, 40)
    assert merges.shape == (40, 2) and (merges[:, 0] >= 0).sum() >= 10
    used = merges[merges[:, 0] >= 0]
    assert (used < NUM_BYTES + torch.arange(len(used))[:, None].numpy()).all()  # pairs of earlier tokens
    tokenizer = Subwords(merges)
    texts = corpus + ODD_TEXTS
    ids = tokenizer.encode(texts)
    assert [tokenizer.decode(i) for i in ids] == texts
    assert sum(map(len, ids[:len(corpus)])) < 0.8 * sum(map(len, corpus))
    assert Subwords(merges[:0]).encode([b"abc"]) == [[97, 98, 99]]  # no merges: the bytes


@pytest.mark.parametrize("name", NAMES)
def test_a_subword_model_learns_its_merges_in_prepare_and_keeps_them_in_its_weights(name, text):
    """prepare fills the merges from the training split; a fresh model given the state dict has the
    same tokenizer and the same likelihood; a uniform subword model gives log(256 + M) nats per
    scored subword (its spelling plus the end token); samples are bytes, prompt first."""
    data = load(text)
    model = create(name, data.spec, merges=30, **TINY[name]).eval()
    assert (model.merge_table == -1).all()
    model.prepare(data)
    assert (model.merge_table[:10] >= 0).all()
    clone = create(name, data.spec, merges=30, **TINY[name]).eval()
    clone.load_state_dict(model.state_dict())
    batch = data.tensors(8)
    torch.testing.assert_close(clone.log_prob(batch.x, mask=batch.mask), model.log_prob(batch.x, mask=batch.mask))
    with torch.no_grad():
        model.network.head.weight.zero_()
        model.network.head.bias.zero_()
    texts = [bytes(row[:n].tolist()) for row, n in zip(batch.x, data.lengths[:8].tolist())]
    spelled = torch.tensor([len(ids) + 1 for ids in model.subwords.encode(texts)], dtype=torch.float64)
    assert (spelled - 1 < torch.tensor([len(t) for t in texts])).any()  # merges were used
    torch.testing.assert_close(-model.log_prob(batch.x, mask=batch.mask).double(), spelled * math.log(256 + 30))
    results = {r.unit: r for r in evaluate(model, load(text, "test"), ["nll"], progress=False)}
    assert results["bits/token"].qualifier.startswith("bound (the text's BPE spelling), per scored token")
    x = model.sample(4, generator=torch.Generator().manual_seed(0), prompt="The ")
    assert x.shape == (4, data.spec.shape[0]) and (x[:, :4] == torch.tensor(list(b"The "))).all()
    ended = (x == END).long().cumsum(1) > 0
    assert (x[ended] == END).all()


def test_subword_sampling_cached_equals_uncached():
    torch.manual_seed(0)
    model = create("transformer-lm", short_spec(24), merges=20, **TINY["transformer-lm"]).double().eval()
    from dgm.data.tokenize import learn_merges

    model.merge_table.copy_(torch.from_numpy(learn_merges([line.encode() for line in LINES], 20)))
    prompt = model.prompt_tokens("The ")
    assert len(prompt) < 4  # " The"-like merges shorten the prompt
    cached = model.generate(5, prompt, generator=torch.Generator().manual_seed(2))
    again = model.generate(5, prompt, generator=torch.Generator().manual_seed(2), cached=False)
    assert torch.equal(cached, again)


def test_a_subword_run_learns_its_merges_once_and_a_loaded_run_has_them(text, tmp_path, monkeypatch):
    """dgm.train calls prepare on a fresh run only: resuming keeps the merges it trained with, and
    dgm.load rebuilds the same tokenizer from the weights."""
    import dgm
    from dgm.models import language
    from dgm.run import RunConfig
    from dgm.train.trainer import TrainConfig

    from dgm.data.tokenize import learn_merges

    calls = []

    def counted(*args):  # noqa: ANN202
        calls.append(args)
        return learn_merges(*args)

    monkeypatch.setattr(language, "learn_merges", counted)

    config = RunConfig("lstm-lm", {**TINY["lstm-lm"], "merges": 25}, dgm.DataConfig(text),
                       TrainConfig(epochs=1, batch_size=8, progress=False, device="cpu"))
    model, run_dir = dgm.train(config, tmp_path / "run")
    merges = model.merge_table.clone()
    assert (merges[:10] >= 0).all()
    loaded = dgm.load(run_dir)
    assert torch.equal(loaded.merge_table, merges)
    config.train.epochs = 2
    resumed, _ = dgm.train(config, run_dir, resume=True)
    assert torch.equal(resumed.merge_table, merges) and len(calls) == 1


def test_training_logs_the_held_out_bits_per_character_every_epoch(text, tmp_path):
    """The heldout_nll monitor's last value is the nll metric of the trained model on the test split."""
    import dgm
    from dgm.run import RunConfig
    from dgm.train.trainer import TrainConfig, read_csv

    config = RunConfig("lstm-lm", TINY["lstm-lm"], dgm.DataConfig(text),
                       TrainConfig(epochs=2, batch_size=8, progress=False, device="cpu", ema=0.0))
    model, run_dir = dgm.train(config, tmp_path / "run")
    logged = [r["test/bits"] for r in read_csv(run_dir / "metrics.csv") if "test/bits" in r]
    assert len(logged) == 2 and logged[1] < logged[0] < 8.5
    results = {r.unit: r for r in evaluate(model, load(text, "test"), ["nll"], progress=False)}
    assert logged[-1] == pytest.approx(results["bits/token"].value, rel=1e-5)
