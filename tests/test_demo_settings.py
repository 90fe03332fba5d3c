"""Tests of the demo's check that a rerun into an existing folder uses the same settings."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from symot_med.cli import main
from symot_med.io import write_json
from symot_med.pipeline.demo import DemoSettings, check_settings_match, run_demo


@pytest.fixture
def earlier_run(tmp_path):
    """A demo folder whose settings.json contains the default settings."""
    write_json(tmp_path / "settings.json", DemoSettings().to_dict())
    return tmp_path


def test_rerun_other_subjects_rejected(earlier_run):
    before = (earlier_run / "settings.json").read_text()

    with pytest.raises(ValueError, match=r"subjects \(12 there, 4 now\) differ from .*settings\.json.*new --out folder"):
        run_demo(earlier_run, DemoSettings(subjects=4), progress=False)

    assert (earlier_run / "settings.json").read_text() == before
    assert sorted(path.name for path in earlier_run.iterdir()) == ["settings.json"]


def test_rerun_names_nested_field(earlier_run):
    settings = DemoSettings()
    settings.autoencoder = replace(settings.autoencoder, epochs=3)

    with pytest.raises(ValueError, match=r"settings: autoencoder\.epochs \(20 there, 3 now\) differ"):
        check_settings_match(earlier_run, settings)


def test_rerun_other_device_and_pairs_allowed(earlier_run):
    check_settings_match(earlier_run, DemoSettings(device="cpu", pairs=("t1t2",)))


def test_rerun_same_settings_allowed(earlier_run):
    check_settings_match(earlier_run, DemoSettings())


def test_new_folder_allowed(tmp_path):
    check_settings_match(tmp_path / "new", DemoSettings(subjects=4))


def test_invalid_settings_leave_no_settings_file(tmp_path):
    with pytest.raises(ValueError, match="invalid device 'tpu'"):
        run_demo(tmp_path / "run", DemoSettings(device="tpu"), progress=False)

    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("subjects", [0, 1, 1000])
def test_subjects_out_of_range_rejected(subjects):
    with pytest.raises(ValueError, match=rf"subjects \(--subjects\) must be an integer from 2, .* to 999, .* got {subjects}"):
        DemoSettings(subjects=subjects)


def test_cli_rerun_other_settings_fails(earlier_run, capsys):
    code = main(["demo", "--out", str(earlier_run), "--subjects", "4", "--quiet"])

    assert code == 1
    assert "settings.json" in capsys.readouterr().err
    assert json.loads((earlier_run / "settings.json").read_text())["subjects"] == 12
