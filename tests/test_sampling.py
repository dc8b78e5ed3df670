"""SamplingParams validation and the batched Sampler: exact processing, reproducibility, distributions."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import forwardpass.sampler as sampler_module
from forwardpass.sampler import (
    Sampler,
    SamplingState,
    apply_min_p,
    apply_top_k,
    apply_top_p,
)
from forwardpass.sampling import SamplingParams

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _native_sampler() -> Sampler | None:
    from forwardpass.kernels import native, select

    lib = select.select_kernels("auto") if select.resolve_cpu() != "torch" else None
    return None if lib is None else Sampler(native.argmax_fn(lib), native.mask_fn(lib), native.sample_fn(lib))


@pytest.fixture(params=["torch", "native"])
def make_sampler(request):
    """The sampler with its PyTorch draw, and with the native kernels' draw for temperature-only rows."""
    if request.param == "torch":
        return Sampler
    if _native_sampler() is None:
        pytest.skip("no native kernels here")
    return _native_sampler


def states(*params: SamplingParams, prompt: tuple[int, ...] = (), eos: tuple[int, ...] = ()) -> list[SamplingState]:
    return [SamplingState(p, prompt, eos_token_ids=eos) for p in params]


# ---------------------------------------------------------------- SamplingParams validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 0),
        ("n", 129),
        ("n", 1.5),
        ("n", True),
        ("temperature", -1.0),
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("temperature", "hot"),
        ("temperature", 101.0),
        ("temperature", True),
        ("top_k", -2),
        ("top_k", 1.5),
        ("top_p", 0.0),
        ("top_p", -0.1),
        ("top_p", 1.5),
        ("top_p", math.nan),
        ("min_p", 1.5),
        ("min_p", -0.1),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", math.inf),
        ("repetition_penalty", -1.0),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -2.5),
        ("frequency_penalty", math.nan),
        ("logit_bias", {"5": 1.0}),
        ("logit_bias", {-1: 1.0}),
        ("logit_bias", {5: math.nan}),
        ("logit_bias", {True: 1.0}),
        ("logit_bias", [1, 2]),
        ("seed", 1.0),
        ("seed", 2**64),
        ("seed", False),
        ("stop", ""),
        ("stop", ["ok", ""]),
        ("stop", ["s"] * 17),
        ("stop", [1]),
        ("stop", 5),
        ("stop_token_ids", [-1]),
        ("stop_token_ids", ["a"]),
        ("stop_token_ids", 7),
        ("include_stop_str_in_output", 1),
        ("ignore_eos", "yes"),
        ("skip_special_tokens", None),
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("max_tokens", "a"),
        ("max_tokens", 1.0),
        ("min_tokens", -1),
        ("min_tokens", 300),  # > the default max_tokens of 256
        ("logprobs", 21),
        ("logprobs", -1),
        ("logprobs", True),
    ],
)
def test_invalid_params_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_error_message_shows_the_value() -> None:
    with pytest.raises(ValueError, match=r"temperature must be >= 0 .* finite, got nan"):
        SamplingParams(temperature=math.nan)


def test_valid_params_are_normalized() -> None:
    p = SamplingParams(
        temperature=1,
        top_k=-1,
        stop="\nUser:",
        stop_token_ids=[7, 9],
        logit_bias={3: 1e9, 4: -250, 5: 0.5},
        max_tokens=None,
        logprobs=20,
        seed=-3,
    )
    assert p.temperature == 1.0 and isinstance(p.temperature, float)
    assert p.top_k == 0
    assert p.stop == ("\nUser:",) and p.stop_token_ids == (7, 9)
    assert p.logit_bias == {3: 100.0, 4: -100.0, 5: 0.5}
    assert SamplingParams().stop == () and SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingParams(n=128, temperature=0.0).n == 128  # n > 1 at temperature 0 is allowed here


