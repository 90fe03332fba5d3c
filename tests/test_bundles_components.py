"""Units of symot_med.bundle: network, transforms, writer, file names, data sets, loading
errors, and the flow training step (learning-rate schedule and moving average)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler
from torch.utils.data import DataLoader

from symot_med.bundle.data import UnpairedLatentDataset, find_bundle_root, split_latent_batch
from symot_med.bundle.network import (
    SymmetricFlow,
    TranslationNetwork,
    build_translation_network,
    load_translation_network,
)
from symot_med.bundle.transforms import (
    DenormaliseModalityd,
    NativeSpaceNiftiWriter,
    NormaliseModalityd,
    TranslatedNameFormatter,
)
from symot_med.bundle.workflows import (
    FlowIteration,
    SaveTranslationModel,
    flow_step_scheduler,
    trained_flow,
    translation_record,
)
from symot_med.config import get_pair
from symot_med.data.transforms import IntensityScale
from symot_med.losses.symot import SyMOTLoss
from symot_med.models.flow import LatentFlow
from symot_med.training.checkpoints import load_checkpoint, save_checkpoint
from symot_med.training.ema import WeightAverage
from symot_med.training.flow import FlowTrainConfig, learning_rate

TINY_AUTOENCODER = {"channels": 8, "res_channels": 4, "n_res_blocks": 1, "embed_dim": 4, "n_embed": 16}
TINY_FLOW = {"n_blocks": 1, "hidden": 4, "n_res_blocks": 0}


def tiny_network(direction: str = "forward", flow_dtype: str = "float64") -> TranslationNetwork:
    return build_translation_network(TINY_AUTOENCODER, (16, 24), TINY_FLOW, direction, flow_dtype=flow_dtype)


def test_network_maps_slices_to_unit_range():
    network = tiny_network().eval()

    with torch.no_grad():
        output = network(torch.rand(2, 1, 16, 24))

    assert output.shape == (2, 1, 16, 24)
    assert output.dtype == torch.float32
    assert float(output.min()) >= 0.0
    assert float(output.max()) <= 1.0


def test_network_rejects_unknown_direction():
    network = tiny_network()

    with pytest.raises(ValueError, match="direction"):
        TranslationNetwork(network.autoencoder, network.flow, "sideways")


def test_network_rejects_string_switch():
    with pytest.raises(TypeError, match="snap_outputs must be True or False, got 'false'"):
        build_translation_network(TINY_AUTOENCODER, (16, 24), TINY_FLOW, "forward", snap_outputs="false")


def test_network_snaps_outputs_to_codes():
    network = tiny_network().eval()
    x = torch.rand(2, 1, 16, 24)

    with torch.no_grad():
        latents = network.autoencoder.latents(x, quantized=True)
        mapped = [level.float() for level in network.flow(tuple(level.double() for level in latents))]
        snapped = network.autoencoder.decode(
            network.autoencoder.quantizer_top.snap(mapped[0]), network.autoencoder.quantizer_bottom.snap(mapped[1])
        )
        output = network(x)

    torch.testing.assert_close(output, snapped.clamp(0.0, 1.0))


def _perturbed(network: TranslationNetwork, seed: int = 0) -> TranslationNetwork:
    """Move the trainable flow weights off their identity start, so the flow changes its input."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.flow.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return network.eval()


def test_network_runs_flow_in_float64():
    network = _perturbed(tiny_network())
    x = torch.rand(2, 1, 16, 24)

    # Reference: the same weights run in float32 and in float64 by hand.
    flow32 = LatentFlow.from_config(network.flow.config())
    flow32.load_state_dict(network.flow.state_dict())
    with torch.no_grad():
        latents = network.autoencoder.latents(x, quantized=True)
        mapped64 = network.flow(tuple(level.double() for level in latents))
        mapped32 = flow32(latents)
        expected = network.autoencoder.decode(*(level.float() for level in mapped64), snap=True).clamp(0.0, 1.0)
        output = network(x)

    assert all(parameter.dtype == torch.float64 for parameter in network.flow.parameters())
    assert not torch.equal(mapped64[1].float(), mapped32[1])
    assert output.dtype == torch.float32
    torch.testing.assert_close(output, expected)


