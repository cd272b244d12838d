"""Issue 11 item 7: the bad checkpoints a new user met, each with the message that names it."""
import os
import subprocess
import sys

import pytest
import torch
from advssm.ssm_layers import CheckpointError, ModelConfig, build_model, load_checkpoint, save_checkpoint
from advssm.ssm_layers.checkpoint import atomic_write, remove_stale_temps
from safetensors.torch import save_file


def _saved(tmp_path, d_model=8, seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(layer="s4d", d_model=d_model, d_state=4, n_layers=2, n_classes=3))
    path = tmp_path / f"m{seed}.safetensors"
    save_checkpoint(path, model, {"epoch": 1})
    return path


def test_a_file_cut_inside_its_header_is_truncated_not_a_pickle(tmp_path):
    """The header length's first byte is 0x80 for many files (3 of the demo's 4): that alone is no pickle."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(layer="s4d", d_model=8, d_state=4, n_layers=2, n_classes=3))
    path = tmp_path / "m.safetensors"
    for pad in range(0, 600, 8):  # metadata of growing length, until the header length starts with 0x80
        save_checkpoint(path, model, {"pad": "x" * pad})
        data = path.read_bytes()
        if data[0] == 0x80:
            break
    assert data[0] == 0x80, "no header length starting with 0x80: the case is not exercised"
    n = int.from_bytes(data[:8], "little")
    for cut in (9, 8 + n // 2, 8 + n - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated") as info:
            load_checkpoint(path)
        assert "pickle" not in str(info.value)
    cut = tmp_path / "short.safetensors"
    cut.write_bytes(b"\x10\x02\x00")  # shorter than a header (a 0x80 0x02 start stays ambiguous: a pickle)
    with pytest.raises(CheckpointError, match="truncated checkpoint"):
        load_checkpoint(cut)


@pytest.mark.parametrize("version", ["0", "-1", "2", "99"])
def test_unsupported_format_versions_are_refused(tmp_path, version):
    model = build_model(ModelConfig(layer="s4d", d_model=8, d_state=4, n_layers=2, n_classes=3))
    path = tmp_path / "v.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={
        "format": "advssm-checkpoint", "format_version": version, "model_config": model.config.to_json()})
    with pytest.raises(CheckpointError, match="newer|unknown checkpoint format version"):
        load_checkpoint(path)


def test_a_config_far_larger_than_the_file_is_refused_before_allocating(tmp_path, monkeypatch):
    import advssm.ssm_layers.checkpoint as module

    path = _saved(tmp_path)
    model = build_model(ModelConfig(layer="s4d", d_model=8, d_state=4, n_layers=2, n_classes=3))
    big = model.config.to_dict() | {"d_model": 60000}
    import json

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={
        "format": "advssm-checkpoint", "format_version": "1", "model_config": json.dumps(big)})
    _refuse_allocation(monkeypatch, module)
    with pytest.raises(CheckpointError, match=r"d_model 60000.* needs at least 28804.2 MB of weights but the "
                                              "file holds"):
        load_checkpoint(path)


def _refuse_allocation(monkeypatch, module):
    """build_model may run on the meta device only (sizing a config allocates nothing)."""
    real = module.build_model

    def build(config):
        if torch.empty(0).device.type != "meta":
            pytest.fail(f"allocated a model of {config}")
        return real(config)

    monkeypatch.setattr(module, "build_model", build)


@pytest.mark.parametrize("layer, change", [("s4d", {"d_state": 10**8}), ("s5", {"d_state": 10**8}),
                                           ("s6", {"d_state": 10**8}), ("s4d", {"n_layers": 10**6}),
                                           ("s6", {"expand": 10**5})])
def test_every_dimension_of_a_tampered_config_is_bounded_before_allocating(tmp_path, monkeypatch, layer, change):
    """d_state (the issue: 1e8 allocated 8 GB for 26 s), the block count and a layer option all count."""
    import json

    import advssm.ssm_layers.checkpoint as module

    model = build_model(ModelConfig(layer=layer, d_model=8, d_state=4, n_layers=2, n_classes=3))
    config = model.config.to_dict()
    if "expand" in change:  # a layer option
        config["layer_options"] = {**config.get("layer_options", {}), **change}
    else:
        config |= change
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={
        "format": "advssm-checkpoint", "format_version": "1", "model_config": json.dumps(config)})
    _refuse_allocation(monkeypatch, module)
    with pytest.raises(CheckpointError, match="needs at least .* MB of weights but the file holds .*nothing was "
                                              "allocated"):
        load_checkpoint(path)


def test_the_size_estimate_is_the_state_dicts_exact_size():
    from advssm.ssm_layers.checkpoint import state_numel
    from advssm.ssm_layers.layers import LAYERS

    for layer in LAYERS:
        for n_layers in (1, 3):
            config = ModelConfig(layer=layer, d_model=8, d_state=4, n_layers=n_layers, n_classes=3)
            assert state_numel(config) == sum(t.numel() for t in build_model(config).state_dict().values()), layer


def test_non_finite_weights_are_named_as_such(tmp_path):
    """NaN weights gave a wrong 'randomised defence' warning at evaluation and exit 0."""
    model = build_model(ModelConfig(layer="s4d", d_model=8, d_state=4, n_layers=2, n_classes=3))
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_checkpoint(path, model)
    with pytest.raises(CheckpointError, match=r"the weights are not finite \(NaN or inf in 1 tensor"):
        load_checkpoint(path)


def test_stale_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "m.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".m.safetensors.{int(dead.stdout)}.abcdef.tmp"  # its pid has exited
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".m.safetensors.{os.getppid()}.abcdef.tmp"  # a live process: maybe writing right now
    live.write_bytes(b"in progress")
    other = tmp_path / f".other.safetensors.{int(dead.stdout)}.abcdef.tmp"  # another file's: not ours to judge
    other.write_bytes(b"x")
    atomic_write(target, b"data")
    assert target.read_bytes() == b"data" and not stale.exists() and live.exists() and other.exists()
    remove_stale_temps(tmp_path / "other.safetensors")
    assert not other.exists()


def test_a_full_disk_says_so(tmp_path, monkeypatch):
    import errno

    import advssm.ssm_layers.checkpoint as module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module.os, "fsync", full)
    with pytest.raises(OSError, match="no space left on the device holding"):
        atomic_write(tmp_path / "x.bin", b"data")
    assert os.listdir(tmp_path) == []
