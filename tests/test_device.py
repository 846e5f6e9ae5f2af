"""Device and precision choice: what `auto` means, and clear errors for impossible requests."""

import pytest
import torch

from spamtune import device as devmod
from spamtune.errors import SpamtuneError
from spamtune.examples import Examples
from spamtune.forward import predict_logits
from spamtune.model import GPTConfig, GPTModel, convert_to_classifier

CPU = torch.device("cpu")


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_follows_native_bf16_support(monkeypatch, native, expected):
    monkeypatch.setattr(devmod, "cpu_has_native_bf16", lambda: native)
    assert devmod.resolve_precision("auto", CPU) == expected
    assert devmod.resolve_precision("fp32", CPU) == "fp32"
    assert devmod.resolve_precision("bf16", CPU) == "bf16"  # asked for explicitly: allowed, if slow


def test_auto_precision_on_mps_is_fp32():
    assert devmod.resolve_precision("auto", torch.device("mps")) == "fp32"


@pytest.mark.parametrize(
    ("requested", "device", "message"),
    [("fp16", "cpu", "needs a CUDA device"), ("bf16", "mps", "not mps"), ("fp8", "cpu", "unknown precision")],
)
def test_impossible_precisions_are_clear_errors(requested, device, message):
    with pytest.raises(SpamtuneError, match=message):
        devmod.resolve_precision(requested, torch.device(device))


def test_unknown_device_lists_the_choices():
    with pytest.raises(SpamtuneError, match="auto, cpu, cuda, mps"):
        devmod.resolve_device("tpu")


def test_repeated_messages_are_computed_once_and_answered_every_time(monkeypatch):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, context_length=32, emb_dim=32, n_layers=2, n_heads=4)
    model = convert_to_classifier(GPTModel(cfg), 2, "all").eval()
    seqs = [[1, 2, 3], [7, 8], [1, 2, 3], [9], [7, 8], [1, 2, 3]]
    rows = []
    original = model.classify
    monkeypatch.setattr(model, "classify", lambda ids, *a, **k: rows.append(len(ids)) or original(ids, *a, **k))
    logits = predict_logits(model, Examples(seqs), "last-real", precision=devmod.Precision("fp32", CPU), batch_size=2)
    assert sum(rows) == 3  # three distinct messages
    alone = torch.cat([original(torch.tensor([s]), None, "last-real") for s in seqs])
    torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_precision_on_cuda_prefers_bf16_then_fp16(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert devmod.resolve_precision("auto", torch.device("cuda")) == expected


def test_forward_context_autocasts_and_leaves_cudnn_attention_out_on_cuda():
    cudnn_before = torch.backends.cuda.cudnn_sdp_enabled()
    with devmod.Precision("bf16", "cpu").forward_context():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.backends.cuda.cudnn_sdp_enabled() == cudnn_before  # no CUDA flags touched on a CPU
    with devmod.Precision("fp32", "cpu").forward_context():
        assert not torch.is_autocast_enabled("cpu")
    with devmod.Precision("fp32", "cuda").forward_context():  # sets the flags SDPA reads, GPU or not
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == cudnn_before