def test_params_are_frozen_and_replace_revalidates() -> None:
    p = SamplingParams(stop=["x"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 0.5  # type: ignore[misc]
    assert dataclasses.replace(p, temperature=0.5).stop == ("x",)
    with pytest.raises(ValueError, match="top_p"):
        dataclasses.replace(p, top_p=2.0)


def test_greedy_property() -> None:
    assert SamplingParams(temperature=0.0).greedy
    assert SamplingParams(top_k=1).greedy
    assert not SamplingParams().greedy
    assert not SamplingParams(top_k=2, temperature=0.5).greedy


def test_verify_vocab() -> None:
    SamplingParams(logit_bias={9: 1.0}, stop_token_ids=[9]).verify_vocab(10)
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={10: 1.0}).verify_vocab(10)
    with pytest.raises(ValueError, match="stop_token_ids"):
        SamplingParams(stop_token_ids=[99999999]).verify_vocab(10)


# ---------------------------------------------------------------- logits processing: exact numbers


def test_repetition_penalty_exact() -> None:
    logits = torch.tensor([[1.0, 2.0, -2.0, 3.0, -1.0]])
    rows = states(SamplingParams(repetition_penalty=2.0), prompt=(1,))
    rows[0].append(2)
    out = Sampler().apply_logits_processors(logits, rows)
    # token 1 (prompt, positive) is divided, token 2 (output, negative) multiplied, the rest untouched.
    assert out.tolist() == [[1.0, 1.0, -4.0, 3.0, -1.0]]
    assert logits.tolist() == [[1.0, 2.0, -2.0, 3.0, -1.0]]  # the input is not modified


def test_presence_and_frequency_penalty_exact() -> None:
    logits = torch.tensor([[1.0, 2.0, -2.0, 3.0]])
    rows = states(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), prompt=(3,))
    for token in (1, 1, 2):
        rows[0].append(token)
    out = Sampler().apply_logits_processors(logits, rows)
    # OpenAI: logit - count * frequency - (count > 0) * presence, over output tokens only (token 3 is prompt).
    assert out.tolist() == [[1.0, 2.0 - 0.5 - 0.5, -2.0 - 0.25 - 0.5, 3.0]]


def test_penalties_follow_sampled_tokens() -> None:
    """sample() records each token; the counts used next step include it (incremental, one token at a time)."""
    rows = states(SamplingParams(temperature=0.0, frequency_penalty=1.0, repetition_penalty=2.0), prompt=(2,))
    sampler = Sampler()
    logits = torch.tensor([[4.0, 3.5, 3.0]])
    assert sampler.sample(logits, rows).token_ids == [0]
    # token 0: 4 / 2 - 1 = 1; token 2 (prompt): 3 / 2 = 1.5, and no frequency penalty (not in the output).
    assert sampler.apply_logits_processors(logits, rows).tolist() == [[1.0, 3.5, 1.5]]
    assert sampler.sample(logits, rows).token_ids == [1]
    rows[0].append(0)  # tokens appended by the caller count too; several at once take the bulk path
    rows[0].append(0)
    assert sampler.apply_logits_processors(logits, rows).tolist() == [[4.0 / 2 - 3.0, 3.5 / 2 - 1.0, 1.5]]


def test_logit_bias_exact_and_batched() -> None:
    logits = torch.zeros(2, 4)
    rows = states(SamplingParams(logit_bias={1: 5.0, 3: -1e9}), SamplingParams())
    out = Sampler().apply_logits_processors(logits, rows)
    assert out.tolist() == [[0.0, 5.0, 0.0, -100.0], [0.0, 0.0, 0.0, 0.0]]


def test_min_tokens_masks_eos_and_stop_ids() -> None:
    sampler = Sampler()
    rows = states(SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=[2]), eos=(0,))
    logits = torch.tensor([[10.0, 1.0, 9.0, 0.0]])  # EOS (0) then stop id 2 are the favourites
    tokens = [sampler.sample(logits, rows).token_ids[0] for _ in range(4)]
    assert tokens == [1, 1, 1, 0]


def test_min_tokens_keeps_eos_with_ignore_eos() -> None:
    rows = states(SamplingParams(min_tokens=2, ignore_eos=True), eos=(0,))
    out = Sampler().apply_logits_processors(torch.zeros(1, 3), rows)
    assert out.tolist() == [[0.0, 0.0, 0.0]]  # EOS does not stop the request, so it is not masked


def test_out_of_vocab_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="logit_bias"):
        Sampler().sample(torch.zeros(1, 4), states(SamplingParams(logit_bias={4: 1.0})))
    with pytest.raises(ValueError, match="prompt_token_ids"):
        Sampler().sample(torch.zeros(1, 4), states(SamplingParams(), prompt=(0, 7)))
    with pytest.raises(ValueError, match="shape"):
        Sampler().sample(torch.zeros(2, 4), states(SamplingParams()))


