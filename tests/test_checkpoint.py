"""Loading a run folder: a config.json or model.safetensors that cannot give honest answers is
refused in one line, quickly, before anything big is built; nothing prints a NaN probability."""

from __future__ import annotations

import json
import math
import shutil
import time

import pytest
import torch
from helpers import write_rigged_run, write_tiny_data
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from spamtune.checkpoint import CONFIG_FILE, WEIGHTS_FILE, ClassifierConfig, build_classifier, classifier_shapes, load_classifier
from spamtune.cli import app
from spamtune.errors import SpamtuneError
from spamtune.infer import NonFiniteProbability, SpamClassifier
from spamtune.model import GPTConfig


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    return write_rigged_run(tmp_path_factory.mktemp("checkpoint") / "run")


@pytest.fixture
def run(good_run, tmp_path):
    """A fresh copy of the rigged run, for a test to break."""
    return shutil.copytree(good_run, tmp_path / "run")


def edit_config(run, **changes):
    path = run / CONFIG_FILE
    data = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = data
        for parent in parents:
            target = target[parent]
        target[last] = value
    path.write_text(json.dumps(data))


def edit_weights(run, change):
    path = run / WEIGHTS_FILE
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def predict(run, *messages):
    return CliRunner().invoke(app, ["predict", "--run", str(run), "--format", "tsv", *messages])


def assert_one_error_line(result, *fragments, exit_code=1):
    assert result.exit_code == exit_code, result.stdout
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert not lines[0].startswith("Error: unexpected")  # how the CLI words an exception it did not expect
    for fragment in fragments:
        assert fragment in lines[0]


# ---------------------------------------------------------------- config against the weights


def test_shapes_come_from_the_config_alone():
    """The table the header is checked against is the model's own state dict, without building it."""
    for model in (GPTConfig(context_length=64, emb_dim=32, n_layers=3, n_heads=4), GPTConfig(emb_dim=48, n_heads=3, qkv_bias=False)):
        cfg = ClassifierConfig(model=model, labels={"a": 0, "b": 1, "c": 2})
        with torch.device("meta"):
            built = build_classifier(cfg)
        assert classifier_shapes(cfg) == {key: tuple(t.shape) for key, t in built.state_dict().items()}


def test_ten_million_layers_are_refused_in_well_under_a_second(run):
    edit_config(run, model__n_layers=10_000_000)
    start = time.perf_counter()
    with pytest.raises(SpamtuneError, match=r"config.json does not describe .*model.safetensors .*n_layers 10,000,000 vs 2"):
        load_classifier(run)
    assert time.perf_counter() - start < 1.0
    start = time.perf_counter()
    assert_one_error_line(predict(run, "x"), "n_layers 10,000,000 vs 2")
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"model__emb_dim": 64, "model__n_heads": 4}, "emb_dim 64 vs 32"),
        ({"model__context_length": 32, "max_length": 32}, "context_length 32 vs 64"),
        ({"model__vocab_size": 100, "pad_token_id": 0}, "vocab_size 100 vs 50,257"),
        ({"labels": {"ham": 0, "spam": 1, "other": 2}}, "classes 3 vs 2"),
        ({"model__qkv_bias": False}, "unexpected weight 'trf_blocks.0.att.qkv.bias'"),
    ],
)
def test_config_that_does_not_describe_the_weights(run, changes, fragment):
    edit_config(run, **changes)
    assert_one_error_line(predict(run, "x"), fragment)


def test_weights_of_another_dtype_are_refused(run):
    edit_weights(run, lambda t: t.update({k: (v * 100).to(torch.int8) for k, v in t.items()}))
    assert_one_error_line(predict(run, "x"), "is stored as I8", "float32")


def test_one_half_precision_tensor_is_refused_too(run):
    edit_weights(run, lambda t: t.update({"final_norm.weight": t["final_norm.weight"].half()}))
    assert_one_error_line(predict(run, "x"), "'final_norm.weight' is stored as F16")


def test_a_missing_tensor_is_named(run):
    edit_weights(run, lambda t: t.pop("trf_blocks.1.ff.fc.bias"))
    assert_one_error_line(predict(run, "x"), "lacks weight 'trf_blocks.1.ff.fc.bias'")