def test_network_float32_flow_stays_float32():
    flow = tiny_network(flow_dtype="float32").flow

    network = TranslationNetwork(tiny_network().autoencoder, flow, "forward", flow_dtype="float32")

    assert network.flow is flow
    assert all(parameter.dtype == torch.float32 for parameter in flow.parameters())


def test_network_rejects_half_precision_flow():
    network = tiny_network()

    with pytest.raises(ValueError, match="invalid flow_dtype torch.float16: pass torch.float64"):
        TranslationNetwork(network.autoencoder, network.flow, "forward", flow_dtype=torch.float16)


def test_output_intensity_follows_direction():
    network = tiny_network("inverse")
    network.set_intensity(IntensityScale(-1024.0, 3000.0), IntensityScale(10.0, 900.0))

    scale = network.output_intensity()

    assert (scale.low, scale.high) == (-1024.0, 3000.0)


def test_output_intensity_missing_raises():
    with pytest.raises(ValueError, match="not a valid scale"):
        tiny_network().output_intensity()


def test_symmetric_flow_returns_both_directions():
    network = tiny_network()
    symmetric = SymmetricFlow(network.flow.float())
    x = network.autoencoder.latents(torch.rand(2, 1, 16, 24))

    with torch.no_grad():
        t_x, t_inv_z = symmetric(x, x)

    for level, forward, inverse in zip(x, t_x, t_inv_z):
        assert forward.shape == level.shape
        assert inverse.shape == level.shape


def test_load_rejects_other_architecture(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, translation_record(tiny_network(), get_pair("t1t2")))
    other = build_translation_network({**TINY_AUTOENCODER, "n_embed": 8}, (16, 24), TINY_FLOW)

    with pytest.raises(ValueError, match="autoencoder_config"):
        load_translation_network(other, path)


def test_load_rejects_other_checkpoint_kind(tmp_path):
    path = tmp_path / "flow.pt"
    save_checkpoint(path, {"kind": "flow", "state_dict": {}})

    with pytest.raises(ValueError, match="not a translation checkpoint"):
        load_translation_network(tiny_network(), path)


def test_load_round_trip_keeps_intensity(tmp_path):
    network = tiny_network()
    network.set_intensity(IntensityScale(1.0, 2.0), IntensityScale(3.0, 4.0))
    path = tmp_path / "model.pt"
    save_checkpoint(path, translation_record(network, get_pair("t1t2")))

    loaded = load_translation_network(tiny_network(), path)

    assert (loaded.output_intensity().low, loaded.output_intensity().high) == (3.0, 4.0)
    assert not loaded.training


def test_denormalise_ct_rounds_and_clips():
    values = torch.tensor([[[[0.0, 0.5, 1.2, 0.30001]]]])  # (1, X, Y, Z)
    mask = torch.tensor([[[[1.0, 1.0, 1.0, 0.0]]]])
    transform = DenormaliseModalityd("pred", "ct", IntensityScale(-1024.0, 3000.0))

    out = transform({"pred": MetaTensor(values), "mask": mask})["pred"]

    assert out.dtype == torch.int16
    assert out.flatten().tolist() == [-1024, 988, 3000, -1000]


def test_denormalise_mr_keeps_float_and_zero_background():
    values = torch.tensor([[[[0.25, 1.0]]]])
    mask = torch.tensor([[[[1.0, 0.0]]]])
    transform = DenormaliseModalityd("pred", "t2", IntensityScale(100.0, 500.0))

    out = transform({"pred": MetaTensor(values), "mask": mask})["pred"]

    assert out.dtype == torch.float32
    assert out.flatten().tolist() == [200.0, 0.0]


