"""Parity with Hugging Face's GPT-2, the independent reference implementation."""

import pytest
import torch
from safetensors.torch import save_file

from conftest import hf_gpt2_state_dict, write_hf_gpt2
from spamtune import GPTConfig, GPTModel, load_pretrained_weights
from spamtune.errors import SpamtuneError
from spamtune.weights import infer_config

transformers = pytest.importorskip("transformers")

TINY = GPTConfig(vocab_size=50257, context_length=128, emb_dim=64, n_layers=2, n_heads=4)


def hf_reference(cfg: GPTConfig, seed: int = 0):
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.emb_dim,
        n_layer=cfg.n_layers, n_head=cfg.n_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a mis-mapped one shows up
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def max_logit_diff(cfg: GPTConfig, tmp_path, seed: int = 0) -> float:
    ref = hf_reference(cfg, seed)
    ref.save_pretrained(tmp_path / "hf")
    ours = load_pretrained_weights(GPTModel(cfg), tmp_path / "hf" / "model.safetensors").eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return (ours(ids) - ref(ids).logits).abs().max().item()


def test_logits_match_transformers(tmp_path):
    assert max_logit_diff(TINY, tmp_path) <= 1e-4


def test_logits_match_transformers_three_layers_odd_heads(tmp_path):
    cfg = GPTConfig(vocab_size=50257, context_length=64, emb_dim=48, n_layers=3, n_heads=3)
    assert max_logit_diff(cfg, tmp_path, seed=1) <= 1e-4


def test_meta_built_model_takes_the_files_tensors(tmp_path):
    """Built on the meta device (what finetune does), the model gets the same weights as one
    initialised at random and overwritten, keeps its weight tying, and holds no meta tensor."""
    path = write_hf_gpt2(tmp_path / "a.safetensors", buffers=True)
    with torch.device("meta"):
        lazy = GPTModel(TINY)
    lazy = load_pretrained_weights(lazy, path)
    eager = load_pretrained_weights(GPTModel(TINY), path)
    assert not any(p.is_meta for p in lazy.parameters())
    assert lazy.out_head.weight is lazy.tok_emb.weight
    assert all(p.is_contiguous() for p in lazy.parameters())
    for (name, a), (_, b) in zip(lazy.state_dict().items(), eager.state_dict().items()):
        assert torch.equal(a, b), name
    ids = torch.randint(0, TINY.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(lazy.eval()(ids), eager.eval()(ids))


def test_loads_keys_without_prefix_and_skips_buffers(tmp_path):
    """openai-community/gpt2's layout: no 'transformer.' prefix, attn.bias buffers present."""
    sd = hf_gpt2_state_dict(buffers=True)
    path = write_hf_gpt2(tmp_path / "a.safetensors", buffers=True)
    model = load_pretrained_weights(GPTModel(TINY), path)
    torch.testing.assert_close(model.tok_emb.weight, sd["wte.weight"])
    torch.testing.assert_close(model.trf_blocks[1].att.qkv.weight, sd["h.1.attn.c_attn.weight"].t())
    torch.testing.assert_close(model.trf_blocks[0].ff.proj.weight, sd["h.0.mlp.c_proj.weight"].t())
    prefixed = write_hf_gpt2(tmp_path / "b.safetensors", prefix="transformer.")
    model2 = load_pretrained_weights(GPTModel(TINY), prefixed)
    torch.testing.assert_close(model2.final_norm.bias, sd["ln_f.bias"])


def test_wrong_size_names_both_shapes(tmp_path):
    path = write_hf_gpt2(tmp_path / "m.safetensors", emb_dim=64, n_layers=2)
    with pytest.raises(SpamtuneError, match=r"holds a 64-dim, 2-layer model .* but .*32-dim, 2-layer"):
        load_pretrained_weights(GPTModel(GPTConfig(context_length=128, emb_dim=32, n_layers=2, n_heads=4)), path)


def test_wrong_named_size_message(tmp_path):
    cfg = GPTConfig.from_name("gpt2-medium")
    shapes = {"wte.weight": (50257, 1024), "wpe.weight": (1024, 1024), **{f"h.{i}.ln_1.weight": (1024,) for i in range(24)}}
    assert infer_config(shapes) == cfg
    # The message a user sees for a medium file loaded as small:
    from spamtune import weights

    with pytest.raises(SpamtuneError, match=r"1024-dim, 24-layer model \(gpt2-medium\) .* but gpt2-small was requested"):
        orig = weights.read_hf_shapes
        weights.read_hf_shapes = lambda p: shapes
        try:
            weights.check_hf_file("medium.safetensors", GPTConfig.from_name("gpt2-small"))
        finally:
            weights.read_hf_shapes = orig


def test_missing_and_extra_keys(tmp_path):
    sd = hf_gpt2_state_dict()
    del sd["h.1.mlp.c_fc.bias"]
    save_file(sd, str(tmp_path / "missing.safetensors"))
    with pytest.raises(SpamtuneError, match="lacks 1 GPT-2 weight.*h.1.mlp.c_fc.bias"):
        load_pretrained_weights(GPTModel(TINY), tmp_path / "missing.safetensors")
    sd = hf_gpt2_state_dict()
    sd["h.0.attn.extra"] = torch.zeros(3)
    save_file(sd, str(tmp_path / "extra.safetensors"))
    with pytest.raises(SpamtuneError, match="unexpected key.*h.0.attn.extra"):
        load_pretrained_weights(GPTModel(TINY), tmp_path / "extra.safetensors")


def test_not_a_safetensors_file(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x80\x04pickle? no thanks")
    with pytest.raises(SpamtuneError, match="not a readable safetensors file"):
        load_pretrained_weights(GPTModel(TINY), bad)
    with pytest.raises(SpamtuneError, match="not found"):
        load_pretrained_weights(GPTModel(TINY), tmp_path / "nope.safetensors")
