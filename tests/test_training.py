"""Tests of checkpoints, device choice, autoencoder training and flow training on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from symot_med.device import resolve_device
from symot_med.models.flow import LatentFlow
from symot_med.models.vqvae2 import VQVAE2Config
from symot_med.training import autoencoder as autoencoder_module
from symot_med.training import flow as flow_module
from symot_med.training.ema import WeightAverage
from symot_med.training.autoencoder import AETrainConfig, load_autoencoder, train_autoencoder
from symot_med.training.checkpoints import load_checkpoint, save_checkpoint
from symot_med.training.flow import (
    FlowTrainConfig,
    _epoch_batches,
    encode_slices,
    learning_rate,
    load_flow,
    round_trip_error,
    train_flow,
)

TINY_MODEL = VQVAE2Config(channels=16, res_channels=8, n_res_blocks=1, embed_dim=8, n_embed=32)
TINY_TRAIN = AETrainConfig(epochs=2, batch_size=4, lr=2e-3, seed=3, val_batch_size=8)
TINY_FLOW = FlowTrainConfig(epochs=2, batch_size=4, n_blocks=2, hidden=8, n_res_blocks=1, beta=1e-3, seed=5)


def blob_slices(n: int, size: int = 32, seed: int = 0, contrast: float = 1.0) -> np.ndarray:
    """Ellipses of random size and brightness on a zero background, float32 (N, 1, size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    slices = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        ry, rx = rng.uniform(0.4, 0.8, size=2)
        inside = (yy / ry) ** 2 + (xx / rx) ** 2 < 1
        slices[i, 0] = inside * contrast * rng.uniform(0.5, 1.0)
    return slices


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Run these tiny models on one thread: on a busy machine, extra threads only contend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_autoencoder(tmp_path_factory):
    """A tiny autoencoder trained for 2 epochs, shared by the flow tests."""
    out_dir = tmp_path_factory.mktemp("tiny_ae")
    path = train_autoencoder(blob_slices(16), blob_slices(4, seed=1), out_dir, TINY_TRAIN, TINY_MODEL, "cpu", False)
    return path


# --- device ----------------------------------------------------------------------------------


def test_resolve_device_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only case")
def test_resolve_device_without_cuda():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_resolve_device_rejects_unknown_name():
    with pytest.raises(ValueError, match="gpu0"):
        resolve_device("gpu0")


# --- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    payload = {
        "weights": {"layer.weight": torch.randn(3, 4), "step": torch.tensor(7)},
        "history": [{"epoch": 1, "loss": 0.5}],
        "name": "model",
        "betas": (0.9, 0.999),
        "nothing": None,
    }

    path = save_checkpoint(tmp_path / "sub" / "model.pt", payload)
    record = load_checkpoint(path)

    torch.testing.assert_close(record["weights"]["layer.weight"], payload["weights"]["layer.weight"])
    assert record["weights"]["step"].item() == 7
    assert record["history"] == payload["history"]
    assert record["name"] == "model"
    assert tuple(record["betas"]) == (0.9, 0.999)
    assert record["nothing"] is None
    assert set(record["versions"]) == {"torch", "monai", "FrEIA"}
    assert record["versions"]["torch"] == torch.__version__


def test_checkpoint_leaves_no_temporary_file(tmp_path):
    save_checkpoint(tmp_path / "a.pt", {"x": torch.zeros(2)})
    save_checkpoint(tmp_path / "a.pt", {"x": torch.ones(2)})

    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    assert torch.equal(load_checkpoint(tmp_path / "a.pt")["x"], torch.ones(2))


def test_load_checkpoint_text_file_names_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a checkpoint\n")

    with pytest.raises(ValueError, match="notes.txt"):
        load_checkpoint(path)