def test_top_k_top_p_min_p_filters() -> None:
    x = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]]))
    assert torch.isinf(apply_top_k(x, [2, 0])).tolist() == [[False, False, True, True], [False] * 4]
    # top_p 0.7: 0.5 < 0.7 so the second token is needed too; 0.8 > 0.7 so the third is not.
    top_p = apply_top_p(x, [0.7, 1.0])
    assert torch.isinf(top_p).tolist() == [[False, False, True, True], [False] * 4]
    assert torch.equal(top_p[1], x[1])  # p == 1 leaves the row bit-identical
    # min_p 0.2: threshold 0.2 * 0.5 = 0.1 drops 0.05; row 2: 0.4 * 0.4 = 0.16 drops 0.1 only.
    min_p = apply_min_p(x, [0.2, 0.4])
    assert torch.isinf(min_p).tolist() == [[False, False, False, True], [True, False, False, False]]
    assert min_p[0, 0] == x[0, 0] and min_p[1, 3] == x[1, 3]
    assert apply_min_p(x, [0.0, 0.0]) is x


def test_top_p_keeps_ties_and_its_cpu_shortcut_matches_the_full_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    tied = torch.log(torch.tensor([[0.4, 0.2, 0.2, 0.2]]))
    assert torch.isinf(apply_top_p(tied, [0.5])).tolist() == [[False, False, False, False]]
    x = torch.randn(6, 3000, generator=torch.Generator().manual_seed(4)) * 1.5
    top_p = [0.5, 0.9, 1.0, 0.99, 0.3, 1e-6]  # nucleus sizes: 213, 1239, -, 2401, 83, 1
    monkeypatch.setattr(sampler_module, "TOP_P_CANDIDATES", ())  # always the full sort
    full = apply_top_p(x, top_p)
    assert (~torch.isinf(full)).sum(-1).tolist() == [213, 1239, 3000, 2401, 83, 1]
    monkeypatch.setattr(sampler_module, "TOP_P_CANDIDATES", (1000,))
    assert torch.equal(apply_top_p(x[[0, 4, 5]], [0.5, 0.3, 1e-6]), full[[0, 4, 5]])  # 1000 candidates suffice
    assert torch.equal(apply_top_p(x, top_p), full)  # rows 1 and 3 need more: falls back to the sort
    monkeypatch.setattr(sampler_module, "TOP_P_CANDIDATES", (100, 1500))
    assert torch.equal(apply_top_p(x[:2], top_p[:2]), full[:2])  # the second stage suffices
    assert torch.equal(full[2], x[2])


# ---------------------------------------------------------------- token choice


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_picks_argmax_lowest_on_ties(device: str) -> None:
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0], [5.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 9.0]], device=device)
    rows = states(SamplingParams(temperature=0.0), SamplingParams(temperature=0.0), SamplingParams(top_k=1))
    assert Sampler().sample(logits, rows).token_ids == [1, 0, 3]


def test_top_k_1_equals_greedy_and_top_k_2_stays_in_top_2() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 50, generator=gen)
    top2 = set(logits[0].topk(2).indices.tolist())
    sampler = Sampler()
    greedy = states(SamplingParams(temperature=0.0))
    k1 = states(SamplingParams(top_k=1, temperature=1.5, seed=1))
    k2 = states(SamplingParams(top_k=2, temperature=5.0, seed=2))
    drawn = set()
    for _ in range(30):
        assert sampler.sample(logits, k1).token_ids == sampler.sample(logits, greedy).token_ids
        drawn.update(sampler.sample(logits, k2).token_ids)
    assert drawn == top2


def test_tiny_top_p_gives_argmax() -> None:
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(3))
    rows = states(*(SamplingParams(top_p=1e-6, temperature=2.0, seed=s) for s in range(8)))
    assert Sampler().sample(logits, rows).token_ids == logits.argmax(-1).tolist()


def test_min_p_never_samples_below_threshold() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(400, 4).contiguous()
    rows = states(*(SamplingParams(min_p=0.2, seed=s) for s in range(400)))
    drawn = Sampler().sample(logits, rows).token_ids
    assert set(drawn) == {0, 1, 2}


def test_logit_bias_bans_and_forces() -> None:
    sampler = Sampler()
    logits = torch.tensor([[5.0, 0.0, 1.0]] * 64)
    banned = states(*(SamplingParams(logit_bias={0: -100.0}, seed=s) for s in range(64)))
    assert 0 not in sampler.sample(logits, banned).token_ids
    forced = states(*(SamplingParams(logit_bias={1: 100.0}, temperature=2.0, seed=s) for s in range(64)))
    assert set(sampler.sample(logits, forced).token_ids) == {1}
    assert sampler.sample(logits[:1], states(SamplingParams(temperature=0, logit_bias={0: -100}))).token_ids == [2]


