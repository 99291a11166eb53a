import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from detkit.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from detkit.errors import DetkitError


def make_training_state(seed: int):
    """A tiny model with an optimizer, scheduler and scaler that have each taken a step."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    loss = model(torch.randn(5, 3)).sum()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return model, optimizer, scheduler, scaler


def next_random_numbers():
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist()


def test_round_trip_restores_all_states_and_rng_streams(tmp_path):
    model, optimizer, scheduler, scaler = make_training_state(seed=0)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    path = tmp_path / "last.pth"
    save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, iteration=7,
                    config={"model": {"name": "faster_rcnn"}, "lr": 0.1}, extra={"samples_seen": 35})
    expected = next_random_numbers()

    fresh_model, fresh_optimizer, fresh_scheduler, fresh_scaler = make_training_state(seed=99)
    fresh_scaler.update(new_scale=3.0)
    fresh_scheduler.step()
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    checkpoint = load_checkpoint(path, model=fresh_model, optimizer=fresh_optimizer, scheduler=fresh_scheduler,
                                 scaler=fresh_scaler)

    assert next_random_numbers() == expected
    assert checkpoint["iteration"] == 7
    assert checkpoint["config"] == {"model": {"name": "faster_rcnn"}, "lr": 0.1}
    assert checkpoint["extra"] == {"samples_seen": 35}
    for key, value in model.state_dict().items():
        assert torch.equal(fresh_model.state_dict()[key], value), key
    momentum = [s["momentum_buffer"] for s in optimizer.state_dict()["state"].values()]
    restored = [s["momentum_buffer"] for s in fresh_optimizer.state_dict()["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, restored)) and len(restored) == 4
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert fresh_scaler.get_scale() == scaler.get_scale()


def test_interrupted_save_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    path = tmp_path / "last.pth"
    save_checkpoint(path, model=model, iteration=1)
    before = path.read_bytes()

    def crash_mid_write(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=model, iteration=2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pth"]
    monkeypatch.undo()
    assert load_checkpoint(path, model=model)["iteration"] == 1


def test_missing_and_garbage_files_are_named(tmp_path):
    with pytest.raises(DetkitError, match="nope.pth does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(DetkitError, match="garbage.pth is not a detkit checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pth"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(DetkitError, match="foreign.pth is not a detkit checkpoint"):
        load_checkpoint(foreign)


def test_mismatched_model_keys_are_listed_with_the_file(tmp_path):
    path = tmp_path / "model.pth"
    save_checkpoint(path, model=nn.Sequential(nn.Linear(2, 2)))
    other = nn.Sequential(nn.Identity(), nn.Linear(2, 2))
    with pytest.raises(DetkitError, match=r"model.pth.*missing 2: 1.weight, 1.bias.*unexpected 2: 0.weight, 0.bias"):
        load_checkpoint(path, model=other)
    with pytest.raises(DetkitError, match=r"model.pth.*0.weight \(2, 2\) vs \(3, 2\)"):
        load_checkpoint(path, model=nn.Sequential(nn.Linear(2, 3)))
    assert load_checkpoint(path, model=other, strict=False)["iteration"] == 0


def test_unpicklable_config_is_refused_at_save_naming_the_key(tmp_path):
    with pytest.raises(DetkitError, match=r"checkpoint.config.schedule.fn is a function"):
        save_checkpoint(tmp_path / "c.pth", model=nn.Linear(1, 1), config={"schedule": {"fn": lambda step: 1.0}})
    assert not any(tmp_path.iterdir())


def test_load_model_weights_accepts_bare_state_dict_and_checkpoint(tmp_path):
    source = nn.Linear(2, 3)
    torch.save(source.state_dict(), tmp_path / "bare.pth")
    save_checkpoint(tmp_path / "full.pth", model=source)
    for name in ("bare.pth", "full.pth"):
        target = nn.Linear(2, 3)
        load_model_weights(tmp_path / name, target)
        assert torch.equal(target.weight, source.weight), name
    with pytest.raises(DetkitError, match="bare.pth: model keys do not match"):
        load_model_weights(tmp_path / "bare.pth", nn.Sequential(nn.Linear(2, 3)))


def test_load_model_weights_with_a_prefix_loads_one_part_of_the_saved_network(tmp_path):
    source = nn.ModuleDict({"backbone": nn.Linear(2, 3), "head": nn.Linear(3, 1)})
    save_checkpoint(tmp_path / "net.pth", model=source)
    part = nn.Linear(2, 3)
    load_model_weights(tmp_path / "net.pth", part, prefix="backbone.")
    assert torch.equal(part.weight, source["backbone"].weight) and torch.equal(part.bias, source["backbone"].bias)
    with pytest.raises(DetkitError, match=r"net.pth: model weights have other shapes.*weight \(3, 2\) vs \(4, 2\)"):
        load_model_weights(tmp_path / "net.pth", nn.Linear(2, 4), prefix="backbone.")
    with pytest.raises(DetkitError, match="net.pth: model keys do not match; missing 2"):
        load_model_weights(tmp_path / "net.pth", nn.Linear(2, 3), prefix="body.")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_round_trip_restores_cuda_rng_stream(tmp_path):
    torch.cuda.manual_seed_all(4)
    save_checkpoint(tmp_path / "gpu.pth", model=nn.Linear(1, 1).cuda())
    expected = torch.rand(3, device="cuda").tolist()
    torch.cuda.manual_seed_all(5)
    load_checkpoint(tmp_path / "gpu.pth", model=nn.Linear(1, 1).cuda())
    assert torch.rand(3, device="cuda").tolist() == expected
