"""Model cards: a written card reads back, and hand-edited ones fail with the file and field named."""

import json

import pytest

from symot_med.config import get_pair, get_profile
from symot_med.inference.translate import MODEL_FILE, read_model_card, write_model_card


@pytest.fixture
def card_path(tmp_path):
    """Write a card for the T1/T2 pair with checkpoint names inside ``tmp_path`` and return its path."""
    intensity = {"t1": {"low": 0.0, "high": 900.0}, "t2": {"low": 0.0, "high": 1200.0}}
    return write_model_card(
        tmp_path, get_pair("t1t2"), get_profile("demo", "brats"), intensity,
        tmp_path / "autoencoder.pt", tmp_path / "flow.pt",
    )


def edit_card(path, change):
    card = json.loads(path.read_text())
    change(card)
    path.write_text(json.dumps(card))


def test_written_card_reads_back(card_path):
    card = read_model_card(card_path.parent)

    assert card["pair"] == "t1t2"
    assert card["flow"] == str(card_path.parent / "flow.pt")
    assert card["autoencoders"]["t2"] == str(card_path.parent / "autoencoder.pt")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda card: card.pop("pair"), "missing field 'pair'"),
        (lambda card: card.pop("flow"), "'flow'"),
        (lambda card: card["profile"].pop("spacing"), "'profile.spacing'"),
        (lambda card: card["intensity"]["t1"].update(low="zero"), "'intensity.t1.low'"),
        (lambda card: card["intensity"].update(t2=[0, 1]), "'intensity.t2'"),
        (lambda card: card["autoencoders"].update(t1=None), "'autoencoders.t1'"),
        (lambda card: card.pop("autoencoders"), "'autoencoder'"),
        (lambda card: card.update(pair="t1flair"), "invalid field 'pair': it is 't1flair'"),
        (lambda card: card["autoencoders"].pop("t2"), "'autoencoders': it has modalities ['t1']"),
        (lambda card: card.update(intensity={}), "'intensity': it has modalities []"),
        (lambda card: card["profile"].update(spacing=[1.0, 2.0]), "'profile.spacing': it must be a list of 3 numbers"),
        (lambda card: card["profile"].update(slice_size=[96, 96.5]), "'profile.slice_size': it must be a list of 2 integers"),
        (lambda card: card["profile"].update(zoom=2), "unknown keys ['zoom']"),
        (lambda card: card["intensity"]["t1"].update(low=float("nan")), "'intensity.t1.low': it must be a finite number"),
        (lambda card: card["intensity"]["t2"].update(high=float("inf")), "'intensity.t2.high': it must be a finite number"),
        (lambda card: card["intensity"]["t1"].update(low=900.0), "'intensity.t1': low (900.0) must be below high"),
        (lambda card: card["profile"].update(spacing=[2.0, 0.0, 2.0]), "'profile.spacing': voxel sizes must be finite"),
        (lambda card: card["profile"].update(slice_size=[0, 0]), "'profile.slice_size': both sizes must be positive"),
        (lambda card: card["profile"].update(slice_size=[96, 100]), "'profile.slice_size': the autoencoder needs multiples of 8"),
        (lambda card: card["profile"].update(dataset="bogus"), "'profile.dataset': it is 'bogus'"),
        (lambda card: card["profile"].update(min_foreground="some"), "'profile.min_foreground'"),
        (
            lambda card: card.update(autoencoder=card.pop("autoencoders")["t1"], source="ct", target="mr"),
            "'source' and 'target': they are 'ct' and 'mr'",
        ),
    ],
)
def test_edited_card_names_file_and_field(card_path, change, field):
    edit_card(card_path, change)

    with pytest.raises(ValueError) as caught:
        read_model_card(card_path.parent)

    message = str(caught.value)
    assert str(card_path) in message
    assert field in message
    assert "symot-med train-flow" in message


def test_older_shared_autoencoder_card_reads_back(card_path):
    def to_older_card(card):
        card["autoencoder"] = card.pop("autoencoders")["t1"]

    edit_card(card_path, to_older_card)

    card = read_model_card(card_path.parent)

    assert card["autoencoder"] == str(card_path.parent / "autoencoder.pt")
    assert (card["source"], card["target"]) == ("t1", "t2")


def test_card_not_json_object(card_path):
    card_path.write_text("[1, 2]")

    with pytest.raises(ValueError, match="must contain a JSON object, got list"):
        read_model_card(card_path.parent)


def test_card_file_name_accepted(card_path):
    assert card_path.name == MODEL_FILE
    assert read_model_card(card_path)["pair"] == "t1t2"


def test_card_not_utf8(card_path):
    card_path.write_bytes(bytes(range(128, 256)))

    with pytest.raises(ValueError, match="is not valid JSON: it is not UTF-8 text") as caught:
        read_model_card(card_path.parent)

    assert str(card_path) in str(caught.value)
    assert "Restore the file written by `symot-med train-flow`" in str(caught.value)


def test_card_with_byte_order_mark_reads(card_path):
    card_path.write_bytes(b"\xef\xbb\xbf" + card_path.read_bytes())

    assert read_model_card(card_path.parent)["pair"] == "t1t2"


def test_card_folder_not_reported_missing(tmp_path):
    (tmp_path / MODEL_FILE).mkdir()

    with pytest.raises(ValueError, match="is a folder, not a JSON file"):
        read_model_card(tmp_path)


def test_card_write_over_folder_rejected(tmp_path):
    (tmp_path / MODEL_FILE).mkdir()
    intensity = {"t1": {"low": 0.0, "high": 900.0}, "t2": {"low": 0.0, "high": 1200.0}}

    with pytest.raises(ValueError, match=f"cannot write {tmp_path / MODEL_FILE}: it is a folder"):
        write_model_card(
            tmp_path, get_pair("t1t2"), get_profile("demo", "brats"), intensity,
            tmp_path / "autoencoder.pt", tmp_path / "flow.pt",
        )
    assert (tmp_path / MODEL_FILE).is_dir()