def _run(rows: list[SamplingState], row_of_interest: int, steps: int, seed: int, make_sampler=Sampler) -> list[int]:
    """Sample ``steps`` tokens; the logits of ``row_of_interest`` depend only on ``seed`` and the step."""
    sampler = make_sampler()
    ours = torch.Generator().manual_seed(seed)
    others = torch.Generator().manual_seed(seed + 1000)
    tokens = []
    for _ in range(steps):
        logits = torch.randn(len(rows), 300, generator=others) * 3  # 300: two blocks of the draw
        logits[row_of_interest] = torch.randn(300, generator=ours) * 3
        tokens.append(sampler.sample(logits, rows).token_ids[row_of_interest])
    return tokens


@pytest.mark.parametrize(
    "ours",
    [
        SamplingParams(seed=1234),
        SamplingParams(seed=1234, temperature=0.7, top_p=0.9, repetition_penalty=1.3, presence_penalty=0.5),
        SamplingParams(seed=7, top_k=5, min_p=0.05, frequency_penalty=0.3, logit_bias={3: 2.0}),
    ],
)
def test_seeded_row_is_independent_of_batch(ours: SamplingParams, make_sampler) -> None:
    alone = _run([SamplingState(ours, (1, 2, 3))], 0, steps=50, seed=0, make_sampler=make_sampler)
    neighbours = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.9),  # temperature only: the native draw where there is one
        SamplingParams(top_k=3, temperature=1.3),
        SamplingParams(top_p=0.5, min_p=0.1, repetition_penalty=1.5, logprobs=3),
        SamplingParams(presence_penalty=1.0, frequency_penalty=-0.5, logit_bias={0: 50.0}, min_tokens=10),
    ]
    batch = [SamplingState(p, (4, 5)) for p in neighbours[:3]]
    batch.append(SamplingState(ours, (1, 2, 3)))
    batch += [SamplingState(p, (6,), eos_token_ids=(0,)) for p in neighbours[3:]]
    in_batch = _run(batch, 3, steps=50, seed=0, make_sampler=make_sampler)
    assert in_batch == alone
    assert len(set(alone)) > 5  # really sampled, not stuck on one token


def test_different_seeds_differ_and_same_seed_repeats(make_sampler) -> None:
    def run(seed: int) -> list[int]:
        return _run([SamplingState(SamplingParams(seed=seed), ())], 0, steps=30, seed=0, make_sampler=make_sampler)

    assert run(1) == run(1)
    assert run(1) != run(2)
    # Sample i of an n > 1 request is seeded with seed + i: different samples, still reproducible.
    params = SamplingParams(seed=5, n=2)
    first, second = (SamplingState(params, (), sample_index=i) for i in range(2))
    assert first.seed == 5 and second.seed == 6


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_empirical_distribution_matches_softmax(temperature: float, make_sampler) -> None:
    logits_row = torch.tensor([1.0, 0.5, 0.0, -0.5, 2.0])
    expected = torch.softmax(logits_row / temperature, -1)
    rows = states(*(SamplingParams(temperature=temperature, seed=s) for s in range(1000)))
    logits = logits_row.expand(len(rows), 5).contiguous()
    sampler = make_sampler()
    counts = torch.zeros(5)
    for _ in range(20):  # 20k draws
        counts += torch.bincount(torch.tensor(sampler.sample(logits, rows).token_ids), minlength=5)
    n = counts.sum()
    chi2 = float(((counts - n * expected) ** 2 / (n * expected)).sum())
    assert chi2 < 18.47, (chi2, counts / n, expected)  # 4 degrees of freedom, p = 0.001