def test_load_checkpoint_truncated_file(tmp_path):
    path = save_checkpoint(tmp_path / "model.pt", {"weights": torch.randn(64, 64)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(ValueError, match="model.pt is not a readable symot-med checkpoint") as caught:
        load_checkpoint(path)

    assert "truncated" in str(caught.value)


def test_load_checkpoint_hides_unsafe_advice(tmp_path):
    # torch's message for a pickle that weights_only rejects suggests weights_only=False.
    path = tmp_path / "pickled.pt"
    torch.save({"format": "other", "object": slice(1, 2)}, path)

    with pytest.raises(ValueError, match="pickled.pt") as caught:
        load_checkpoint(path)

    assert "weights_only" not in str(caught.value)


def test_load_checkpoint_foreign_torch_file(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"state": torch.zeros(1)}, path)

    with pytest.raises(ValueError, match="foreign.pt"):
        load_checkpoint(path)


def test_load_checkpoint_missing_file_names_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_save_checkpoint_rejects_numpy_value(tmp_path):
    with pytest.raises(TypeError, match=r"payload\['stats'\]\['mean'\]"):
        save_checkpoint(tmp_path / "bad.pt", {"stats": {"mean": np.zeros(3)}})
    assert not (tmp_path / "bad.pt").exists()


# --- autoencoder training --------------------------------------------------------------------


def test_train_autoencoder_writes_outputs(tmp_path):
    path = train_autoencoder(blob_slices(16), blob_slices(4, seed=1), tmp_path, TINY_TRAIN, TINY_MODEL, "cpu", False)

    assert path == tmp_path / "autoencoder.pt"
    assert (tmp_path / "last.pt").is_file()
    history = json.loads((tmp_path / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2]
    for key in ("train_loss", "val_psnr", "val_ssim", "top_perplexity", "bottom_usage", "seconds"):
        assert np.isfinite(history[-1][key]), key
    assert history[-1]["train_loss"] < history[0]["train_loss"]

    model = load_autoencoder(tmp_path)
    assert not model.training
    assert model.config == TINY_MODEL


class _Interrupt(Exception):
    pass


def test_resumed_run_matches_uninterrupted_run(tmp_path, monkeypatch):
    train, val = blob_slices(16), blob_slices(4, seed=1)
    reference = load_autoencoder(
        train_autoencoder(train, val, tmp_path / "whole", TINY_TRAIN, TINY_MODEL, "cpu", False)
    )

    # Interrupt the second run during epoch 2's validation, after last.pt of epoch 1 is written.
    evaluate = autoencoder_module.evaluate_autoencoder
    calls = []

    def evaluate_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise _Interrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(autoencoder_module, "evaluate_autoencoder", evaluate_then_fail)
    with pytest.raises(_Interrupt):
        train_autoencoder(train, val, tmp_path / "split", TINY_TRAIN, TINY_MODEL, "cpu", False)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "split" / "autoencoder.pt").exists()
    monkeypatch.setattr(autoencoder_module, "evaluate_autoencoder", evaluate)

    resumed = load_autoencoder(
        train_autoencoder(train, val, tmp_path / "split", TINY_TRAIN, TINY_MODEL, "cpu", False)
    )

    reference_state, resumed_state = reference.state_dict(), resumed.state_dict()
    assert reference_state.keys() == resumed_state.keys()
    for name in reference_state:
        torch.testing.assert_close(resumed_state[name], reference_state[name], rtol=0, atol=1e-6, msg=name)
    history = json.loads((tmp_path / "split" / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2]


def test_resume_rejects_changed_config(tmp_path):
    train, val = blob_slices(16), blob_slices(4, seed=1)
    one_epoch = AETrainConfig(epochs=1, batch_size=8, seed=0, val_batch_size=8)
    train_autoencoder(train, val, tmp_path, one_epoch, TINY_MODEL, "cpu", False)

    with pytest.raises(ValueError, match="last.pt"):
        train_autoencoder(train, val, tmp_path, AETrainConfig(epochs=1, batch_size=4), TINY_MODEL, "cpu", False)


def test_train_autoencoder_rejects_bad_arrays(tmp_path):
    taller = np.pad(blob_slices(4), ((0, 0), (0, 0), (2, 2), (0, 0)))  # (4, 1, 36, 32)
    with pytest.raises(ValueError, match="36x32"):
        train_autoencoder(taller, taller, tmp_path, TINY_TRAIN, TINY_MODEL, "cpu", False)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        train_autoencoder(blob_slices(4)[:, 0], blob_slices(4), tmp_path, TINY_TRAIN, TINY_MODEL, "cpu", False)


# --- flow training ---------------------------------------------------------------------------


def test_epoch_batches_cover_without_repeats():
    generator = torch.Generator().manual_seed(0)

    batches = _epoch_batches(n_samples=10, n_batches=7, batch_size=4, generator=generator)

    assert len(batches) == 7
    for batch in batches:
        assert batch.shape == (4,)
        assert len(set(batch.tolist())) == 4
    # Each permutation of 10 gives two batches of 4, so batches 0 and 1 are disjoint.
    assert not set(batches[0].tolist()) & set(batches[1].tolist())


def test_encode_slices_shapes(tiny_autoencoder):
    model = load_autoencoder(tiny_autoencoder)

    top, bottom = encode_slices(model, blob_slices(5), batch_size=2, device="cpu")

    assert top.shape == (5, 8, 4, 4)
    assert bottom.shape == (5, 8, 8, 8)
    with torch.no_grad():
        expected_top, _ = model.latents(torch.from_numpy(blob_slices(5)))
    torch.testing.assert_close(top, expected_top)


def test_train_flow_writes_outputs_and_inverts(tmp_path, tiny_autoencoder):
    model = load_autoencoder(tiny_autoencoder)
    x_slices, z_slices = blob_slices(12, seed=4), blob_slices(10, seed=5, contrast=0.6)

    path = train_flow(model, x_slices, z_slices, tmp_path, TINY_FLOW, "cpu", False)

    assert path == tmp_path / "flow.pt"
    assert (tmp_path / "last.pt").is_file()
    history = json.loads((tmp_path / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2]
    for key in ("total", "mmd_forward", "mmd_inverse", "cost_forward", "cost_inverse"):
        assert np.isfinite(history[-1][key]), key

    flow = load_flow(tmp_path)
    assert isinstance(flow, LatentFlow)
    assert not flow.training
    latents = encode_slices(model, x_slices, device="cpu")
    with torch.no_grad():
        mapped = flow(latents)
        restored = flow(mapped, rev=True)
    assert any(not torch.allclose(m, x) for m, x in zip(mapped, latents)), "trained flow is still the identity"
    for level, (original, back) in enumerate(zip(latents, restored)):
        torch.testing.assert_close(back, original, rtol=0, atol=1e-4, msg=f"level {level}")


def test_flow_resume_matches_uninterrupted(tmp_path, tiny_autoencoder, monkeypatch):
    model = load_autoencoder(tiny_autoencoder)
    x_slices, z_slices = blob_slices(12, seed=4), blob_slices(10, seed=5, contrast=0.6)
    whole = load_flow(train_flow(model, x_slices, z_slices, tmp_path / "whole", TINY_FLOW, "cpu", False))

    # Interrupt the second run at the start of epoch 2, after last.pt of epoch 1 is written.
    train_epoch = flow_module._train_epoch
    calls = []

    def train_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise _Interrupt
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(flow_module, "_train_epoch", train_then_fail)
    with pytest.raises(_Interrupt):
        train_flow(model, x_slices, z_slices, tmp_path / "split", TINY_FLOW, "cpu", False)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "split" / "flow.pt").exists()
    monkeypatch.setattr(flow_module, "_train_epoch", train_epoch)

    resumed = load_flow(train_flow(model, x_slices, z_slices, tmp_path / "split", TINY_FLOW, "cpu", False))

    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)


def test_cosine_schedule_end_points():
    config = FlowTrainConfig(epochs=2, lr=1e-3, final_lr_fraction=0.1)
    assert learning_rate(config, 0, 11) == pytest.approx(1e-3)
    assert learning_rate(config, 5, 11) == pytest.approx(0.55e-3)
    assert learning_rate(config, 10, 11) == pytest.approx(1e-4)
    constant = FlowTrainConfig(lr_schedule="constant", lr=1e-3)
    assert learning_rate(constant, 7, 11) == 1e-3


def test_weight_average_matches_hand_sum():
    network = torch.nn.Linear(1, 1, bias=False)
    average = WeightAverage(network, decay=0.5)
    expected = network.weight.detach().item()
    for step, value in enumerate([1.0, 2.0, 3.0]):
        with torch.no_grad():
            network.weight.fill_(value)
        average.update(network)
        d = min(0.5, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * value
    assert average.averaged.weight.item() == pytest.approx(expected)
    assert network.weight.detach().item() == 3.0


def test_flow_records_round_trip(tmp_path, tiny_autoencoder):
    model = load_autoencoder(tiny_autoencoder)
    x_slices, z_slices = blob_slices(12, seed=4), blob_slices(10, seed=5, contrast=0.6)
    path = train_flow(model, x_slices, z_slices, tmp_path, TINY_FLOW, "cpu", False)

    record = load_checkpoint(path)
    for key in ("round_trip", "round_trip_float32"):
        assert set(record[key]) == {"forward_then_inverse", "inverse_then_forward"}
    assert max(record["round_trip"].values()) < 1e-10
    assert max(record["round_trip_float32"].values()) < 1e-4

    # Recompute independently with the loaded flow on the real latents, in both precisions.
    flow = load_flow(path)
    z = encode_slices(model, z_slices, device="cpu")
    with torch.no_grad():
        back = flow(flow(z, rev=True))
        z64 = tuple(level.double() for level in z)
        back64 = flow.double()(flow(z64, rev=True))
    assert max(float((a - b).abs().max()) for a, b in zip(back, z)) < 1e-4
    assert max(float((a - b).abs().max()) for a, b in zip(back64, z64)) < 1e-10


def test_round_trip_error_precisions():
    flow = LatentFlow([(4, 4, 6), (4, 8, 12)], n_blocks=2, hidden=8, n_res_blocks=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in flow.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    x = (3 * torch.randn(5, 4, 4, 6, generator=generator), 3 * torch.randn(5, 4, 8, 12, generator=generator))
    z = (3 * torch.randn(5, 4, 4, 6, generator=generator), 3 * torch.randn(5, 4, 8, 12, generator=generator))

    errors64 = round_trip_error(flow, x, z)
    errors32 = round_trip_error(flow, x, z, dtype=torch.float32)

    with torch.no_grad():
        x_back = flow(flow(x), rev=True)
        z_back = flow(flow(z, rev=True))
    assert errors32["forward_then_inverse"] == pytest.approx(max(float((a - b).abs().max()) for a, b in zip(x_back, x)))
    assert errors32["inverse_then_forward"] == pytest.approx(max(float((a - b).abs().max()) for a, b in zip(z_back, z)))
    assert max(errors64.values()) < 1e-10
    assert max(errors64.values()) < max(errors32.values())
    assert all(parameter.dtype == torch.float32 for parameter in flow.parameters())


def test_train_flow_rejects_batch_above_slice_count(tmp_path, tiny_autoencoder):
    model = load_autoencoder(tiny_autoencoder)
    with pytest.raises(ValueError, match="batch_size 4 exceeds"):
        train_flow(model, blob_slices(12), blob_slices(3), tmp_path, TINY_FLOW, "cpu", False)


def test_l1_ssim_loss_matches_skimage():
    from skimage.metrics import structural_similarity

    from symot_med.training.autoencoder import reconstruction_loss

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 32, 32, generator=generator)
    y = (x + 0.1 * torch.randn(x.shape, generator=generator)).clamp(0.0, 1.0)

    ssim = np.mean([
        structural_similarity(
            x[i, 0].numpy(), y[i, 0].numpy(), data_range=1.0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )
        for i in range(2)
    ])
    expected = float((y - x).abs().mean()) + 1.0 - ssim
    assert float(reconstruction_loss(y, x, "l1_ssim")) == pytest.approx(expected, abs=1e-5)