# ---------------------------------------------------------------- non-finite weights and answers


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused_on_load(run, value):
    def poison(tensors):
        tensors["trf_blocks.1.att.qkv.weight"][3, 5] = value

    edit_weights(run, poison)
    message = "model.safetensors: weight 'trf_blocks.1.att.qkv.weight' holds 1 NaN or infinite value(s)"
    with pytest.raises(SpamtuneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SpamClassifier.load(run, device="cpu")
    result = CliRunner().invoke(app, ["predict", "--run", str(run), "--fail-on-spam", "hello"])
    assert_one_error_line(result, message, exit_code=2)  # --fail-on-spam keeps 1 for "spam found"


def test_evaluate_refuses_non_finite_weights_instead_of_scoring_them(run, tmp_path):
    """It reported 54% accuracy with loss NaN."""
    edit_weights(run, lambda t: t["out_head.weight"].fill_(math.nan))
    root = write_tiny_data(tmp_path / "data")
    result = CliRunner().invoke(app, ["evaluate", str(run), "--data-dir", str(root), "--format", "json"])
    assert_one_error_line(result, "weight 'out_head.weight' holds 64 NaN or infinite value(s)")


def test_huge_finite_weights_load_but_never_print_a_nan(run):
    """Finite weights whose sum overflows are not refused (they are not broken), but the NaN
    they produce at run time is an error, not a line of output."""

    def overflow(tensors):
        tensors["tok_emb.weight"].fill_(3e38)

    edit_weights(run, overflow)
    clf = SpamClassifier.load(run, device="cpu", precision="fp32")  # loads: every value is finite
    with pytest.raises(NonFiniteProbability, match=r"non-finite probability \(nan\) for text 1"):
        clf.predict(["hello", "there"])
    with pytest.raises(NonFiniteProbability, match=r"non-finite probability \(nan\) for text 1"):
        clf.explain(["hello", "there"], long="chunks")  # its p_spam was NaN, and every score
    result = predict(run, "first", "second")
    assert_one_error_line(result, "non-finite probability", "message 1")


# ---------------------------------------------------------------- malformed config.json


BAD_CONFIGS = {
    "n_layers null": ({"model__n_layers": None}, "n_layers must be a positive integer, got null"),
    "n_layers list": ({"model__n_layers": [2]}, "n_layers must be a positive integer, got [2]"),
    "n_layers text": ({"model__n_layers": "2"}, 'n_layers must be a positive integer, got "2"'),
    "n_layers float": ({"model__n_layers": 2.5}, "n_layers must be a positive integer, got 2.5"),
    "n_layers bool": ({"model__n_layers": True}, "n_layers must be a positive integer, got true"),
    "emb_dim negative": ({"model__emb_dim": -32}, "emb_dim must be a positive integer, got -32"),
    "drop_rate null": ({"model__drop_rate": None}, "drop_rate must be a number in [0, 1), got null"),
    "ln_eps text": ({"model__ln_eps": "small"}, "ln_eps must be a number in (0, 1)"),
    "qkv_bias number": ({"model__qkv_bias": 1}, "qkv_bias must be true or false, got 1"),
    "model null": ({"model": None}, "model config must be a JSON object, got null"),
    "model unknown field": ({"model__layers": 2}, "model config: unknown field(s) layers"),
    "labels list": ({"labels": ["ham", "spam"]}, 'labels must map at least two label names to class indices, got ["ham", "spam"]'),
    "bad label index": ({"labels": {"ham": 0, "spam": 5}}, "labels must number the classes 0 to 1, each once; got indices [0, 5]"),
    "label index text": ({"labels": {"ham": 0, "spam": "1"}}, 'labels: "spam" -> "1" is not a label name -> class index'),
    "label with an escape sequence": (
        {"labels": {"ham": 0, "spam\x1b]0;pwned\x07": 1}},
        'labels: "spam\\u001b]0;pwned\\u0007" is not a label name: a label is printable text on one line',
    ),
    "max_length negative": ({"max_length": -5}, "max_length must be a positive integer, got -5"),
    "max_length null": ({"max_length": None}, "max_length must be a positive integer, got null"),
    "pooling": ({"pooling": "first"}, 'pooling must be one of last-real, last, mean, got "first"'),
    "pad token": ({"pad_token_id": 60000}, "pad_token_id must be a token id below the vocabulary size 50257, got 60000"),
    "tokenizer null": ({"tokenizer": None}, "tokenizer must be a non-empty string, got null"),
    "base_model list": ({"base_model": ["tiny"]}, 'base_model must be a model name or null, got ["tiny"]'),
    "unknown field": ({"colour": "blue"}, "unknown field(s) colour"),
    "format": ({"format": "other/2"}, "not a spamtune classifier config"),
}


@pytest.mark.parametrize("changes, message", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_malformed_config_is_one_line_naming_file_and_field(run, changes, message):
    edit_config(run, **changes)
    assert_one_error_line(predict(run, "x"), f"{run / CONFIG_FILE}: ", message)


def test_config_that_is_not_an_object(run):
    (run / CONFIG_FILE).write_text("[1, 2]")
    assert_one_error_line(predict(run, "x"), f"{run / CONFIG_FILE}: ", "a classifier config is a JSON object, not [1, 2]")
    (run / CONFIG_FILE).write_text(json.dumps({"format": "spamtune-classifier/1"}))
    assert_one_error_line(predict(run, "x"), "the field 'model' (the GPT shape) is missing")


def test_the_intact_run_still_loads(good_run):
    assert predict(good_run, "hello", "win now!").stdout.split("\n")[1].startswith("spam\t")
