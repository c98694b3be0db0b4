import dataclasses

import pytest
import yaml
from conftest import REPO

from eemlflow.errors import EemlflowError
from eemlflow.training.config import TrainConfig


def test_mlproject_defaults_are_the_config_defaults():
    params = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]["parameters"]
    from_mlproject = TrainConfig.from_strings({k: str(v["default"]) for k, v in params.items()})
    assert from_mlproject == TrainConfig()
    command = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]["command"]
    for name in params:  # every declared parameter reaches the command
        assert "{" + name + "}" in command


def test_every_setting_is_an_mlproject_parameter_and_a_readme_row_and_nothing_else():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    params = set(yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]["parameters"])
    assert params == fields
    table = (REPO / "README.md").read_text().split("| parameter | default | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
    assert rows == fields


def test_a_country_not_given_is_the_default_and_says_so():
    assert TrainConfig().country == "USA" and not TrainConfig().country_given
    given = TrainConfig.from_strings({"country_iso_code": "FRA"})
    assert given.country == "FRA" and given.country_given
    assert TrainConfig.from_strings({"country_iso_code": ""}) == TrainConfig()


def test_base_lr_follows_the_study_rule_unless_given():
    assert [TrainConfig(batch_size=b).base_lr for b in (32, 64, 128)] == [0.0125, 0.025, 0.05]
    assert TrainConfig(batch_size=32, lr=0.3).base_lr == 0.3


@pytest.mark.parametrize("raw, message", [
    ({"epochs": "ten"}, "epochs must be an integer, got 'ten'"),
    ({"epochs": "0"}, "epochs must be a positive integer"),
    ({"batch_size": "-4"}, "batch_size must be a positive integer"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"lr": "-0.1"}, "lr must be a positive number"),
    ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"country_iso_code": "Mars"}, "ISO 3166 alpha-3"),
    ({"download": "maybe"}, "download must be true or false"),
    ({"colour": "red"}, "unknown setting 'colour'"),
    ({"mode": "turbo"}, "unknown mode 'turbo'"),
    ({"pue": "0.9"}, "pue must be 1.0 or more"),
    ({"data_path": "disk"}, "unknown data_path 'disk'"),
    ({"mode": "fast", "data_path": "cpu"}, "mode=fast uses the GPU data path"),
])
def test_bad_values_are_one_clear_error(raw, message):
    with pytest.raises(EemlflowError, match=message):
        TrainConfig.from_strings(raw)


def test_empty_strings_mean_default():
    assert TrainConfig.from_strings({"lr": "", "img_size": " ", "epochs": "3"}) == TrainConfig(epochs=3)