def test_empirical_distribution_across_draw_blocks(make_sampler) -> None:
    """Tokens in different 256-token blocks of the two-level draw, and one tiny-probability token, keep their
    probabilities; masked tokens never come out."""
    vocab = 1000
    tokens = torch.tensor([3, 255, 256, 300, 511, 999])
    row = torch.full((vocab,), -math.inf)
    row[tokens] = torch.tensor([0.0, 1.0, -0.5, 0.5, 2.0, 1.5])
    expected = torch.softmax(row[tokens], -1)
    rows = states(*(SamplingParams(seed=s) for s in range(1000)))
    logits = row.expand(len(rows), vocab).contiguous()
    sampler = make_sampler()
    drawn = torch.cat([torch.tensor(sampler.sample(logits, rows).token_ids) for _ in range(20)])
    assert set(drawn.tolist()) <= set(tokens.tolist())
    counts = torch.stack([(drawn == t).sum() for t in tokens]).float()
    n = counts.sum()
    chi2 = float(((counts - n * expected) ** 2 / (n * expected)).sum())
    assert chi2 < 20.52, (chi2, counts / n, expected)  # 5 degrees of freedom, p = 0.001


# ---------------------------------------------------------------- logprobs


@pytest.mark.parametrize("device", DEVICES)
def test_logprobs_are_raw_and_top_logprobs_sorted(device: str) -> None:
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(9)).to(device)
    rows = states(
        SamplingParams(logprobs=5, temperature=0.3, repetition_penalty=1.5, logit_bias={0: 10.0}, seed=1),
        SamplingParams(),
        SamplingParams(logprobs=0, temperature=0.0),
    )
    out = Sampler().sample(logits, rows)
    reference = torch.log_softmax(logits.double(), -1).cpu()
    assert out.logprobs is not None and out.top_logprobs is not None
    assert out.logprobs[1] is None and out.top_logprobs[1] == [] and out.top_logprobs[2] == []
    for i in (0, 2):
        assert out.logprobs[i] == pytest.approx(float(reference[i, out.token_ids[i]]), abs=1e-5)
    top = out.top_logprobs[0]
    assert [t for t, _ in top] == reference[0].topk(5).indices.tolist()
    assert [v for _, v in top] == sorted((v for _, v in top), reverse=True)
    for token, value in top:
        assert value == pytest.approx(float(reference[0, token]), abs=1e-5)


def test_half_precision_logits_and_empty_batch() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0]], dtype=torch.bfloat16)
    out = Sampler().sample(logits, states(SamplingParams(temperature=0.0, logprobs=1)))
    assert out.token_ids == [1] and out.top_logprobs is not None and out.top_logprobs[0][0][0] == 1
    assert Sampler().sample(torch.zeros(0, 3), []).token_ids == []


def test_no_logprobs_requested() -> None:
    out = Sampler().sample(torch.zeros(2, 3), states(SamplingParams(), SamplingParams(temperature=0)))
    assert out.logprobs is None and out.top_logprobs is None and len(out.token_ids) == 2


def test_large_vocab_smoke() -> None:
    """A 262,144-token vocabulary with every feature on, greedy and sampled rows mixed: in-vocab tokens."""
    vocab = 262_144
    params = [
        SamplingParams(
            seed=i,
            top_k=40 if i % 2 else 0,
            top_p=0.9 if i % 3 else 1.0,
            min_p=0.05,
            repetition_penalty=1.1,
            presence_penalty=0.2,
            logprobs=2 if i % 4 == 0 else None,
            temperature=0.0 if i % 5 == 0 else 0.8,
        )
        for i in range(8)
    ]
    rows = [SamplingState(p, list(range(i, 2000, 7))) for i, p in enumerate(params)]
    logits = torch.randn(8, vocab, generator=torch.Generator().manual_seed(0)) * 4
    sampler = Sampler()
    for _ in range(2):
        out = sampler.sample(logits, rows)
    assert all(0 <= t < vocab for t in out.token_ids)
    assert all(len(s.output_token_ids) == 2 for s in rows)


def test_native_draw_gives_the_pytorch_draw() -> None:
    """The native draw (temperature, top-p, min-p) is the PyTorch draw computed another way: same seeds, same
    tokens; rows with top-k (the PyTorch path) or greedy beside them are untouched."""
    native = _native_sampler()
    if native is None:
        pytest.skip("no native kernels here")
    params = [
        SamplingParams(temperature=0.3 + 0.1 * (i % 8), top_p=(1.0, 0.9, 0.6)[i % 3], min_p=(0.0, 0.05)[i % 2], seed=i)
        for i in range(24)
    ]
    params[5] = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=5)
    params[9] = SamplingParams(temperature=0.0)
    gen = torch.Generator().manual_seed(3)
    ours, theirs = states(*params), states(*params)
    for _ in range(10):
        logits = torch.randn(len(params), 2000, generator=gen) * 3
        assert native.sample(logits, ours).token_ids == Sampler().sample(logits, theirs).token_ids