def test_denormalise_rejects_mask_of_other_grid():
    transform = DenormaliseModalityd("pred", "t2", IntensityScale(0.0, 1.0))

    with pytest.raises(ValueError, match="Invertd"):
        transform({"pred": torch.zeros(1, 2, 2, 2), "mask": torch.ones(1, 3, 2, 2)})


def test_normalise_keeps_transform_trace():
    image = MetaTensor(torch.arange(24.0).reshape(1, 2, 3, 4))
    image.applied_operations = [{"class": "Orientation"}]
    data = {"image": image, "mask": torch.ones(1, 2, 3, 4)}

    out = NormaliseModalityd("ct")(data)

    assert out["image"].applied_operations == [{"class": "Orientation"}]
    assert float(out["image"].max()) <= 1.0
    assert out["intensity_low"] == -1024.0


@pytest.mark.parametrize(
    "source, expected",
    [
        ("/data/Task1/brain/1BA001/mr.nii.gz", "1BA001_mr_to_ct"),
        ("/data/BraTS2021_00007/BraTS2021_00007_t1.nii.gz", "BraTS2021_00007_t1_to_ct"),
        ("/data/loose/scan.nii", "scan_mr_to_ct"),
    ],
)
def test_name_formatter_keeps_case_folder(source, expected):
    input_modality = "t1" if "BraTS" in source else "mr"
    formatter = TranslatedNameFormatter(input_modality, "ct")

    assert formatter({"filename_or_obj": source}, saver=None) == {"subject": expected, "idx": None}


def _reference_file(tmp_path: Path) -> Path:
    affine = np.array([[0.0, -1.5, 0.0, 10.0], [2.0, 0.0, 0.0, -5.0], [0.0, 0.0, 3.0, 2.0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(np.zeros((4, 5, 6), dtype=np.int16), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=4)
    path = tmp_path / "input.nii.gz"
    nib.save(image, str(path))
    return path


def _write(path: Path, reference: Path, array: np.ndarray, affine: np.ndarray) -> None:
    writer = NativeSpaceNiftiWriter(output_dtype=None)
    writer.set_data_array(torch.from_numpy(array)[None], channel_dim=0)
    writer.set_metadata({"filename_or_obj": str(reference), "affine": torch.from_numpy(affine)}, resample=False)
    writer.write(path)


def test_writer_keeps_input_header(tmp_path):
    reference = _reference_file(tmp_path)
    original = nib.load(str(reference))
    array = np.arange(120, dtype=np.int16).reshape(4, 5, 6)

    _write(tmp_path / "out.nii.gz", reference, array, original.affine + 1e-6)

    written = nib.load(str(tmp_path / "out.nii.gz"))
    np.testing.assert_array_equal(written.affine, original.affine)
    assert int(written.header["sform_code"]) == 4
    assert int(written.header["qform_code"]) == 1
    assert written.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(written.dataobj), array)


def test_writer_rejects_other_grid(tmp_path):
    reference = _reference_file(tmp_path)
    affine = nib.load(str(reference)).affine

    with pytest.raises(ValueError, match="affine"):
        _write(tmp_path / "moved.nii.gz", reference, np.zeros((4, 5, 6), dtype=np.float32), affine + np.eye(4))
    with pytest.raises(ValueError, match="shape"):
        _write(tmp_path / "cropped.nii.gz", reference, np.zeros((4, 5, 5), dtype=np.float32), affine)
    assert not (tmp_path / "moved.nii.gz").exists()


def test_writer_warns_when_replacing(tmp_path, caplog):
    reference = _reference_file(tmp_path)
    affine = nib.load(str(reference)).affine
    first = np.zeros((4, 5, 6), dtype=np.int16)
    second = np.ones((4, 5, 6), dtype=np.int16)

    with caplog.at_level("WARNING", logger="symot_med.bundle.transforms"):
        _write(tmp_path / "out.nii.gz", reference, first, affine)
        assert caplog.records == []
        _write(tmp_path / "out.nii.gz", reference, second, affine)

    assert len(caplog.records) == 1
    assert "replacing" in caplog.records[0].getMessage()
    assert str(tmp_path / "out.nii.gz") in caplog.records[0].getMessage()
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "out.nii.gz")).dataobj), second)


