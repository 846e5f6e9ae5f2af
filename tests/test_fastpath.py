"""The training shortcuts are exact: same logits as the plain forward pass."""

import pytest
import torch

import spamtune.linear as linear_module
from spamtune import prefix_cache
from spamtune.data import pad_batch
from spamtune.device import Precision
from spamtune.examples import Examples
from spamtune.forward import predict_logits
from spamtune.idle_work import split_threads
from spamtune.linear import onednn_available, packing_dtype
from spamtune.model import GPTConfig, GPTModel, Trainable, convert_to_classifier
from spamtune.prefix_cache import build_prefix_cache, cacheable_blocks, shared_prefix_groups

CFG = GPTConfig(vocab_size=50257, context_length=64, emb_dim=48, n_layers=4, n_heads=4)


def cache_of(model, seqs, trainable="last-2-blocks", **kwargs):
    """The prefix cache of a model converted with the ``trainable`` preset."""
    return build_prefix_cache(model, seqs, cacheable_blocks(model, Trainable.parse(trainable, model.cfg.n_layers)), **kwargs)


def plain_logits(model, seqs, pooling):
    """The reference: full forward over the batch padded to its longest, read at the pooled position."""
    ids, lengths = pad_batch(seqs, 50256)
    full = model(ids)
    if pooling == "last":
        return full[:, -1]
    return full[torch.arange(len(seqs)), lengths - 1]


@pytest.fixture
def model_and_seqs():
    torch.manual_seed(0)
    model = convert_to_classifier(GPTModel(CFG), trainable="last-2-blocks").eval()
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 50257, (n,), generator=gen).tolist() for n in (1, 5, 17, 40, 9, 3)]
    return model, seqs


@pytest.mark.parametrize("pooling", ["last-real", "last"])
def test_last_query_only_block_matches_full_forward(model_and_seqs, pooling):
    model, seqs = model_and_seqs
    ref = plain_logits(model, seqs, pooling)
    ids, lengths = pad_batch(seqs, 50256)
    with torch.no_grad():
        fast = model.classify(ids, lengths, pooling)
    assert (fast - ref).abs().max().item() <= 1e-5


def test_last_query_only_block_without_qkv_bias():
    """The folded key/value projections do not lean on GPT-2's biases being there."""
    torch.manual_seed(0)
    cfg = GPTConfig(**{**CFG.to_dict(), "qkv_bias": False})
    model = convert_to_classifier(GPTModel(cfg), trainable="last-block").eval()
    seqs = [[5, 9, 2], [7] * 11, [1]]
    ids, lengths = pad_batch(seqs, 50256)
    with torch.no_grad():
        fast = model.classify(ids, lengths, "last-real")
    assert (fast - plain_logits(model, seqs, "last-real")).abs().max().item() <= 1e-5


def test_prefix_cache_gives_the_same_logits_and_gradients(model_and_seqs):
    model, seqs = model_and_seqs
    assert cacheable_blocks(model, Trainable.parse("last-2-blocks", CFG.n_layers)) == 2
    cache = cache_of(model, seqs, batch_size=4)
    assert cache.start_block == 2 and cache.nbytes == sum(map(len, seqs)) * 48 * 4
    batch = [3, 0, 4]
    prefix, lengths = cache.batch(batch, "cpu")
    fast = model.classify(None, lengths, "last-real", prefix=prefix, start_block=cache.start_block)
    ref = plain_logits(model, [seqs[i] for i in batch], "last-real")
    assert (fast - ref).abs().max().item() <= 1e-5
    # Gradients of the trainable parameters agree too.
    target = torch.tensor([1, 0, 1])
    grads = []
    for logits in (fast, ref):
        model.zero_grad()
        torch.nn.functional.cross_entropy(logits, target).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_no_cache_when_nothing_is_frozen_or_dropout_is_on(model_and_seqs):
    _, seqs = model_and_seqs
    assert cache_of(convert_to_classifier(GPTModel(CFG), trainable="all"), seqs, "all") is None
    assert cache_of(convert_to_classifier(GPTModel(CFG), trainable="last-4-blocks"), seqs, "last-4-blocks") is None
    dropout = GPTConfig(**{**CFG.to_dict(), "drop_rate": 0.1})
    assert cache_of(convert_to_classifier(GPTModel(dropout)), seqs, "last-block") is None


