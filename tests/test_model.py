import json
import re

import pytest
import torch

from spamtune import GPTConfig, GPTModel, convert_to_classifier, get_tokenizer
from spamtune.errors import SpamtuneError
from spamtune.model import MODEL_SIZES, count_parameters
from spamtune.model_names import canonical_model_name

SMALL = GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_layers=3, n_heads=4)


def test_named_sizes_match_gpt2():
    shapes = {n: (c.emb_dim, c.n_layers, c.n_heads) for n, c in MODEL_SIZES.items()}
    assert shapes["gpt2-small"] == (768, 12, 12)
    assert shapes["gpt2-medium"] == (1024, 24, 16)
    assert shapes["gpt2-large"] == (1280, 36, 20)
    assert shapes["gpt2-xl"] == (1600, 48, 25)
    for name in ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        cfg = MODEL_SIZES[name]
        assert (cfg.context_length, cfg.vocab_size, cfg.qkv_bias, cfg.ln_eps, cfg.drop_rate) == (1024, 50257, True, 1e-5, 0.0)
    assert GPTConfig.from_name("124M") == GPTConfig.from_name("gpt2") == MODEL_SIZES["gpt2-small"]
    assert canonical_model_name("gpt2-small (124M)") == "gpt2-small"
    assert GPTConfig.from_name("1558M").name == "gpt2-xl"


def test_gpt2_small_has_124m_parameters():
    with torch.device("meta"):
        model = GPTModel(GPTConfig.from_name("gpt2-small"))
    assert count_parameters(model)[1] == 124_439_808  # tied head counted once


def test_unknown_size_lists_valid_ones():
    with pytest.raises(SpamtuneError, match="gpt2-medium"):
        GPTConfig.from_name("gpt5")


def test_config_from_json(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"emb_dim": 48, "n_layers": 2, "n_heads": 3, "context_length": 32}))
    cfg = GPTConfig.resolve(str(path))
    assert (cfg.emb_dim, cfg.n_layers, cfg.n_heads, cfg.vocab_size) == (48, 2, 3, 50257)
    path.write_text(json.dumps({"emb_dim": 48, "n_heads": 5}))
    with pytest.raises(SpamtuneError, match="divisible"):
        GPTConfig.resolve(str(path))
    path.write_text(json.dumps({"emb_dims": 48}))
    with pytest.raises(SpamtuneError, match="unknown field"):
        GPTConfig.resolve(str(path))


def test_forward_shape_and_tied_head():
    torch.manual_seed(0)
    model = GPTModel(SMALL)
    logits = model(torch.randint(0, 50257, (2, 7)))
    assert logits.shape == (2, 7, 50257)
    assert model.out_head.weight is model.tok_emb.weight


def test_causal_future_tokens_do_not_change_the_past():
    torch.manual_seed(0)
    model = GPTModel(SMALL).eval()
    ids = torch.randint(0, 50257, (1, 10))
    longer = torch.cat([ids, torch.randint(0, 50257, (1, 5))], dim=1)
    torch.testing.assert_close(model(ids), model(longer)[:, :10], atol=1e-5, rtol=1e-5)


def test_too_long_input_is_refused():
    model = GPTModel(SMALL)
    with pytest.raises(SpamtuneError, match="context length 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_book_listing_6_7_example():
    """"Do you have time" -> [[5211, 345, 423, 640]] -> classifier output [1, 4, 2]."""
    torch.manual_seed(123)
    model = convert_to_classifier(GPTModel(SMALL), num_classes=2, trainable="last-block", seed=123)
    ids = torch.tensor(get_tokenizer().encode("Do you have time")).unsqueeze(0)
    assert ids.tolist() == [[5211, 345, 423, 640]]
    with torch.no_grad():
        out = model(ids)
    assert out.shape == (1, 4, 2)
    # The head is seeded: converting again gives the same head.
    again = convert_to_classifier(GPTModel(SMALL), num_classes=2, seed=123)
    torch.testing.assert_close(model.out_head.weight, again.out_head.weight)


@pytest.mark.parametrize(
    "preset, trainable_blocks",
    [("head", []), ("last-block", [2]), ("last-2-blocks", [1, 2]), ("all", [0, 1, 2])],
)
def test_freeze_presets(preset, trainable_blocks):
    model = convert_to_classifier(GPTModel(SMALL), trainable=preset)
    for i, block in enumerate(model.trf_blocks):
        assert all(p.requires_grad == (i in trainable_blocks) for p in block.parameters()), (preset, i)
    assert all(p.requires_grad for p in model.out_head.parameters())
    assert all(p.requires_grad == (preset != "head") for p in model.final_norm.parameters())
    assert model.tok_emb.weight.requires_grad == (preset == "all")
    trainable, total = count_parameters(model)
    head = 32 * 2 + 2
    block = sum(p.numel() for p in model.trf_blocks[0].parameters())
    norm = 2 * 32
    expected = {"head": head, "last-block": head + block + norm, "last-2-blocks": head + 2 * block + norm, "all": total}
    assert trainable == expected[preset]


@pytest.mark.parametrize("preset", ["last-4-blocks", "first-block", "last--blocks"])
def test_bad_presets(preset):
    with pytest.raises(SpamtuneError):
        convert_to_classifier(GPTModel(SMALL), trainable=preset)


@pytest.mark.parametrize("pooling", ["last-real", "mean"])
def test_padding_never_changes_a_prediction(pooling):
    torch.manual_seed(0)
    model = convert_to_classifier(GPTModel(SMALL)).eval()
    short = [5211, 345, 423, 640]
    long = list(range(1000, 1030))
    alone = model.classify(torch.tensor([short]), torch.tensor([4]), pooling)
    ids = torch.full((2, 30), 50256)
    ids[0, :4] = torch.tensor(short)
    ids[1] = torch.tensor(long)
    batched = model.classify(ids, torch.tensor([4, 30]), pooling)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)


def test_classify_matches_full_forward_at_the_pooled_position():
    torch.manual_seed(0)
    model = convert_to_classifier(GPTModel(SMALL)).eval()
    ids = torch.randint(0, 50257, (3, 9))
    lengths = torch.tensor([9, 5, 2])
    full = model(ids)
    torch.testing.assert_close(model.classify(ids, lengths, "last-real"), full[torch.arange(3), lengths - 1])
    torch.testing.assert_close(model.classify(ids, lengths, "last"), full[:, -1])
    mean0 = full[1, :5].mean(0)
    torch.testing.assert_close(model.classify(ids, lengths, "mean")[1], mean0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("n_layers", True, "n_layers must be a positive integer, got true"),
        ("n_heads", None, "n_heads must be a positive integer, got null"),
        ("context_length", 64.0, "context_length must be a positive integer, got 64.0"),
        ("drop_rate", float("nan"), "drop_rate must be a number in [0, 1), got NaN"),
        ("ln_eps", 0, "ln_eps must be a number in (0, 1), got 0"),
        ("qkv_bias", "yes", 'qkv_bias must be true or false, got "yes"'),
    ],
)
def test_config_fields_are_type_checked(field, value, message):
    """A wrong type is named with its field, in JSON spelling, not left to fail inside PyTorch."""
    with pytest.raises(SpamtuneError, match=re.escape(f"model config: {message}")):
        GPTConfig.from_dict({field: value})