def test_unpaired_dataset_covers_every_sample():
    x = (torch.arange(5.0).reshape(5, 1, 1, 1), torch.arange(5.0).reshape(5, 1, 1, 1))
    z = (torch.arange(3.0).reshape(3, 1, 1, 1) + 10, torch.arange(3.0).reshape(3, 1, 1, 1) + 10)
    dataset = UnpairedLatentDataset(x, z, seed=1)

    items = [dataset[i] for i in range(len(dataset))]
    first_epoch = [int(item["z0"]) for item in items]
    dataset.set_epoch(2)
    second_epoch = [int(dataset[i]["z0"]) for i in range(len(dataset))]

    assert len(dataset) == 5
    assert sorted(int(item["x0"]) for item in items) == [0, 1, 2, 3, 4]
    assert set(first_epoch) == {10, 11, 12}
    assert first_epoch != second_epoch


def test_split_latent_batch_names_missing_key():
    with pytest.raises(ValueError, match="z1"):
        split_latent_batch({"x0": 0, "x1": 0, "z0": 0}, n_levels=2)


def test_find_bundle_root_from_repository(monkeypatch):
    repository = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repository)

    assert Path(find_bundle_root("symot_brats_t1t2")) == repository / "bundles" / "symot_brats_t1t2"
    with pytest.raises(FileNotFoundError, match="--bundle_root"):
        find_bundle_root("no_such_bundle")


# Flow training step of the bundles' train_flow config

# 8 source and 6 target samples at batch 4 give 2 iterations per epoch.
N_SOURCE, N_TARGET = 8, 6


def tiny_flow_config(**changes) -> FlowTrainConfig:
    values = {"epochs": 3, "batch_size": 4, "lr": 1e-2, "final_lr_fraction": 0.1, "ema_decay": 0.2, **changes}
    return FlowTrainConfig(**values)


def random_latents(network: TranslationNetwork, count: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Draw random latent levels (count, C_l, H_l, W_l) of the tiny network's 16 x 24 slices."""
    generator = torch.Generator().manual_seed(seed)
    shapes = network.autoencoder.latent_shapes(16, 24)
    return tuple(torch.randn(count, *shape, generator=generator) for shape in shapes)


def run_flow_trainer(tmp_path: Path, config: FlowTrainConfig) -> dict:
    """Train the tiny flow as train_flow.json wires it, and record each iteration.

    Returns:
        A dict with these entries:

        - ``initial``: the flow's state_dict before training.
        - ``steps``: its state_dict after every iteration.
        - ``rates``: the learning rate of every iteration.
        - ``record``: the written ``model.pt``.
    """
    network = tiny_network(flow_dtype="float32")
    flow = network.flow
    dataset = UnpairedLatentDataset(random_latents(network, N_SOURCE, 1), random_latents(network, N_TARGET, 2))
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False, drop_last=True)
    optimizer = torch.optim.AdamW(flow.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    average = WeightAverage(flow, config.ema_decay)
    scheduler = flow_step_scheduler(optimizer, len(loader), config)
    save = SaveTranslationModel(
        tmp_path / "model.pt", network.autoencoder, flow, get_pair("t1t2"),
        IntensityScale(0.0, 1.0), IntensityScale(0.0, 2.0), config, average,
    )

    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=config.epochs,
        train_data_loader=loader,
        network=SymmetricFlow(flow),
        optimizer=optimizer,
        loss_function=SyMOTLoss(beta=config.beta, estimator="reduced", cost_over_dims=config.cost_over_dims),
        iteration_update=FlowIteration(n_levels=2, grad_clip=config.grad_clip, average=average),
        train_handlers=[LrScheduleHandler(scheduler, epoch_level=False, print_lr=False), save],
        decollate=False,
    )
    log = {"initial": _clone_state(flow), "steps": [], "rates": []}
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda _: log["rates"].append(optimizer.param_groups[0]["lr"]))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: log["steps"].append(_clone_state(flow)))

    trainer.run()
    log["record"] = load_checkpoint(tmp_path / "model.pt")
    return log