def test_cache_over_budget_falls_back(model_and_seqs):
    model, seqs = model_and_seqs
    assert cache_of(model, seqs, budget_bytes=100) is None


def test_head_only_preset_caches_every_block():
    torch.manual_seed(0)
    model = convert_to_classifier(GPTModel(CFG), trainable="head").eval()
    seqs = [[5211, 345, 423, 640], [15496, 11, 995]]
    cache = cache_of(model, seqs, "head")
    assert cache.start_block == CFG.n_layers
    for pooling in ("last-real", "mean"):
        prefix, lengths = cache.batch([0, 1], "cpu")
        fast = model.classify(None, lengths, pooling, prefix=prefix, start_block=cache.start_block)
        slow = model.classify(*pad_batch(seqs, 50256), pooling)
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)



def test_duplicate_messages_share_one_slot_and_subsets_share_storage(model_and_seqs):
    model, seqs = model_and_seqs
    with_dups = [*seqs, seqs[3], seqs[0], seqs[3]]
    cache = cache_of(model, with_dups, batch_size=4)
    assert cache.nbytes == sum(map(len, seqs)) * 48 * 4  # the repeats cost nothing
    assert cache.offsets[len(seqs)] == cache.offsets[3] and cache.offsets[-1] == cache.offsets[3]
    tail = cache.subset(len(seqs), len(with_dups))
    assert tail.states.data_ptr() == cache.states.data_ptr() and len(tail) == 3
    prefix, lengths = tail.batch([0, 1, 2], "cpu")
    with torch.no_grad():
        fast = model.classify(None, lengths, "last-real", prefix=prefix, start_block=cache.start_block)
    ref = plain_logits(model, [seqs[3], seqs[0], seqs[3]], "last-real")
    assert (fast - ref).abs().max().item() <= 1e-5


def test_a_cache_batch_is_each_examples_states_then_zeros(model_and_seqs):
    model, seqs = model_and_seqs
    cache = cache_of(model, [*seqs, seqs[1]])
    picked = [6, 3, 0, 2]  # a repeat, the longest, a one-token message, another
    prefix, lengths = cache.batch(picked, "cpu")
    assert lengths.tolist() == [5, 40, 1, 17] and prefix.shape == (4, 40, 48)
    for row, i in enumerate(picked):
        n, at = int(cache.lengths[i]), int(cache.offsets[i])
        assert torch.equal(prefix[row, :n], cache.states[at : at + n])
        assert not prefix[row, n:].any()


def frozen_states_one_by_one(model, seqs, blocks):
    """The reference: each message alone through the first ``blocks`` blocks, no cache."""
    out = []
    with torch.no_grad():
        for seq in seqs:
            x = model.embed(torch.tensor([seq]))
            for block in model.trf_blocks[:blocks]:
                x = block(x)
            out.append(x[0])
    return out


def messages_with_shared_prefixes():
    """Spam-template-like messages: three groups sharing 14, 20 and 30 leading tokens (one
    message is exactly its group's prefix, one group outnumbers a batch), and loners."""
    gen = torch.Generator().manual_seed(3)

    def tokens(n):
        return torch.randint(0, 50257, (n,), generator=gen).tolist()

    a, b, c = tokens(14), tokens(20), tokens(30)
    seqs = [a + tokens(n) for n in (3, 9, 1)] + [list(a)]
    seqs += [b + tokens(n) for n in (2, 5, 7, 11, 4, 6)]
    seqs += [c + tokens(5), c + tokens(25)]
    seqs += [tokens(n) for n in (1, 8, 16, 40)]
    seqs += [a[:5] + tokens(6)]  # shares fewer than 12 tokens: computed alone
    return seqs


