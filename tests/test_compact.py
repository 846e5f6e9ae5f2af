"""Compact runs: only the changed tensors plus a base reference; bases stored once; export."""

import json
import os
import threading
import time

import pytest
import torch
from conftest import write_hf_gpt2
from typer.testing import CliRunner

from spamtune import bases, checkpoint, paths, verified
from spamtune.base_model import draw_base
from spamtune.bases import BaseRef, base_file, base_weights_sha256, load_base, missing_base_message, store_base
from spamtune.checkpoint import ClassifierConfig
from spamtune.cli import app
from spamtune.compact import (
    DELTA_FILE,
    holds_classifier,
    is_compact_run,
    load_compact_run,
    load_run,
    save_compact_run,
)
from spamtune.data import pad_batch
from spamtune.errors import SpamtuneError
from spamtune.export import export_run, read_exported
from spamtune.lora import convert_to_lora_classifier, lora_layers
from spamtune.model import RANDOM_INIT_VERSION, GPTConfig, GPTModel, convert_to_classifier
from spamtune.weights import load_pretrained_weights

CFG = GPTConfig(vocab_size=50257, context_length=64, emb_dim=48, n_layers=3, n_heads=4)
SEEDED = {"kind": "random", "model": CFG.to_dict(), "seed": 5, "init": RANDOM_INIT_VERSION}
SEQS = [[5, 9, 2], [7] * 11, [1], list(range(100, 130))]


def logits(model):
    ids, lengths = pad_batch(SEQS, 50256)
    with torch.no_grad():
        return model.classify(ids, lengths, "last-real")


def random_base() -> GPTModel:
    torch.manual_seed(5)  # as SEEDED says, so the base can be rebuilt from its origin
    return GPTModel(CFG)