def _clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def reference_average(initial: dict, steps: list[dict], decay: float) -> dict[str, torch.Tensor]:
    """Recompute the moving average over the steps t: a <- d a + (1 - d) w, d = min(decay, (1 + t) / (10 + t)).

    Floating-point entries start at the initial weights and are averaged in float64. Other
    entries take the last step's value.
    """
    average = {name: value.double() for name, value in initial.items() if value.is_floating_point()}
    for t, weights in enumerate(steps):
        d = min(decay, (1.0 + t) / (10.0 + t))
        for name in average:
            average[name] = d * average[name] + (1.0 - d) * weights[name].double()

    others = {name: value for name, value in steps[-1].items() if not value.is_floating_point()}
    return {**average, **others}


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_flow_scheduler_matches_package_rates(tmp_path, schedule):
    config = tiny_flow_config(lr_schedule=schedule)
    total_steps = config.epochs * (N_SOURCE // config.batch_size)

    rates = run_flow_trainer(tmp_path, config)["rates"]

    expected = [learning_rate(config, step, total_steps) for step in range(total_steps)]
    assert len(rates) == total_steps
    assert rates == pytest.approx(expected, rel=1e-12, abs=0.0)


def test_saved_flow_is_moving_average(tmp_path):
    config = tiny_flow_config()

    log = run_flow_trainer(tmp_path, config)

    saved = log["record"]["state_dict"]
    expected = reference_average(log["initial"], log["steps"], config.ema_decay)
    last_step = log["steps"][-1]
    assert len(log["steps"]) == 6
    assert log["record"]["weights"] == "moving average"
    assert sorted(f"flow.{name}" for name in expected) == sorted(key for key in saved if key.startswith("flow."))
    for name, value in expected.items():
        torch.testing.assert_close(saved[f"flow.{name}"].double(), value.double(), rtol=0, atol=1e-6, msg=name)
    # The average must differ from the last step, or the comparison above would not test it.
    distance = max(float((saved[f"flow.{name}"] - value).abs().max()) for name, value in last_step.items())
    assert distance > 1e-4


def test_zero_decay_saves_last_step(tmp_path):
    log = run_flow_trainer(tmp_path, tiny_flow_config(epochs=1, ema_decay=0.0))

    saved = log["record"]["state_dict"]
    assert log["record"]["weights"] == "last step"
    for name, value in log["steps"][-1].items():
        torch.testing.assert_close(saved[f"flow.{name}"], value, rtol=0, atol=0, msg=name)


def test_save_rejects_other_decay(tmp_path):
    network = tiny_network()
    average = WeightAverage(network.flow, 0.5)
    scale = IntensityScale(0.0, 1.0)

    with pytest.raises(ValueError, match="invalid moving average decay 0.5: train_config.ema_decay is 0.9"):
        SaveTranslationModel(
            tmp_path / "model.pt", network.autoencoder, network.flow, get_pair("t1t2"), scale, scale,
            tiny_flow_config(ema_decay=0.9), average,
        )


def test_flow_scheduler_rejects_other_lr():
    optimizer = torch.optim.AdamW(tiny_network().flow.parameters(), lr=5e-3)

    with pytest.raises(ValueError, match="invalid optimizer learning rate 0.005: the train config's lr is 0.01"):
        flow_step_scheduler(optimizer, 2, tiny_flow_config())


def test_trained_flow_rejects_bare_flow():
    with pytest.raises(TypeError, match="SymmetricFlow"):
        trained_flow(tiny_network().flow)