def test_shared_prefix_groups_find_the_templates():
    seqs = [tuple(s) for s in messages_with_shared_prefixes()]
    groups = sorted((p, sorted(m)) for p, m in shared_prefix_groups(seqs, 12))
    assert groups == [(14, [0, 1, 2, 3]), (20, [4, 5, 6, 7, 8, 9]), (30, [10, 11])]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_shared_prefixes_give_the_same_states(model_and_seqs, precision):
    """Prefixes computed once, the rest attending to their cached keys/values: every message's
    states equal those of the message run alone (bf16: within bf16 rounding)."""
    model, _ = model_and_seqs
    seqs = messages_with_shared_prefixes()
    ref = frozen_states_one_by_one(model, seqs, 2)
    shared = cache_of(model, seqs, batch_size=4, precision=Precision(precision, "cpu"))
    alone = cache_of(model, seqs, batch_size=4, precision=Precision(precision, "cpu"), min_shared=0)
    tol = 1e-6 if precision == "fp32" else 2e-3  # the states are ~0.1 in size here
    for i, want in enumerate(ref):
        got = shared.states[shared.offsets[i] : shared.offsets[i] + len(want)]
        assert (got - want).abs().max().item() <= tol, i
        unshared = alone.states[alone.offsets[i] : alone.offsets[i] + len(want)]
        assert (got - unshared).abs().max().item() <= tol, i


