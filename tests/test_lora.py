"""LoRA: what trains, where it starts, and that merging and the training shortcuts stay exact."""

import pytest
import torch

from spamtune import checkpoint
from spamtune.checkpoint import ClassifierConfig
from spamtune.data import pad_batch
from spamtune.errors import OptionError, SpamtuneUsageError
from spamtune.lora import (
    LoRALinear,
    apply_lora,
    convert_to_lora_classifier,
    has_lora,
    lora_layers,
    lora_parameter_count,
    lora_trainable,
    merge_lora,
)
from spamtune.model import GPTConfig, GPTModel, convert_to_classifier, count_parameters
from spamtune.prefix_cache import build_prefix_cache, cacheable_blocks

CFG = GPTConfig(vocab_size=50257, context_length=64, emb_dim=48, n_layers=4, n_heads=4)
SEQS = [[5, 9, 2], [7] * 11, [1], list(range(100, 130)), [42, 43, 44, 45, 46]]


def base_classifier(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return convert_to_classifier(GPTModel(CFG), trainable="head").eval()


def lora_classifier(blocks=None, rank=4, alpha=8.0, nudge=True) -> GPTModel:
    """A LoRA classifier whose B matrices are made non-zero, as after some training."""
    model = base_classifier()
    apply_lora(model, rank=rank, alpha=alpha, blocks=blocks)
    if nudge:
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for _, layer in lora_layers(model):
                layer.lora_b.copy_(torch.randn(layer.lora_b.shape, generator=gen) * 0.05)
    return model


def logits(model, seqs=SEQS, **kwargs):
    ids, lengths = pad_batch(seqs, 50256)
    return model.classify(ids, lengths, "last-real", **kwargs)


@pytest.mark.parametrize("blocks", [None, 1, 3])
@pytest.mark.parametrize("rank", [1, 8])
def test_trainable_count_is_rank_times_in_plus_out_per_layer_plus_the_head(blocks, rank):
    model = convert_to_lora_classifier(GPTModel(CFG), num_classes=2, rank=rank, blocks=blocks)
    trainable, total = count_parameters(model)
    d, n = CFG.emb_dim, CFG.n_layers if blocks is None else blocks
    per_block = rank * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))  # qkv, out_proj, fc, proj
    head = d * 2 + 2
    assert trainable == n * per_block + head
    assert lora_parameter_count(CFG, rank, blocks) == n * per_block
    assert len(lora_layers(model)) == 4 * n
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert names == {name for name, _ in model.named_parameters() if ".lora_" in name} | {"out_head.weight", "out_head.bias"}
    # Only the last n blocks are adapted.
    adapted = {int(name.split(".")[1]) for name, _ in lora_layers(model)}
    assert adapted == set(range(CFG.n_layers - n, CFG.n_layers))


def test_starts_from_the_base_models_outputs_exactly():
    with torch.no_grad():
        before = logits(base_classifier())
        model = lora_classifier(nudge=False)
        after = logits(model)
        full_before = base_classifier()(torch.tensor([SEQS[3]]))
        full_after = model(torch.tensor([SEQS[3]]))
    assert all(layer.lora_b.abs().sum() == 0 for _, layer in lora_layers(model))
    assert all(layer.lora_a.abs().sum() > 0 for _, layer in lora_layers(model))
    assert torch.equal(before, after)
    assert torch.equal(full_before, full_after)


