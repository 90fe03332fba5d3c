"""One autoencoder per modality: training from the command line, routing and translation."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from symot_med.bundle.network import TranslationNetwork
from symot_med.cli import main
from symot_med.config import Profile, get_pair
from symot_med.data.demo_cohort import generate_demo_cohort
from symot_med.data.slices import SliceCache
from symot_med.inference.translate import MODEL_FILE, Translator, read_model_card
from symot_med.models.flow import LatentFlow
from symot_med.models.vqvae2 import VQVAE2, VQVAE2Config
from symot_med.pipeline.demo import DemoSettings
from symot_med.pipeline.stages import prepare, train_autoencoders_stage, train_flow_stage
from symot_med.training.checkpoints import load_checkpoint

PROFILE = Profile("test", "brats", (4.0, 4.0, 4.0), (40, 48))
TINY = {"vqvae2": {"channels": 16, "res_channels": 8, "n_res_blocks": 1, "embed_dim": 8, "n_embed": 32},
        "autoencoder": {"epochs": 1, "batch_size": 8},
        "flow": {"epochs": 1, "batch_size": 8, "n_blocks": 2, "hidden": 8, "n_res_blocks": 1}}


@pytest.fixture(scope="module")
def separate(tmp_path_factory):
    """A t1t2 slice cache, one autoencoder per modality and a flow, trained from the command line."""
    root = tmp_path_factory.mktemp("separate")
    cohort = generate_demo_cohort(root / "cohort", seed=2, n_subjects=3, datasets=("brats",), progress=False)
    cache = prepare(cohort["brats"], get_pair("t1t2"), PROFILE, root / "cache", seed=0, test_fraction=0.34, progress=False)
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))

    for modality in ("t1", "t2"):
        # Twice the shared autoencoder's epoch, as the demo gives each per-modality autoencoder.
        code = main(["train-ae", "--cache", str(cache), "--out", str(root / "ae" / modality), "--modality", modality,
                     "--epochs", "2", "--profile", "demo", "--config", str(config), "--device", "cpu", "--quiet"])
        assert code == 0
    code = main(["train-flow", "--cache", str(cache), "--autoencoder", str(root / "ae" / "t1"),
                 "--target-autoencoder", str(root / "ae" / "t2"), "--out", str(root / "flow"),
                 "--profile", "demo", "--config", str(config), "--device", "cpu", "--quiet"])
    assert code == 0
    return {"root": root, "cache": cache, "cohort": cohort}


def test_autoencoder_trains_on_own_modality(separate):
    cache = SliceCache.open(separate["cache"])

    for modality in ("t1", "t2"):
        data = load_checkpoint(separate["root"] / "ae" / modality / "autoencoder.pt")["data"]
        assert data["n_train"] + data["n_val"] == len(cache.slices(modality, "train"))


def test_model_card_lists_both_autoencoders(separate):
    card = json.loads((separate["root"] / "flow" / MODEL_FILE).read_text())

    # Stored relative to the model folder, read back absolute.
    assert card["autoencoders"] == {"t1": "../ae/t1/autoencoder.pt", "t2": "../ae/t2/autoencoder.pt"}
    assert read_model_card(separate["root"] / "flow")["autoencoders"] == {
        "t1": str((separate["root"] / "ae" / "t1" / "autoencoder.pt").resolve()),
        "t2": str((separate["root"] / "ae" / "t2" / "autoencoder.pt").resolve()),
    }


@pytest.mark.parametrize("modality, direction, output_modality", [("t1", "forward", "t2"), ("t2", "inverse", "t1")])
def test_translate_keeps_input_space(separate, tmp_path, modality, direction, output_modality):
    cache = SliceCache.open(separate["cache"])
    source = cache.source_file(cache.case_ids("test")[0], modality)

    code = main(["translate", str(source), "--model", str(separate["root"] / "flow"), "--direction", direction,
                 "--out", str(tmp_path), "--device", "cpu", "--quiet"])

    assert code == 0
    written = tmp_path / f"{source.parent.name}_{modality}_to_{output_modality}.nii.gz"
    reference, output = nib.load(str(source)), nib.load(str(written))
    assert output.shape == reference.shape
    np.testing.assert_allclose(output.affine, reference.affine, atol=1e-6)
    assert np.isfinite(np.asarray(output.dataobj)).all()


def test_translator_routes_each_direction(separate):
    """Forward must read only the source encoder and the target decoder; inverse the opposite."""
    translator = Translator(separate["root"] / "flow", device="cpu")
    assert translator.target_autoencoder is not None
    slices = SliceCache.open(separate["cache"]).slices("t1", "test")[:4]
    before = {direction: translator.translate_slices(slices, direction) for direction in ("forward", "inverse")}

    # Scramble the parts each direction must not use.
    with torch.no_grad():
        for module in (translator.autoencoder.decoder, translator.target_autoencoder.encoder_bottom):
            for parameter in module.parameters():
                parameter.add_(torch.randn_like(parameter))
    after = {direction: translator.translate_slices(slices, direction) for direction in ("forward", "inverse")}

    np.testing.assert_array_equal(after["forward"], before["forward"])
    assert np.abs(after["inverse"] - before["inverse"]).max() > 1e-3


def test_flow_stage_rejects_other_autoencoders(separate):
    pair = get_pair("t1t2")
    copy = separate["root"] / "ae_copy" / "t1" / "autoencoder.pt"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(separate["root"] / "ae" / "t1" / "autoencoder.pt", copy)
    other = {"t1": copy, "t2": separate["root"] / "ae" / "t2" / "autoencoder.pt"}

    with pytest.raises(ValueError, match="was trained on the autoencoders"):
        train_flow_stage(separate["cache"], other, separate["root"] / "flow", pair, None, "cpu", progress=False)


def test_flow_stage_rejects_wrong_modality(separate):
    t1_autoencoder = separate["root"] / "ae" / "t1" / "autoencoder.pt"

    with pytest.raises(ValueError, match="trained on t1 slices, but it is given for t2"):
        train_flow_stage(separate["cache"], t1_autoencoder, separate["root"] / "flow", get_pair("t1t2"), None, "cpu", progress=False)


def test_old_model_card_loads(separate, tmp_path):
    # Cards of earlier versions name one shared autoencoder, with absolute paths.
    card = read_model_card(separate["root"] / "flow")
    old = {key: value for key, value in card.items() if key != "autoencoders"}
    old["autoencoder"] = card["autoencoders"]["t1"]
    (tmp_path / MODEL_FILE).write_text(json.dumps(old))

    translator = Translator(tmp_path, device="cpu")

    assert translator.target_autoencoder is None


def test_separate_stage_folders_and_epochs(separate, tmp_path):
    from symot_med.training.autoencoder import AETrainConfig

    config = AETrainConfig(epochs=1, batch_size=8)
    paths = train_autoencoders_stage(
        separate["cache"], tmp_path, config, VQVAE2Config(**TINY["vqvae2"]), "cpu", False, layout="separate"
    )

    assert paths == {"t1": tmp_path / "t1" / "autoencoder.pt", "t2": tmp_path / "t2" / "autoencoder.pt"}
    for path in paths.values():
        assert load_checkpoint(path)["train_config"]["epochs"] == 2
    with pytest.raises(ValueError, match="autoencoder layout must be one of"):
        train_autoencoders_stage(separate["cache"], tmp_path, config, VQVAE2Config(), "cpu", False, layout="both")


def test_train_ae_unknown_modality(separate, tmp_path, capsys):
    code = main(["train-ae", "--cache", str(separate["cache"]), "--out", str(tmp_path), "--modality", "flair",
                 "--profile", "demo", "--quiet"])

    assert code == 1
    assert "modalities must be some of the cache's ['t1', 't2'], got ['flair']" in capsys.readouterr().err


def test_demo_settings_unknown_layout():
    with pytest.raises(ValueError, match="autoencoders must be one of"):
        DemoSettings(autoencoders="both")


def test_network_rejects_mismatched_autoencoders():
    source = VQVAE2(VQVAE2Config(channels=16, res_channels=8, n_res_blocks=1, embed_dim=8, n_embed=32))
    target = VQVAE2(VQVAE2Config(channels=16, res_channels=8, n_res_blocks=1, embed_dim=4, n_embed=32))
    flow = LatentFlow.from_config({"shapes": [[8, 5, 6], [8, 10, 12]], "n_blocks": 2, "hidden": 8, "n_res_blocks": 1})

    with pytest.raises(ValueError, match="differ in channels"):
        TranslationNetwork(source, flow, target_autoencoder=target)
    with pytest.raises(TypeError, match="target_autoencoder must be a VQVAE2"):
        TranslationNetwork(source, flow, target_autoencoder=flow)


def test_latent_study_reuses_separate_models(separate, tmp_path):
    from symot_med.experiments.latent_study import run_latent_study
    from symot_med.training.autoencoder import AETrainConfig
    from symot_med.training.flow import FlowTrainConfig

    results = run_latent_study(
        separate["cache"], tmp_path, AETrainConfig(**TINY["autoencoder"]), VQVAE2Config(**TINY["vqvae2"]),
        FlowTrainConfig(**TINY["flow"]), device="cpu", progress=False, reuse_dir=separate["root"],
    )

    assert sorted(path.name for path in tmp_path.iterdir() if path.is_dir()) == [
        "ae_shared", "flow_shared_continuous_per_level", "flow_shared_quantized_joint", "flow_shared_quantized_per_level"
    ]
    assert {"ae_t1", "ae_t2", "flow_separate_quantized_per_level"} <= set(results["seconds"])


def _scores(shared: float, separate: float) -> dict:
    return {"shared, quantized, snap": {"ssim": shared, "psnr": 0.0}, "separate, quantized, snap": {"ssim": separate, "psnr": 0.0}}


def test_layout_decision_count_then_mean():
    from symot_med.experiments.latent_study import layout_decision

    # Separate wins 3 of 4 directions but loses on the mean: the count decides.
    results = [
        {"translation": {"a_to_b": _scores(0.10, 0.12), "b_to_a": _scores(0.10, 0.11)}},
        {"translation": {"c_to_d": _scores(0.10, 0.13), "d_to_c": _scores(0.90, 0.30)}},
    ]
    decision = layout_decision(results)
    assert decision["wins"] == {"shared": 1, "separate": 3}
    assert decision["mean_ssim"]["shared"] == pytest.approx((0.1 + 0.1 + 0.1 + 0.9) / 4)
    assert decision["choice"] == "separate"

    # A tie goes to the higher mean.
    tie = [{"translation": {"a_to_b": _scores(0.10, 0.20), "b_to_a": _scores(0.50, 0.30)}}]
    assert layout_decision(tie)["choice"] == "shared"


def test_ae_stage_rejects_other_modalities(separate):
    from symot_med.pipeline.stages import train_ae_stage
    from symot_med.training.autoencoder import AETrainConfig

    with pytest.raises(ValueError, match="not the [0-9]+ training slices of t1[+]t2"):
        train_ae_stage(separate["cache"], separate["root"] / "ae" / "t1", AETrainConfig(), VQVAE2Config(), "cpu", False)


def test_model_card_rejects_missing_modality(separate, tmp_path):
    from symot_med.inference.translate import write_model_card

    with pytest.raises(ValueError, match=r"invalid autoencoders for pair t1t2: given for \['t1'\]"):
        write_model_card(tmp_path, get_pair("t1t2"), PROFILE, {}, {"t1": separate["root"] / "ae" / "t1"}, tmp_path / "flow.pt")
    assert not (tmp_path / MODEL_FILE).exists()