@pytest.mark.parametrize("spare", [0, 10**9])
def test_prefixes_are_shared_only_when_their_keys_and_values_fit(model_and_seqs, monkeypatch, spare):
    """With a budget that holds the cache and nothing more, prefixes are not shared (no pass
    continues after cached keys/values), and the states are right either way."""
    from spamtune import prefix_cache

    model, _ = model_and_seqs
    seqs = messages_with_shared_prefixes()
    real, continued = prefix_cache._frozen_outputs, []

    def spy(*args, **kwargs):
        continued.append(args[4] is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(prefix_cache, "_frozen_outputs", spy)
    cache_bytes = sum(len(t) for t in {tuple(t) for t in seqs}) * 48 * 4
    cache = cache_of(model, seqs, batch_size=4, budget_bytes=cache_bytes + spare)
    assert any(continued) == (spare > 0)
    for i, want in enumerate(frozen_states_one_by_one(model, seqs, 2)):
        assert (cache.states[cache.offsets[i] : cache.offsets[i] + len(want)] - want).abs().max().item() <= 1e-6



def test_a_cached_split_is_evaluated_in_full_batches(model_and_seqs, monkeypatch):
    """Only the last block runs over a cached split, so its batches are not cut to save padding
    (the CPU's uncached rule); the logits are the same either way."""
    model, seqs = model_and_seqs
    seqs = seqs * 4  # 24 messages, 6 distinct
    seqs = [s + [i] for i, s in enumerate(seqs)]  # all distinct, of mixed lengths
    rows: list[int] = []
    original = Examples.batch

    def recording(self, indices, *args, **kwargs):
        rows.append(len(indices))
        return original(self, indices, *args, **kwargs)

    monkeypatch.setattr(Examples, "batch", recording)
    fp32 = Precision("fp32", "cpu")
    with torch.no_grad():
        plain = predict_logits(model, Examples(seqs), "last-real", precision=fp32, batch_size=8)
        cut = rows[:]
        rows.clear()
        cached = predict_logits(model, Examples(seqs, cache=cache_of(model, seqs)), "last-real", precision=fp32, batch_size=8)
    assert rows == [8, 8, 8]
    assert len(cut) > 3  # the uncached rule does cut these mixed lengths
    assert (cached - plain).abs().max().item() <= 1e-5


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_grad", [True, False], ids=["a block before trains", "frozen prefix"])
def test_the_folded_attentions_written_out_backward_is_its_derivative(bias, input_grad):
    """``FoldedAttention``'s hand-written backward (float64 ``gradcheck``: against finite
    differences) for the normalised input (when it needs a gradient), the LayerNorm's scale and
    shift, the fused qkv weight and its bias."""
    from spamtune.folded_attention import FoldedAttention

    gen = torch.Generator().manual_seed(3)
    x_hat = torch.randn(3, 5, 8, dtype=torch.float64, generator=gen, requires_grad=input_grad)
    gamma = (1 + 0.3 * torch.randn(8, dtype=torch.float64, generator=gen)).requires_grad_()
    beta = (0.3 * torch.randn(8, dtype=torch.float64, generator=gen)).requires_grad_()
    weight = torch.randn(24, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    qkv_bias = torch.randn(24, dtype=torch.float64, generator=gen, requires_grad=True) if bias else None
    index = torch.tensor([4, 0, 2])  # the last, the first and a middle position

    def attention(x_hat, gamma, beta, weight, qkv_bias=None):
        return FoldedAttention.apply(x_hat, gamma, beta, weight, qkv_bias, index, 2)

    inputs = (x_hat, gamma, beta, weight, qkv_bias) if bias else (x_hat, gamma, beta, weight)
    assert torch.autograd.gradcheck(attention, inputs)


def test_training_steps_use_the_written_out_backward_and_match_autograd(model_and_seqs, monkeypatch):
    """In training without autocast the last block's attention goes through ``FoldedAttention``;
    its gradients are autograd's (the same forward taken apart op by op). Compared in float64,
    where rounding cannot hide a wrong term. Under autocast the block keeps autograd's path;
    autocast casts no float64 tensor, so there it computes the same numbers that way."""
    from spamtune import folded_attention

    model, seqs = model_and_seqs
    model = model.double().train()
    ids, lengths = pad_batch(seqs, 50256)
    x = model.hidden_states(ids, start_block=0).detach()  # stand-in input, any [b, t, d] will do
    block, target = model.trf_blocks[-1], torch.tensor([1, 0, 1, 1, 0, 0])

    def gradients():
        model.zero_grad()
        logits = model.out_head(model.final_norm(block.forward_at(x, lengths - 1)))
        torch.nn.functional.cross_entropy(logits, target).backward()
        return [p.grad.clone() for p in block.parameters() if p.requires_grad]

    calls = []
    real = folded_attention.FoldedAttention.apply
    monkeypatch.setattr(folded_attention.FoldedAttention, "apply", lambda *a: calls.append(1) or real(*a))
    written_out = gradients()
    assert calls
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = gradients()
    assert not calls
    assert len(written_out) == len(reference) > 4
    for a, b in zip(written_out, reference):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)


def test_a_bf16_training_step_of_the_final_block_alone_is_the_fp32_step_on_a_cpu(model_and_seqs):
    """With every block before it cached, a CPU training step runs only the final block, at
    one query per sequence; there bf16 autocast is set aside, so the loss and gradients are
    fp32's to the bit. Without gradients (evaluation) the run's bf16 applies as before."""
    model, seqs = model_and_seqs
    model = convert_to_classifier(model, trainable="last-block").train()
    cache = cache_of(model, seqs, trainable="last-block")
    assert cache.start_block == CFG.n_layers - 1
    prefix, lengths = cache.batch(range(len(seqs)), "cpu")
    target = torch.tensor([1, 0, 1, 1, 0, 0])

    def step(precision):
        model.zero_grad()
        with Precision(precision, "cpu").forward_context():
            logits = model.classify(None, lengths, "last-real", prefix=prefix, start_block=cache.start_block)
            loss = torch.nn.functional.cross_entropy(logits.float(), target)
        loss.backward()
        return logits, [p.grad.clone() for p in model.parameters() if p.requires_grad]

    (fp32_logits, fp32_grads), (bf16_logits, bf16_grads) = step("fp32"), step("bf16")
    assert bf16_logits.dtype == torch.float32 and torch.equal(bf16_logits, fp32_logits)
    assert len(bf16_grads) > 4 and all(torch.equal(a, b) for a, b in zip(bf16_grads, fp32_grads))
    with torch.no_grad(), Precision("bf16", "cpu").forward_context():
        evaluated = model.classify(None, lengths, "last-real", prefix=prefix, start_block=cache.start_block)
    assert evaluated.dtype == torch.bfloat16


needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")


@needs_onednn
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_cache_build_reads_packed_weights_and_gets_the_same_states(model_and_seqs, monkeypatch, precision):
    """The frozen blocks' products read their weights packed for oneDNN during the build (and
    the plain ones without packing); the states are the same (to the bit on the 2-core EPYC,
    where both layouts get the same kernels; another CPU may block them differently, so float
    rounding is allowed); nothing stays packed."""
    if packing_dtype("cpu", Precision(precision, "cpu").dtype) is None:
        pytest.skip(f"no oneDNN {precision} products on this CPU")
    model, seqs = model_and_seqs
    packed_reads = []
    real = linear_module._onednn
    monkeypatch.setattr(linear_module, "_onednn", lambda x, w, *rest: packed_reads.append(w.is_mkldnn) or real(x, w, *rest))
    packed = cache_of(model, messages_with_shared_prefixes(), precision=Precision(precision, "cpu"))
    assert len(packed_reads) > 8 and all(packed_reads)  # four products per frozen block and batch
    packed_reads.clear()
    monkeypatch.setattr(prefix_cache, "packing_dtype", lambda *args: None)
    plain = cache_of(model, messages_with_shared_prefixes(), precision=Precision(precision, "cpu"))
    assert packed_reads and not any(packed_reads)
    tolerance = 1e-5 if precision == "fp32" else 2e-2
    torch.testing.assert_close(packed.states, plain.states, rtol=tolerance, atol=tolerance)
    assert not any(linear_module._PACKED in m.__dict__ for m in model.modules())


@needs_onednn
def test_weights_are_packed_only_when_the_copies_fit(model_and_seqs):
    model, _ = model_and_seqs
    blocks, fp32 = model.trf_blocks[:2], Precision("fp32", "cpu")
    size = sum(m.weight.numel() * 4 for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear))
    for spare, packed in ((size, True), (size - 1, False)):
        with prefix_cache.packed_frozen_weights(blocks, fp32, spare):
            assert all((linear_module._PACKED in m.__dict__) == packed for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear))
            linears = [m for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear)]
            with torch.no_grad():
                assert all((linear_module.packed_weight_of(m) is not None) == packed for m in linears)
            # a product that needs gradients never reads a packed copy
            assert all(linear_module.packed_weight_of(m) is None for m in linears)