def test_a_is_seeded_so_runs_start_the_same():
    a = [layer.lora_a.clone() for _, layer in lora_layers(lora_classifier(nudge=False))]
    b = [layer.lora_a.clone() for _, layer in lora_layers(lora_classifier(nudge=False))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_merged_model_computes_what_the_adapted_one_does_with_plain_keys():
    model = lora_classifier()
    with torch.no_grad():
        adapted = logits(model, last_query_only=False)
        assert (adapted - logits(base_classifier(), last_query_only=False)).abs().max() > 1e-3  # B != 0 matters
        merged = merge_lora(model)
        assert not has_lora(merged)
        assert set(merged.state_dict()) == set(base_classifier().state_dict())
        torch.testing.assert_close(logits(merged, last_query_only=False), adapted, atol=1e-5, rtol=1e-5)


def test_merged_model_round_trips_through_a_run_folder(tmp_path):
    model = lora_classifier()
    with torch.no_grad():
        expected = logits(model)
    cfg = ClassifierConfig(model=CFG, max_length=64, trainable="lora")
    checkpoint.save_classifier(tmp_path, merge_lora(model), cfg)
    loaded, _ = checkpoint.load_classifier(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(logits(loaded), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("blocks", [None, 1])
def test_folded_final_block_is_exact_under_lora(blocks):
    """The final block's last-query-only path reads the fused qkv weight directly: it must see
    the LoRA update, in the logits and in the gradients of A and B."""
    model = lora_classifier(blocks=blocks).train()
    target = torch.tensor([1, 0, 1, 0, 1])
    results = []
    for fast in (True, False):
        model.zero_grad()
        out = logits(model, last_query_only=fast)
        torch.nn.functional.cross_entropy(out, target).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((out.detach(), grads))
    (fast_out, fast_grads), (ref_out, ref_grads) = results
    assert (fast_out - ref_out).abs().max().item() <= 1e-5
    assert fast_grads.keys() == ref_grads.keys()
    assert any("trf_blocks.3.att.qkv.lora_b" == n for n in fast_grads)
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], atol=1e-6, rtol=1e-4)


def test_lora_on_the_last_block_lets_the_prefix_cache_serve_the_rest():
    model = lora_classifier(blocks=1)
    assert cacheable_blocks(model, lora_trainable(CFG.n_layers, 1)) == 3
    cache = build_prefix_cache(model, SEQS, 3, batch_size=2)
    prefix, lengths = cache.batch(list(range(len(SEQS))), "cpu")
    with torch.no_grad():
        cached = model.classify(None, lengths, "last-real", prefix=prefix, start_block=cache.start_block)
        torch.testing.assert_close(cached, logits(model, last_query_only=False), atol=1e-5, rtol=1e-5)
    assert cacheable_blocks(lora_classifier(), lora_trainable(CFG.n_layers)) == 0  # LoRA everywhere: every block trains
    # The blocks LoRA leaves alone are the frozen ones.
    frozen = {int(n.split(".")[1]) for n, p in model.named_parameters() if n.startswith("trf_blocks") and not p.requires_grad}
    trains = {int(n.split(".")[1]) for n, p in model.named_parameters() if n.startswith("trf_blocks") and p.requires_grad}
    assert frozen == {0, 1, 2, 3} and trains == {3}


def test_a_training_step_moves_only_lora_and_head():
    model = lora_classifier(nudge=False).train()
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = torch.nn.functional.cross_entropy(logits(model), torch.tensor([1, 0, 1, 0, 1]))
    loss.backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    moved = {n for n, v in trainable.items() if not torch.equal(after[n], v)}
    assert "out_head.weight" in moved and any(n.endswith("lora_b") for n in moved)


def test_wrapping_keeps_the_base_weight_objects_and_key_names():
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 10)
    layer = LoRALinear.wrap(linear, rank=2, alpha=4)
    assert layer.weight is linear.weight and layer.bias is linear.bias
    assert set(layer.state_dict()) == {"weight", "bias", "lora_a", "lora_b"}
    assert layer.scale == 2.0
    with torch.no_grad():
        layer.lora_b.fill_(0.1)
        x = torch.randn(3, 6)
        torch.testing.assert_close(layer(x), linear(x) + 2.0 * (x @ layer.lora_a.T) @ layer.lora_b.T)
        torch.testing.assert_close(layer.to_linear()(x), layer(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rank": 0}, "lora rank"),
        ({"alpha": 0.0}, "lora alpha"),
        ({"alpha": float("nan")}, "lora alpha"),
        ({"blocks": 0}, "lora blocks"),
        ({"blocks": 5}, "lora blocks"),
        ({"rank": 10**20}, "lora rank must be at most the model's width"),
        # Not numbers of their kind, though Python lets a bool pass for an int and a str reach math.
        ({"rank": True}, "lora rank"),
        ({"rank": 4.0}, "lora rank"),
        ({"alpha": True}, "lora alpha"),
        ({"alpha": "8"}, "lora alpha"),
        ({"blocks": True}, "lora blocks"),
        ({"blocks": 1.5}, "lora blocks"),
    ],
)
def test_bad_options_are_usage_errors(kwargs, message):
    """Named as options (the command line shows the flag, a run's hparams.json the field)."""
    with pytest.raises(OptionError, match=message) as refused:
        apply_lora(base_classifier(), **kwargs)
    assert refused.value.option == message.split(" must")[0].replace(" ", "_") and refused.value.exit_code == 2


@pytest.mark.parametrize("rank, alpha, refused", [(16, 1e30, "above 128"), (4, 513.0, "above 128"), (4, 1e-3, "below 1/1024"), (1, 1e-300, "below 1/1024")])
def test_an_alpha_that_would_drown_the_base_or_barely_train_is_a_usage_error(rank, alpha, refused):
    """--lora-alpha 1e30 trained nothing and said nothing: the gradient's square overflowed fp32 in
    AdamW, so B never moved. The scale alpha/rank is bounded instead, in words that say why."""
    with pytest.raises(OptionError, match=f"alpha/rank = .*, {refused}: AdamW") as error:
        apply_lora(base_classifier(), rank=rank, alpha=alpha)
    assert error.value.option == "lora_alpha" and error.value.exit_code == 2
    low, high = str(error.value).split("keep alpha between ")[1].split(" at this rank")[0].split(" and ")
    assert (float(low), float(high)) == (rank / 1024, rank * 128)  # exactly: a user may copy either


def test_the_bounds_of_alpha_are_allowed():
    for rank, alpha in ((16, 2048.0), (16, 16 / 1024), (48, 48 / 1024), (1, 128.0)):
        assert len(lora_layers(apply_lora(base_classifier(), rank=rank, alpha=alpha))) == 4 * CFG.n_layers


def test_lora_cannot_be_applied_twice():
    model = lora_classifier(blocks=1, nudge=False)
    with pytest.raises(SpamtuneUsageError, match="already has LoRA"):
        apply_lora(model, blocks=1)
