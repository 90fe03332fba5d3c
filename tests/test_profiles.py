"""Training profiles and config files."""

from __future__ import annotations

import json

import pytest

from symot_med.cli import main
from symot_med.config import get_pair
from symot_med.training.profiles import profile_settings, read_config_file, training_settings


def test_paper_profile_published_settings():
    t1t2 = profile_settings("paper", get_pair("t1t2"))
    ctmr = profile_settings("paper", get_pair("ctmr"))

    for settings in (t1t2, ctmr):
        assert settings.flow.batch_size == 32
        assert settings.flow.lr == 1e-3
        assert settings.flow.n_blocks == 4
        assert settings.flow.n_res_blocks == 8
        assert settings.vqvae2.embed_dim == 128
    assert (t1t2.flow.epochs, t1t2.flow.weight_decay, t1t2.flow.beta) == (200, 1e-4, 1e-5)
    assert (ctmr.flow.epochs, ctmr.flow.weight_decay, ctmr.flow.beta) == (1000, 1e-5, 1e-3)


def test_demo_profile_uses_pair_beta():
    assert profile_settings("demo", get_pair("t1t2")).flow.beta == 1e-5
    assert profile_settings("demo", get_pair("ctmr")).flow.beta == 1e-3


def test_config_file_overrides_profile(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"autoencoder": {"epochs": 3}, "flow": {"beta": 0.5, "epochs": 7}}))

    settings = training_settings("paper", get_pair("t1t2"), path)

    assert settings.autoencoder.epochs == 3
    assert (settings.flow.beta, settings.flow.epochs) == (0.5, 7)
    assert settings.flow.weight_decay == 1e-4  # untouched field keeps the profile's value
    assert settings.vqvae2.embed_dim == 128


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"optimizer": {}}', "unknown sections \\['optimizer'\\]"),
        ('{"flow": {"learning_rate": 1}}', "unknown flow fields \\['learning_rate'\\]"),
        ('{"flow": {"epochs": 0}}', "section 'flow'.*epochs must be >= 1"),
    ],
)
def test_bad_config_file_rejected(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        training_settings("demo", get_pair("t1t2"), path)
    assert str(path) in str(error.value)


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_config_file(tmp_path / "missing.json")


def test_demo_rejects_beta_in_config(tmp_path, capsys):
    path = tmp_path / "demo.json"
    path.write_text(json.dumps({"flow": {"beta": 1.0}}))
    assert main(["demo", "--out", str(tmp_path / "out"), "--config", str(path)]) == 1
    assert "remove flow.beta" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