def test_a_training_step_and_an_evaluation_give_the_same_numbers_on_the_steps_share_of_the_threads():
    """A first run trains on the steps' share of the threads (``idle_work.split_threads``: one
    of two, half of more) while the test split's states are computed behind its steps
    (``train.threads_for_steps``); a second run on the kept cache trains on all of them. The two agree to the bit only if a step does not depend on the thread count. At
    gpt2-small's width PyTorch splits its kernels over threads, and for an epoch's short last
    batch (5-11 rows) MKL's products and PyTorch's LayerNorm backward rounded differently on
    one thread than on two."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, context_length=128, emb_dim=768, n_layers=1, n_heads=12)
    model = convert_to_classifier(GPTModel(cfg), trainable="last-block")
    gen = torch.Generator().manual_seed(1)
    threads = torch.get_num_threads()
    fewer, full = (split_threads(threads)[0], threads) if threads > 1 else (1, 2)

    def step_and_evaluation(x, lengths, labels, n):
        torch.set_num_threads(n)
        model.train().zero_grad()
        torch.nn.functional.cross_entropy(model.classify(None, lengths, prefix=x), labels).backward()
        with torch.inference_mode():
            logits = model.eval().classify(None, lengths, prefix=x)
        return [logits] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    try:
        for rows, width in ((5, 20), (6, 3), (8, 60), (11, 120), (64, 33)):
            x = torch.randn(rows, width, cfg.emb_dim, generator=gen)
            lengths = torch.randint(1, width + 1, (rows,), generator=gen)
            labels = torch.randint(0, 2, (rows,), generator=gen)
            one, other = (step_and_evaluation(x, lengths, labels, n) for n in (fewer, full))
            assert len(one) == len(other) == 1 + sum(p.requires_grad for p in model.parameters())
            assert all(torch.equal(a, b) for a, b in zip(one, other)), (rows, width)
    finally:
        torch.set_num_threads(threads)


def test_the_row_layer_norms_backward_is_its_derivative():
    from spamtune.row_norm import _RowLayerNorm

    gen = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True) for shape in ((5, 16), (16,), (16,)))
    assert torch.autograd.gradcheck(lambda *t: _RowLayerNorm.apply(*t, 1e-5), (x, weight, bias))
    norm = torch.nn.LayerNorm(16).double()
    norm.load_state_dict({"weight": weight.detach(), "bias": bias.detach()})
    torch.testing.assert_close(_RowLayerNorm.apply(x, weight, bias, 1e-5), norm(x), rtol=0, atol=1e-15)
