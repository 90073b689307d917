"""data/references.csv: the published numbers, each with its source; none invented."""
from pathlib import Path

import pytest

from ctlib.methods import METHODS
from ctlib.references import COLUMNS, load_references

METHOD_MD = Path(__file__).resolve().parents[2] / "shared" / "docs" / "METHOD.md"


def test_schema_and_sources():
    ref = load_references()
    assert tuple(ref.columns) == COLUMNS
    assert set(ref["method"]) <= set(METHODS)
    assert set(ref["source"].str.split(" ").str[0]) <= {"TLlib", "authors'", "the"}
    assert not ref.duplicated(["source", "table", "dataset", "sample_rate", "method", "pretraining", "metric"]).any()
    assert ref["value"].between(0, 100).all()


def test_known_numbers():
    ref = load_references().set_index(["table", "dataset", "sample_rate", "method", "pretraining"])
    assert ref.loc[("fgvc_supervised", "cub200", 100, "concept_tuning", "supervised"), "value"] == 85.14
    assert ref.loc[("fgvc_supervised", "cub200", 15, "erm", "supervised"), "value"] == 51.2
    assert ref.loc[("fgvc_selfsupervised", "stanford_cars", 100, "bi_tuning", "moco_v1_200ep"), "value"] == 90.8
    assert ref.loc[("general_datasets", "caltech101", 100, "bss", "supervised"), "value"] == 91.6
    nt = load_references().query("table == 'negative_transfer'").set_index("method")["value"]
    assert nt.to_dict() == {"erm": 3.08, "bi_tuning": 2.74}
    # TLlib publishes no MoCo DELTA number for Aircraft
    assert not ((ref.index.get_level_values("method") == "delta")
                & (ref.index.get_level_values("pretraining") == "moco_v1_200ep")
                & (ref.index.get_level_values("dataset") == "aircraft")).any()


@pytest.mark.skipif(not METHOD_MD.is_file(), reason="needs the project's METHOD.md beside the checkout")
def test_every_tllib_number_is_in_method_md():
    text = METHOD_MD.read_text()
    section = text[text.index("### 6.1"):]
    for value in load_references().query("source.str.startswith('TLlib')", engine="python")["value"]:
        assert f" {value:.1f} " in section, value