def trained(model: GPTModel) -> GPTModel:
    """Stand-in for training: move every trainable tensor."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def run_dir(root):
    path = paths.runs_dir(root) / "r1"
    path.mkdir(parents=True)
    return path


def config(trainable="last-block"):
    return ClassifierConfig(model=CFG, max_length=64, trainable=trainable, base_model=None, weights="random")


def last_block_run(root):
    """A compact run of a trained last-block classifier on the seeded random base."""
    model = random_base()
    ref = store_base(root, model, SEEDED)
    model = trained(convert_to_classifier(model, trainable="last-block"))
    run = run_dir(root)
    save_compact_run(run, model, config(), ref, root)
    return run, model, ref


def test_last_block_run_stores_only_what_changed_and_loads_identically(tmp_path):
    run, model, _ = last_block_run(tmp_path)
    assert is_compact_run(run) and holds_classifier(run) and not holds_classifier(run.parent)
    delta = checkpoint_keys(run / DELTA_FILE)
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    assert delta == expected  # the last block, the final LayerNorm and the head; nothing frozen
    loaded, cfg = load_compact_run(run)
    model_state = model.state_dict()
    assert set(loaded.state_dict()) == set(model_state)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, model_state[name]), name
    assert cfg.trainable == "last-block"
    # Far smaller than the full model: the last of three blocks, one LayerNorm and the head.
    full = sum(t.numel() for t in loaded.state_dict().values())
    assert sum(t.numel() for t in load_delta(run).values()) < full / 10


def checkpoint_keys(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def load_delta(run):
    from safetensors.torch import load_file

    return load_file(str(run / DELTA_FILE))


def test_unchanged_trainable_tensors_are_not_stored(tmp_path):
    model = random_base()
    ref = store_base(tmp_path, model, SEEDED)
    model = convert_to_classifier(model, trainable="last-block")
    with torch.no_grad():
        model.trf_blocks[2].ff.fc.weight.mul_(1.5)  # one trained tensor changed, the rest did not
    run = run_dir(tmp_path)
    save_compact_run(run, model, config(), ref, tmp_path)
    assert checkpoint_keys(run / DELTA_FILE) == {"trf_blocks.2.ff.fc.weight", "out_head.weight", "out_head.bias"}


def test_tensors_named_frozen_are_not_read_from_the_stored_base(tmp_path):
    model = random_base()
    ref = store_base(tmp_path, model, SEEDED)
    model = trained(convert_to_classifier(model, trainable="last-block"))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # Overwrite a frozen tensor's bytes in the stored file (same size): compared, it would
    # count as changed; named frozen, it is never read.
    name = "trf_blocks.0.ff.fc.weight"
    assert name in frozen
    path = base_file(tmp_path, ref.sha256)
    header_size = int.from_bytes(path.read_bytes()[:8], "little")
    start, end = json.loads(path.read_bytes()[8 : 8 + header_size])[name]["data_offsets"]
    with open(path, "r+b") as f:
        f.seek(8 + header_size + start)
        f.write(torch.full(((end - start) // 4,), 7.0).numpy().tobytes())

    compared = run_dir(tmp_path)
    save_compact_run(compared, model, config(), ref, tmp_path)
    assert name in checkpoint_keys(compared / DELTA_FILE)
    trusted = tmp_path / "runs" / "trusted"
    trusted.mkdir(parents=True)
    save_compact_run(trusted, model, config(), ref, tmp_path, frozen=frozen)
    assert checkpoint_keys(trusted / DELTA_FILE) == {n for n, p in model.named_parameters() if p.requires_grad}


def test_lora_run_predicts_exactly_what_its_export_predicts(tmp_path):
    model = random_base()
    ref = store_base(tmp_path, model, SEEDED)
    model = convert_to_lora_classifier(model, rank=4, alpha=8, blocks=2)
    trained(model)
    assert all(layer.lora_b.abs().sum() > 0 for _, layer in lora_layers(model))
    unmerged = logits(model)
    run = run_dir(tmp_path)
    save_compact_run(run, model, config("lora"), ref, tmp_path, lora={"rank": 4, "alpha": 8, "blocks": 2})
    delta = checkpoint_keys(run / DELTA_FILE)
    assert delta == {n for n, _ in model.named_parameters() if ".lora_" in n} | {"out_head.weight", "out_head.bias"}
    compact, _ = load_compact_run(run)
    torch.testing.assert_close(logits(compact), unmerged, atol=1e-5, rtol=1e-5)
    out = export_run(run, tmp_path / "out" / "classifier.safetensors")
    exported, cfg = read_exported(out)
    assert cfg.trainable == "lora" and cfg.model == CFG
    assert torch.equal(logits(exported), logits(compact))
    assert set(exported.state_dict()) == set(checkpoint.build_classifier(config()).state_dict())


def test_a_run_outside_runs_finds_the_base_where_it_was_trained(tmp_path, monkeypatch):
    root = tmp_path / "root"
    model = random_base()
    ref = store_base(root, model, SEEDED)
    run = tmp_path / "elsewhere" / "run"
    run.mkdir(parents=True)
    save_compact_run(run, trained(convert_to_classifier(model)), config(), ref, root)
    monkeypatch.chdir(tmp_path)  # the default data root, ./data, holds nothing
    loaded, _ = load_compact_run(run)
    assert not (tmp_path / "data").exists()  # nothing rebuilt or written anywhere else
    assert logits(loaded).shape == (len(SEQS), 2)


def test_a_sweep_run_in_a_moved_data_root_finds_the_base_stored_beside_it(tmp_path):
    root = tmp_path / "root"
    model = random_base()
    ref = store_base(root, model, SEEDED)
    run = root / "sweeps" / "sweep-0123456789ab" / "lr-0.001"
    run.mkdir(parents=True)
    save_compact_run(run, trained(convert_to_classifier(model)), config(), ref, root)
    root.rename(tmp_path / "moved")  # base.json still names the old root, which is gone
    loaded, _ = load_compact_run(tmp_path / "moved" / run.relative_to(root))
    assert not paths.bases_dir(paths.data_root()).exists()  # not drawn again into the default root
    assert logits(loaded).shape == (len(SEQS), 2)


def test_bases_are_stored_once_and_shared(tmp_path):
    model = random_base()
    ref_a = store_base(tmp_path, model, SEEDED)
    ref_b = store_base(tmp_path, convert_to_classifier(random_base(), trainable="all"), SEEDED)
    assert ref_a == ref_b and ref_a.sha256 == base_weights_sha256(model)
    assert [p.name for p in paths.bases_dir(tmp_path).glob("*.safetensors")] == [f"{ref_a.sha256}.safetensors"]


def test_a_base_drawn_while_it_is_hashed_and_stored_is_the_seeds_init(tmp_path):
    """``draw_base`` hashes and writes each tensor on side threads as it is drawn: the same
    numbers as ``GPTModel`` under the seed, the same hash as hashing them after, and a file
    that loads into the same tensors (so its bytes are what was hashed, and the index of checked
    files may list it), with nothing else left in the store."""
    base, ref = draw_base(CFG, 5, SEEDED, tmp_path)
    expected = random_base()
    assert all(torch.equal(t, expected.state_dict()[n]) for n, t in base.state_dict().items())
    assert base.out_head.weight is base.tok_emb.weight
    assert ref == BaseRef(base_weights_sha256(expected), SEEDED)
    loaded = load_base(tmp_path, ref, verify=True)
    assert loaded.keys() == bases.base_tensors(expected).keys()
    assert all(torch.equal(t, expected.state_dict()[n]) for n, t in loaded.items())
    stored = [base_file(tmp_path, ref.sha256).name, bases.ORIGINS_FILE, bases.VERIFIED_FILE]
    assert sorted(p.name for p in paths.bases_dir(tmp_path).iterdir()) == sorted(stored)
    assert "spamtune-base" not in [t.name for t in threading.enumerate()]
    _, hashed_only = draw_base(CFG, 5, SEEDED, None)
    assert hashed_only == ref


def test_a_random_origins_index_edited_by_hand_costs_a_draw_not_the_run(tmp_path):
    _, ref = draw_base(CFG, 5, SEEDED, tmp_path)
    index = paths.bases_dir(tmp_path) / bases.ORIGINS_FILE
    (tmp_path / "elsewhere.safetensors").write_bytes(b"")
    known = json.loads(index.read_text())
    index.write_text(json.dumps({key: "../elsewhere" for key in known}))
    assert bases.stored_random_base(tmp_path, SEEDED) is None
    assert draw_base(CFG, 5, SEEDED, tmp_path)[1] == ref
    assert bases.stored_random_base(tmp_path, SEEDED) == ref  # the draw wrote the index again


def test_a_random_origins_index_naming_another_stored_base_is_not_trusted(tmp_path):
    # An index edited (or mixed up) to map seed 5 to seed 6's stored base had a seed-5 run train
    # on seed 6's weights, under an origin that can never rebuild them.
    _, ref = draw_base(CFG, 5, SEEDED, tmp_path)
    _, other = draw_base(CFG, 6, {**SEEDED, "seed": 6}, tmp_path)
    index = paths.bases_dir(tmp_path) / bases.ORIGINS_FILE
    index.write_text(json.dumps({key: other.sha256 for key in json.loads(index.read_text())}))
    assert bases.stored_random_base(tmp_path, SEEDED) is None
    assert draw_base(CFG, 5, SEEDED, tmp_path)[1] == ref
    assert bases.stored_random_base(tmp_path, SEEDED) == ref


def test_a_random_origins_index_that_cannot_be_written_costs_a_draw_not_the_run(tmp_path):
    # A folder where the index goes made "cannot write .../random-origins.json: Is a directory"
    # the run's error, once its base was drawn and stored.
    (paths.bases_dir(tmp_path) / bases.ORIGINS_FILE).mkdir(parents=True)
    base, ref = draw_base(CFG, 5, SEEDED, tmp_path)
    assert base_file(tmp_path, ref.sha256).is_file() and bases.stored_random_base(tmp_path, SEEDED) is None
    assert store_base(tmp_path, base, SEEDED, sha256=ref.sha256) == ref


def test_a_base_draw_that_fails_leaves_no_partial_file_and_no_thread(tmp_path, monkeypatch):
    def stop_at_the_third(name, tensor, seen=[]):
        seen.append(name)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with torch.device("meta"):
        model = GPTModel(CFG)
    with pytest.raises(KeyboardInterrupt):
        with bases.BaseIntake(bases.base_tensors(model.materialize()), SEEDED, tmp_path) as intake:
            model.reset_parameters(drawn=lambda name, tensor: (intake.final(name), stop_at_the_third(name, tensor)))
            intake.finish()
    assert list(paths.bases_dir(tmp_path).iterdir()) == []
    assert "spamtune-base" not in [t.name for t in threading.enumerate()]


def test_a_full_disk_while_storing_a_drawn_base_is_one_line_and_no_partial_file(tmp_path, monkeypatch):
    import errno

    from spamtune.errors import DiskFull

    def full(self, name, tensor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bases.TensorFileWriter, "write", full)
    with pytest.raises(DiskFull):
        draw_base(CFG, 5, SEEDED, tmp_path)
    assert list(paths.bases_dir(tmp_path).iterdir()) == []


def test_a_base_intake_that_cannot_start_or_hash_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="no safetensors name"):
        bases.BaseIntake({"odd": torch.zeros(2, dtype=torch.complex128)}, SEEDED, tmp_path)
    assert list(paths.bases_dir(tmp_path).iterdir()) == []

    def broken(digest, name, tensor):
        raise RuntimeError(f"cannot hash {name}")

    monkeypatch.setattr(bases, "_hash_tensor", broken)
    for root in (None, tmp_path):
        with pytest.raises(RuntimeError, match="cannot hash"):
            with bases.BaseIntake({"w": torch.ones(3)}, SEEDED, root) as intake:
                intake.finish()
    assert list(paths.bases_dir(tmp_path).iterdir()) == []
    assert "spamtune-base" not in [t.name for t in threading.enumerate()]


def test_the_init_sets_each_tensor_once_in_name_order_as_gpt2_does():
    with torch.device("meta"):
        model = GPTModel(CFG)
    model.materialize()
    torch.nn.init.constant_(model.tok_emb.weight, float("nan"))  # what the memory held: overwritten
    order = []
    model.reset_parameters(drawn=lambda name, tensor: order.append(name))
    assert order == sorted(name for name, _ in model.named_parameters())  # the head is tied: once
    state = model.state_dict()
    residual = [t for n, t in state.items() if n.endswith(("att.out_proj.weight", "ff.proj.weight"))]
    assert len(residual) == 2 * CFG.n_layers
    assert abs(torch.cat([t.flatten() for t in residual]).std().item() - 0.02 / (2 * CFG.n_layers) ** 0.5) < 1e-3
    assert abs(state["tok_emb.weight"].std().item() - 0.02) < 1e-3 and not state["tok_emb.weight"].isnan().any()
    assert all(torch.equal(t, torch.ones_like(t)) for n, t in state.items() if "norm" in n and n.endswith("weight"))
    assert all(not t.any() for n, t in state.items() if n.endswith("bias"))


def test_a_missing_random_base_is_rebuilt_from_its_seed(tmp_path):
    run, _, ref = last_block_run(tmp_path)
    expected = logits(load_compact_run(run)[0])
    base_file(tmp_path, ref.sha256).unlink()
    state = torch.get_rng_state()
    assert torch.equal(logits(load_compact_run(run)[0]), expected)
    assert torch.equal(torch.get_rng_state(), state)  # rebuilding did not disturb the caller's RNG
    assert base_file(tmp_path, ref.sha256).is_file()  # stored again


def test_a_rebuilt_base_that_cannot_be_stored_is_used_from_memory_with_a_warning(tmp_path, monkeypatch):
    # Storing the rebuilt base only saves the next load the rebuild: a load must not fail for
    # want of it, whether the disk is full or a file stands where the bases folder goes.
    import errno

    from spamtune.errors import SpamtuneWarning

    run, _, ref = last_block_run(tmp_path)
    expected = logits(load_compact_run(run)[0])
    base_file(tmp_path, ref.sha256).unlink()
    with monkeypatch.context() as patched:
        patched.setattr(bases.TensorFileWriter, "write", lambda self, name, tensor: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
        with pytest.warns(SpamtuneWarning, match=f"base {ref.sha256[:12]}.* could not be stored.*disk full"):
            assert torch.equal(logits(load_compact_run(run)[0]), expected)
    assert [p.name for p in paths.bases_dir(tmp_path).iterdir() if p.suffix == ".safetensors"] == []  # no partial file
    folder = paths.bases_dir(tmp_path)
    for entry in folder.iterdir():
        entry.unlink()
    folder.rmdir()
    folder.write_text("not a folder")
    with pytest.warns(SpamtuneWarning, match=f"could not be stored.*{folder} is a file, not a folder"):
        assert torch.equal(logits(load_compact_run(run)[0]), expected)
    with pytest.warns(SpamtuneWarning, match="could not be stored"):
        export_run(run, tmp_path / "x.safetensors")
    assert torch.equal(logits(read_exported(tmp_path / "x.safetensors")[0]), expected)


def test_a_random_base_drawn_the_old_way_is_not_rebuilt_the_new_way(tmp_path):
    """A run on a random base from before the draw changed (no "init" in its origin): the seed
    now draws other numbers, so a missing base is one line on where to find it, never a
    rebuild that fails its hash or, worse, a different base."""
    model = random_base()
    old_origin = {k: v for k, v in SEEDED.items() if k != "init"}
    ref = store_base(tmp_path, model, old_origin)
    run = run_dir(tmp_path)
    save_compact_run(run, trained(convert_to_classifier(model)), config(), ref, tmp_path)
    base_file(tmp_path, ref.sha256).unlink()
    with pytest.raises(SpamtuneError, match=f"copy {ref.sha256}.safetensors there"):
        load_compact_run(run)


def test_a_base_rebuilt_from_its_weights_file(tmp_path):
    hf = write_hf_gpt2(tmp_path / "hf" / "model.safetensors", emb_dim=64, n_layers=2, context=128)
    cfg = GPTConfig(context_length=128, emb_dim=64, n_layers=2, n_heads=4)
    with torch.device("meta"):
        base = GPTModel(cfg)
    load_pretrained_weights(base, hf)
    ref = store_base(tmp_path, base, {"kind": "file", "path": str(hf), "model": cfg.to_dict()})
    model = trained(convert_to_classifier(base, trainable="last-block"))
    run = run_dir(tmp_path)
    classifier_cfg = ClassifierConfig(model=cfg, max_length=128)
    save_compact_run(run, model, classifier_cfg, ref, tmp_path)
    expected = logits(load_compact_run(run)[0])
    base_file(tmp_path, ref.sha256).unlink()
    assert torch.equal(logits(load_compact_run(run)[0]), expected)
    # Gone from both places: one line saying what is missing and how to get it back.
    base_file(tmp_path, ref.sha256).unlink()
    hf.unlink()
    with pytest.raises(SpamtuneError, match=r"^base [0-9a-f]{12}\.\.\. \(weights file .*\) is not in .*bases and .* is gone; put that file back"):
        load_compact_run(run)


def test_missing_pretrained_base_says_how_to_download_it_into_its_data_root(tmp_path, monkeypatch):
    ref = BaseRef("ab" * 32, {"kind": "pretrained", "name": "gpt2-medium"})
    monkeypatch.setenv("SPAMTUNE_HOME", str(tmp_path))
    message = missing_base_message(tmp_path, ref)
    assert message.endswith("run `spamtune download model gpt2-medium` to get it back")
    assert "\n" not in message
    other = tmp_path / "other root"
    assert missing_base_message(other, ref).endswith(f"run `spamtune download model gpt2-medium --data-dir '{other}'` to get it back")


def tamper(path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    tensors["pos_emb.weight"][0, 0] += 1
    save_file(tensors, str(path))


def test_a_tampered_base_is_made_again_from_its_seed(tmp_path):
    run, model, ref = last_block_run(tmp_path)
    expected = logits(load_compact_run(run)[0])
    path = base_file(tmp_path, ref.sha256)
    tamper(path)
    assert base_weights_sha256_of_file(path) != ref.sha256
    assert torch.equal(logits(load_compact_run(run)[0]), expected)
    assert base_weights_sha256_of_file(path) == ref.sha256  # the damaged file was replaced


@pytest.mark.parametrize("damage", ["truncated", "another file", "not safetensors"])
def test_a_damaged_base_file_is_made_again_from_its_seed_not_blamed_on_the_run(tmp_path, damage):
    run, _, ref = last_block_run(tmp_path)
    expected = logits(load_compact_run(run)[0])
    path = base_file(tmp_path, ref.sha256)
    if damage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    elif damage == "another file":  # readable, but other tensors: the run's own delta
        path.write_bytes((run / DELTA_FILE).read_bytes())
    else:
        path.write_bytes(b"\0" * 1000)
    assert torch.equal(logits(load_compact_run(run)[0]), expected)
    assert base_weights_sha256_of_file(path) == ref.sha256  # the damaged file was replaced


def test_a_truncated_base_its_origin_cannot_make_again_names_the_base(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAMTUNE_HOME", str(tmp_path))
    ref = store_base(tmp_path, random_base(), {"kind": "pretrained", "name": "gpt2-small"})
    path = base_file(tmp_path, ref.sha256)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(SpamtuneError) as refused:
        load_base(tmp_path, ref)
    message = str(refused.value)
    assert message.startswith(f"cannot read {path}")
    assert message.endswith("run `spamtune download model gpt2-small` to get it back")


def test_a_tampered_base_its_origin_cannot_make_again_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAMTUNE_HOME", str(tmp_path))
    ref = store_base(tmp_path, random_base(), {"kind": "pretrained", "name": "gpt2-small"})
    tamper(base_file(tmp_path, ref.sha256))
    with pytest.raises(SpamtuneError) as refused:
        load_base(tmp_path, ref)
    message = str(refused.value)
    assert "does not hold the base it is named after (sha256 mismatch)" in message
    assert message.endswith("run `spamtune download model gpt2-small` to get it back")


def base_weights_sha256_of_file(path) -> str:
    from safetensors.torch import load_file

    return bases.weights_sha256(load_file(str(path)))


def test_full_model_runs_keep_loading(tmp_path):
    model = trained(convert_to_classifier(random_base()))
    run = run_dir(tmp_path)
    checkpoint.save_classifier(run, model, config())
    loaded, _ = load_run(run)
    assert not is_compact_run(run)
    assert torch.equal(logits(loaded), logits(model.eval()))
    exported, _ = read_exported(export_run(run, tmp_path / "full.safetensors"))
    assert torch.equal(logits(exported), logits(loaded))


def test_cli_export(tmp_path):
    run, _, _ = last_block_run(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(run), str(tmp_path / "x.safetensors")])
    assert result.exit_code == 0 and result.stdout.strip() == str(tmp_path / "x.safetensors")
    assert torch.equal(logits(read_exported(tmp_path / "x.safetensors")[0]), logits(load_run(run)[0]))
    bad = runner.invoke(app, ["export", str(tmp_path), str(tmp_path / "y.safetensors")])
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: ") and "not a run folder" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "y.safetensors").exists()
    # A file named with a line break, an escape sequence and a byte that is no UTF-8: its path
    # was two lines on stdout with the escape sequence acted on, or an "unexpected
    # UnicodeEncodeError" once the file was written. One line, escaped, now.
    odd = tmp_path / (os.fsdecode(b"x\xff") + "\n\x1b[1m.safetensors")
    written = runner.invoke(app, ["export", str(run), str(odd)])
    assert written.exit_code == 0 and written.stdout == f"{tmp_path}/x\\udcff\\n\\x1b[1m.safetensors\n" and odd.is_file()


@pytest.mark.parametrize(
    "change, refusal",
    [
        (lambda t: t.update({"out_head.bias": t["out_head.bias"].to(torch.float16)}), "'out_head.bias' is stored as F16"),
        (lambda t: t.update({"out_head.bias": t["out_head.bias"].to(torch.int32)}), "'out_head.bias' is stored as I32"),
        (lambda t: t["out_head.weight"].__setitem__((0, 0), float("inf")), "'out_head.weight' holds 1 NaN or infinite"),
        (lambda t: t.pop("final_norm.bias"), "lacks weight 'final_norm.bias'"),
        (lambda t: t.pop("out_head.weight"), "the config in .*x.safetensors's metadata does not describe .*classes 2 vs None"),
    ],
)
def test_an_exported_file_is_checked_as_a_run_is(tmp_path, change, refusal):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run, _, _ = last_block_run(tmp_path)
    out = export_run(run, tmp_path / "x.safetensors")
    with safe_open(str(out), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(out)
    change(tensors)
    save_file(tensors, str(out), metadata=metadata)
    with pytest.raises(SpamtuneError, match=refusal):
        read_exported(out)


def rewrite_delta(run, change) -> None:
    from safetensors.torch import save_file

    tensors = load_delta(run)
    change(tensors)
    save_file(tensors, str(run / DELTA_FILE))


def test_a_compact_run_with_non_finite_weights_is_refused(tmp_path):
    run, _, _ = last_block_run(tmp_path)
    rewrite_delta(run, lambda t: t["out_head.weight"].__setitem__((0, 0), float("nan")))
    with pytest.raises(SpamtuneError, match="'out_head.weight' holds 1 NaN or infinite value"):
        load_compact_run(run)


def test_a_compact_run_whose_config_does_not_fit_is_refused_before_building(tmp_path):
    import json
    import time

    run, _, _ = last_block_run(tmp_path)
    data = json.loads((run / "config.json").read_text())
    data["model"]["n_layers"] = 10_000_000
    (run / "config.json").write_text(json.dumps(data))
    start = time.perf_counter()
    with pytest.raises(SpamtuneError, match="does not describe .*n_layers 10,000,000 vs 3"):
        load_compact_run(run)
    assert time.perf_counter() - start < 1.0


def write_sparse_safetensors(path, tensors: dict[str, tuple[list[int], str]]) -> None:
    """A safetensors file whose header claims ``tensors`` (name: shape, dtype), its data a hole:
    as large as claimed on disk, nothing on it."""
    import json
    import math
    import struct

    header, offset = {}, 0
    for name, (shape, dtype) in tensors.items():
        size = math.prod(shape) * {"F32": 4, "F16": 2}[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + offset)


@pytest.mark.parametrize(
    "claimed, refusal",
    [
        ({"out_head.weight": ([2, 2**28], "F32")}, r"'out_head.weight' is \[2, 268435456\], the model needs \[2, 48\]"),
        ({"trf_blocks.7.ff.fc.weight": ([192, 48], "F32")}, "unexpected weight 'trf_blocks.7.ff.fc.weight'"),
        ({"trf_blocks.2.ff.fc.weight": ([2**28], "F32")}, r"'trf_blocks.2.ff.fc.weight' is \[268435456\]"),
        ({"out_head.bias": ([2], "F16")}, "'out_head.bias' is stored as F16"),
    ],
)
def test_a_delta_that_does_not_fit_is_refused_before_its_missing_base_is_rebuilt(tmp_path, claimed, refusal):
    run, _, ref = last_block_run(tmp_path)
    base_file(tmp_path, ref.sha256).unlink()
    write_sparse_safetensors(run / DELTA_FILE, claimed)
    start = time.perf_counter()
    with pytest.raises(SpamtuneError, match=refusal):
        load_compact_run(run)
    assert time.perf_counter() - start < 1.0
    assert not base_file(tmp_path, ref.sha256).exists()  # refused before the base was drawn


def test_a_compact_run_with_a_tensor_of_another_dtype_is_refused(tmp_path):
    run, _, _ = last_block_run(tmp_path)
    rewrite_delta(run, lambda t: t.update({"out_head.bias": t["out_head.bias"].to(torch.float16)}))
    with pytest.raises(SpamtuneError, match="'out_head.bias' is stored as F16"):
        load_compact_run(run)


def lora_run(root):
    """A compact run of a trained rank-4 LoRA classifier on the last block."""
    model = random_base()
    ref = store_base(root, model, SEEDED)
    model = trained(convert_to_lora_classifier(model, rank=4, alpha=8, blocks=1))
    run = run_dir(root)
    save_compact_run(run, model, config("lora"), ref, root, lora={"rank": 4, "alpha": 8, "blocks": 1})
    return run


def test_lora_tensors_that_do_not_match_the_runs_rank_are_refused(tmp_path):
    import json

    run = lora_run(tmp_path)
    record = json.loads((run / "base.json").read_text())
    record["lora"]["rank"] = 2
    (run / "base.json").write_text(json.dumps(record))
    with pytest.raises(SpamtuneError, match="not of rank 2"):
        load_compact_run(run)


@pytest.mark.parametrize(
    "field, value, refusal",
    [
        ("lora", [4], "'lora' must be the LoRA settings"),
        ("lora", "x", "'lora' must be the LoRA settings"),
        ("rank", "4", "the LoRA rank must be a positive integer, got \"4\""),
        ("alpha", None, "the LoRA alpha must be a positive number, got null"),
        ("alpha", "x", "the LoRA alpha must be a positive number"),
        ("alpha", -8, "the LoRA alpha must be a positive number, got -8"),
        ("alpha", 0, "the LoRA alpha must be a positive number, got 0"),
        ("origin", "abc", "a base reference.s origin must be a JSON object"),
        ("origin", 5, "a base reference.s origin must be a JSON object"),
    ],
)
def test_a_base_reference_with_unusable_lora_settings_or_origin_is_one_line(tmp_path, field, value, refusal):
    import json

    run = lora_run(tmp_path)
    record = json.loads((run / "base.json").read_text())
    if field == "lora":
        record["lora"] = value
    elif field == "origin":
        record["base"]["origin"] = value
    else:
        record["lora"][field] = value
    (run / "base.json").write_text(json.dumps(record))
    with pytest.raises(SpamtuneError, match=f"base.json: {refusal}"):
        load_compact_run(run)
    with pytest.raises(SpamtuneError, match=refusal):
        export_run(run, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_a_delta_whose_base_json_is_lost_names_that_file(tmp_path):
    run, _, _ = last_block_run(tmp_path)
    (run / "base.json").unlink()
    refusal = "holds delta.safetensors but no base.json"
    with pytest.raises(SpamtuneError, match=refusal):
        checkpoint.load_classifier(run)
    with pytest.raises(SpamtuneError, match=refusal):
        export_run(run, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_lora_tensors_beside_their_layers_weight_are_checked_before_they_are_merged(tmp_path):
    # A delta never holds an adapted layer's weight, but a damaged one may: its A and B must
    # still fit that weight, checked in the header, not found out by the merge that multiplies
    # them (here a 16 MB A would have made a 576 MB product before failing on it).
    from safetensors import safe_open

    run = lora_run(tmp_path)
    with safe_open(str(run / DELTA_FILE), framework="pt") as f:
        claimed = {k: (f.get_slice(k).get_shape(), "F32") for k in f.keys()}
    claimed["trf_blocks.2.att.qkv.weight"] = ([3 * 48, 48], "F32")
    claimed["trf_blocks.2.att.qkv.lora_a"] = ([4, 2**20], "F32")
    write_sparse_safetensors(run / DELTA_FILE, claimed)
    with pytest.raises(SpamtuneError, match=r"LoRA tensors for trf_blocks.2.att.qkv are \[4, 1048576\] and \[144, 4\], its weight \[144, 48\]"):
        load_compact_run(run)
    with pytest.raises(SpamtuneError, match="LoRA tensors for trf_blocks.2.att.qkv"):
        export_run(run, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_lora_settings_that_overflow_the_merged_weights_are_refused(tmp_path):
    import json

    run = lora_run(tmp_path)
    record = json.loads((run / "base.json").read_text())
    record["lora"]["alpha"] = 1e300  # finite, but the merged weights are not
    (run / "base.json").write_text(json.dumps(record))
    with pytest.raises(SpamtuneError, match="'trf_blocks.2.att.out_proj.weight' holds .* NaN or infinite"):
        load_compact_run(run)
    with pytest.raises(SpamtuneError, match="NaN or infinite"):
        export_run(run, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("trainable", ["last-block", "lora"])
def test_bf16_loading_casts_as_it_reads_and_matches_casting_after(tmp_path, trainable):
    """Each block Linear weight is cast as it is read (the fp32 base is never all held), and the
    classifier is the one a full fp32 load cast afterwards gives; LoRA merges in fp32 first."""
    from spamtune.infer import store_linear_weights_in

    model = random_base()
    ref = store_base(tmp_path, model, SEEDED)
    lora = {"rank": 4, "alpha": 8, "blocks": 1} if trainable == "lora" else None
    model = convert_to_lora_classifier(model, rank=4, alpha=8, blocks=1) if lora else convert_to_classifier(model)
    run = run_dir(tmp_path)
    save_compact_run(run, trained(model), config(trainable), ref, tmp_path, lora=lora)
    cast, _ = load_compact_run(run, linear_dtype=torch.bfloat16)
    reference, _ = load_compact_run(run)
    store_linear_weights_in(reference, torch.bfloat16)
    linears = [m for m in cast.trf_blocks.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(p.dtype == torch.bfloat16 for m in linears for p in m.parameters())
    assert cast.tok_emb.weight.dtype == torch.float32 and cast.out_head.weight.dtype == torch.float32
    for name, tensor in reference.state_dict().items():
        assert torch.equal(cast.state_dict()[name], tensor), name


def hashing_counter(monkeypatch) -> list[str]:
    hashed: list[str] = []
    real = bases._hash_tensor

    def counting(digest, name, tensor):
        hashed.append(name)
        real(digest, name, tensor)

    monkeypatch.setattr(bases, "_hash_tensor", counting)
    return hashed


def test_a_base_hashed_once_is_not_hashed_again_until_its_file_changes(tmp_path, monkeypatch):
    ref = store_base(tmp_path, random_base(), {"kind": "random", "seed": 1})
    path = base_file(tmp_path, ref.sha256)
    hashed = hashing_counter(monkeypatch)
    first = load_base(tmp_path, ref)
    assert hashed == []  # hashed as it was written, and known since
    # A base file the index does not know (put in place by hand): hashed once, then known.
    (paths.bases_dir(tmp_path) / bases.VERIFIED_FILE).unlink()
    monkeypatch.setattr(verified, "SETTLED_NS", 0)  # the file was written just now
    again = load_base(tmp_path, ref)
    assert len(hashed) == len(first) and all(torch.equal(first[n], again[n]) for n in first)
    hashed.clear()
    load_base(tmp_path, ref)
    assert hashed == []
    # Rewritten with one number changed: a new change time, so it is hashed, and refused.
    time.sleep(0.05)  # past the file system's clock tick of the write (SETTLED_NS is off)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    tensors["pos_emb.weight"][0, 0] += 1
    save_file(tensors, str(path))
    with pytest.raises(SpamtuneError, match="sha256 mismatch"):
        load_base(tmp_path, ref)
    assert hashed


def test_a_file_changed_within_the_clock_tick_of_its_check_is_not_trusted(tmp_path, monkeypatch):
    ref = store_base(tmp_path, random_base(), {"kind": "random", "seed": 1})
    (paths.bases_dir(tmp_path) / bases.VERIFIED_FILE).unlink()  # as if copied in by hand
    hashed = hashing_counter(monkeypatch)
    load_base(tmp_path, ref)  # written a moment ago: hashed, and not remembered
    hashed.clear()
    load_base(tmp_path, ref)
    assert hashed
    assert not (paths.bases_dir(tmp_path) / bases.VERIFIED_FILE).exists()


def one_error_line(result, code: int, *parts: str) -> None:
    assert result.exit_code == code and result.stdout == "" and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("Error: ")
    for part in parts:
        assert part in result.stderr


def test_export_to_dash_streams_the_file_to_stdout_and_refuses_a_terminal(tmp_path, monkeypatch):
    from spamtune.cli import export as export_cli

    run, _, _ = last_block_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["export", str(run), "-"])
    assert result.exit_code == 0 and result.stderr == ""
    (tmp_path / "piped.safetensors").write_bytes(result.stdout_bytes)
    assert torch.equal(logits(read_exported(tmp_path / "piped.safetensors")[0]), logits(load_run(run)[0]))
    assert not (tmp_path / "-").exists()
    monkeypatch.setattr(export_cli, "_stdout_is_terminal", lambda: True)
    one_error_line(CliRunner().invoke(app, ["export", str(run), "-"]), 2, "terminal")
    assert not (tmp_path / "-").exists()


def test_export_to_a_pipe_whose_reader_leaves_ends_quietly(tmp_path):
    import os
    import subprocess
    import sys

    run, _, _ = last_block_run(tmp_path)
    staging = tmp_path / "tmp"
    staging.mkdir()
    env = {**os.environ, "TMPDIR": str(staging)}
    command = [sys.executable, "-m", "spamtune", "export", str(run), "-"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    start = proc.stdout.read(9)  # the header's length, then its JSON: the file is on its way
    assert len(start) == 9 and 0 < int.from_bytes(start[:8], "little") < 1 << 20 and start[8:] == b"{"
    proc.stdout.close()  # as `| head -c 8` does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == b""
    assert list(staging.iterdir()) == [] and not (tmp_path / "-").exists()  # the staged copy is gone


@pytest.mark.parametrize("to_stdout", [False, True])
def test_a_full_disk_while_exporting_is_one_line_and_keeps_the_earlier_export(tmp_path, monkeypatch, to_stdout):
    import tempfile
    from pathlib import Path

    from safetensors import SafetensorError

    run, _, _ = last_block_run(tmp_path)
    out = tmp_path / "x.safetensors"
    export_run(run, out)
    staging = tmp_path / "tmp"  # where a streamed export is written first
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    before, listing = out.read_bytes(), sorted(tmp_path.iterdir())

    def disk_fills(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")  # what a write cut short leaves behind
        # What safetensors itself raises when the disk fills under it: not an OSError.
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", disk_fills)  # every safetensors file spamtune writes
    result = CliRunner().invoke(app, ["export", str(run), "-" if to_stdout else str(out)])
    one_error_line(result, 1, "Error: disk full: ")
    if to_stdout:
        assert result.stderr.startswith(f"Error: disk full: {staging} (where the export is written before it is streamed)")
    else:
        assert result.stderr.strip() == f"Error: disk full: {out}"
    assert out.read_bytes() == before and sorted(tmp_path.iterdir()) == listing  # no temporary left
    assert list(staging.iterdir()) == []


def run_without_classifier(root, name):
    from spamtune import runs

    run = paths.runs_dir(root) / name
    (run / runs.RESUME_DIR).mkdir(parents=True)
    (run / runs.HPARAMS_FILE).write_text("{}")
    return run


def test_exporting_a_run_still_training_or_stopped_before_its_classifier_says_which(tmp_path):
    from spamtune import runs

    running = run_without_classifier(tmp_path, "running")
    runs.resume_file(running).write_bytes(b"a checkpoint")
    interrupted = run_without_classifier(tmp_path, "interrupted")
    runs.resume_file(interrupted).write_bytes(b"a checkpoint")
    failed = run_without_classifier(tmp_path, "failed")
    runs.write_failure(failed, "the loss is NaN at step 7", 7)
    out = tmp_path / "x.safetensors"

    def export(run):
        return CliRunner().invoke(app, ["export", str(run), str(out)])

    with runs.lock_run_dir(running):
        one_error_line(export(running), 1, f"{running} is still training", "its classifier is written when training ends")
    one_error_line(export(running), 1, "interrupted")  # the process that trained it has gone
    one_error_line(export(interrupted), 1, f"{interrupted} was interrupted before it wrote a classifier; continue it with: spamtune finetune --resume --run {interrupted}")
    one_error_line(export(failed), 1, f"{failed} is a failed run", "(the loss is NaN at step 7)")
    one_error_line(export(tmp_path), 1, f"{tmp_path} is not a run folder")
    assert not out.exists()


def test_export_replaces_only_an_earlier_export_unless_forced(tmp_path):
    import os

    run, _, _ = last_block_run(tmp_path)
    runner = CliRunner()
    earlier = tmp_path / "earlier.safetensors"
    export_run(run, earlier)
    result = runner.invoke(app, ["export", str(run), str(earlier)])
    assert result.exit_code == 0 and result.stdout.strip() == str(earlier)
    # A document, or another safetensors file (a run's own weights), is not an export.
    notes = tmp_path / "important.txt"
    notes.write_text("keep me")
    weights = tmp_path / "model.safetensors"
    checkpoint.save_classifier(tmp_path / "full", trained(convert_to_classifier(random_base())), config())
    weights.write_bytes((tmp_path / "full" / checkpoint.WEIGHTS_FILE).read_bytes())
    for taken in (notes, weights):
        before = taken.read_bytes()
        one_error_line(runner.invoke(app, ["export", str(run), str(taken)]), 1, f"{taken} exists and is not a classifier spamtune exported", "--force")
        assert taken.read_bytes() == before
    result = runner.invoke(app, ["export", str(run), str(notes), "--force"])
    assert result.exit_code == 0 and read_exported(notes)[1] == config()
    # A symbolic link is replaced only when forced, and then the link itself, never its target.
    link = tmp_path / "link.safetensors"
    link.symlink_to(weights)
    before = weights.read_bytes()
    one_error_line(runner.invoke(app, ["export", str(run), str(link)]), 1, "symbolic link")
    assert runner.invoke(app, ["export", str(run), str(link), "--force"]).exit_code == 0
    assert not link.is_symlink() and weights.read_bytes() == before
    # Nothing but a file is ever put in the place of a pipe (or a device), forced or not.
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    one_error_line(runner.invoke(app, ["export", str(run), str(pipe), "--force"]), 1, "not a regular file")


def test_export_to_a_folder_or_an_empty_name_is_a_usage_error(tmp_path, monkeypatch):
    run, _, _ = last_block_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    runner = CliRunner()
    before = sorted(p.name for p in tmp_path.iterdir())
    missing = runner.invoke(app, ["export", str(run), "newdir/"])
    one_error_line(missing, 2, "newdir/ names a folder", "e.g. newdir/classifier.safetensors")
    one_error_line(runner.invoke(app, ["export", str(run), "out"]), 2, "out is a folder", "e.g. out/classifier.safetensors")
    one_error_line(runner.invoke(app, ["export", str(run), "out/", "--force"]), 2, "out/ is a folder")
    one_error_line(runner.invoke(app, ["export", str(run), ""]), 2, "the file to write is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == before and list((tmp_path / "out").iterdir()) == []


def test_predicting_with_a_run_interrupted_before_its_classifier_says_how_to_go_on(tmp_path):
    """Ctrl-C before the first evaluation leaves a resumable run and no classifier yet."""
    from spamtune import runs

    interrupted = run_without_classifier(tmp_path, "early")
    runs.resume_file(interrupted).write_bytes(b"a checkpoint")
    result = CliRunner().invoke(app, ["predict", "--run", str(interrupted), "hello"])
    one_error_line(result, 1, f"{interrupted} was interrupted before it wrote a classifier; continue it with: spamtune finetune --resume --run {interrupted}")


def test_a_missing_base_is_made_again_in_memory_when_the_data_root_is_read_only(tmp_path, monkeypatch):
    import os

    run, _, ref = last_block_run(tmp_path)
    expected = logits(load_compact_run(run)[0])
    base_file(tmp_path, ref.sha256).unlink()
    writable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if mode & os.W_OK and str(path).startswith(str(tmp_path)) else writable(path, mode, **kw))
    assert torch.equal(logits(load_compact_run(run)[0]), expected)
    assert not base_file(tmp_path, ref.sha256).exists()  # nothing written: it could not be


def test_predicting_or_exporting_with_an_interrupted_run_says_its_weights_are_the_best_so_far(tmp_path):
    from spamtune import runs

    run, _, _ = last_block_run(tmp_path)
    (run / runs.RESUME_DIR).mkdir()
    runs.resume_file(run).write_bytes(b"a checkpoint")
    said = f"{run} is unfinished: these are its best weights so far; finish it with: spamtune finetune --resume --run {run}\n"
    predicted = CliRunner().invoke(app, ["predict", "--run", str(run), "hello"])
    assert predicted.exit_code == 0 and predicted.stdout.count("\n") == 1 and said in predicted.stderr
    exported = CliRunner().invoke(app, ["export", str(run), str(tmp_path / "x.safetensors")])
    assert exported.exit_code == 0 and said in exported.stderr
    quiet = CliRunner().invoke(app, ["predict", "-q", "--run", str(run), "hello"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    # Resumed: training again, and the classifier there is still the one from when it stopped.
    again = f"{run} is training again: these are its best weights from when it stopped; the run writes newer ones when it ends\n"
    with runs.lock_run_dir(run):
        exported = CliRunner().invoke(app, ["export", str(run), str(tmp_path / "x.safetensors")])
        predicted = CliRunner().invoke(app, ["predict", "--run", str(run), "hello"])
    assert exported.exit_code == 0 and again in exported.stderr
    assert predicted.exit_code == 0 and again in predicted.stderr


EXPORT_TERMINATED_MID_WRITE = """
import os, signal, sys
from spamtune import checkpoint
real = checkpoint.save_file

def save_then_sigterm(tensors, path, metadata=None):
    real(tensors, path, metadata=metadata)  # the temporary file is whole, not yet renamed
    os.kill(os.getpid(), signal.SIGTERM)

checkpoint.save_file = save_then_sigterm
sys.argv = ["spamtune", *sys.argv[1:]]
from spamtune.entry import main
main()
"""


def test_an_export_stopped_by_sigterm_leaves_no_temporary_file_beside_out(tmp_path):
    """`timeout`, systemd or `kill` stop an export as Ctrl-C does: the temporary file, as large as
    the export, is removed rather than left hidden beside OUT, and the exit status is 143."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    run, _, _ = last_block_run(tmp_path)
    folder = tmp_path / "out"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", EXPORT_TERMINATED_MID_WRITE, "export", str(run), str(folder / "x.safetensors"), "--data-dir", str(tmp_path)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (143, "", "Error: interrupted\n")
    assert list(folder.iterdir()) == []
