"""Configs: the shipped files load, bad keys and values are named in the error."""

import pytest

from imuge_tf.config import (
    ConfigError,
    config_from_dict,
    differing_keys,
    load_config,
)


def test_paper_config_is_the_papers_setting():
    config = load_config("paper")
    assert config.model.image_size == 256
    assert config.train.batch_size == 8
    assert config.train.learning_rate == pytest.approx(2e-4)
    assert (config.loss.classification_weight, config.loss.adversarial_weight,
            config.loss.immunization_weight, config.loss.container_adversarial_weight) == (
        0.01, 0.005, 0.5, 0.5)
    assert config.train.epochs == 200
    assert config.train.stage_epochs == 20
    assert config.train.decoupling_epochs == 100
    for switch in ("verifier", "discriminators", "task_decoupling", "progressive_recovery",
                   "local_feature_sharing"):
        assert getattr(config.model, switch) is True


@pytest.mark.parametrize("name", ["smoke", "demo", "paper"])
def test_shipped_configs_round_trip_through_yaml(name):
    import yaml

    config = load_config(name)
    again = config_from_dict(yaml.safe_load(config.to_yaml()))
    assert again == config
    assert differing_keys(config, again) == []


def test_overrides_change_typed_fields():
    config = load_config("smoke", ["train.epochs=7", "model.norm=batch",
                                   "attacks.benign=[jpeg, noise]", "loss.adversarial_weight=0"])
    assert config.train.epochs == 7
    assert config.model.norm == "batch"
    assert config.attacks.benign == ("jpeg", "noise")
    assert config.loss.adversarial_weight == 0.0


@pytest.mark.parametrize("override, named", [
    ("model.colour=3", "model.colour"),
    ("nonsense.key=1", "nonsense.key"),
    ("model.norm=layer", "model.norm"),
    ("train.epochs=1.5", "train.epochs"),
    ("train.epochs=0", "train.epochs"),
    ("model.image_size=100", "model.image_size"),
    ("attacks.benign=[sharpen]", "attacks.benign"),
    ("attacks.jpeg_quality_range=[90, 50]", "attacks.jpeg_quality_range"),
    ("model.verifier=maybe", "model.verifier"),
])
def test_bad_keys_and_values_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config("smoke", [override])


def test_unknown_top_level_key_and_missing_file():
    with pytest.raises(ConfigError, match="modle"):
        config_from_dict({"modle": {}})
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-config")


def test_differing_keys_lists_changed_fields():
    a = load_config("smoke")
    b = load_config("smoke", ["train.epochs=9", "model.base_filters=8"])
    assert differing_keys(a, b) == ["model.base_filters", "train.epochs"]
    assert differing_keys(a, b, ignore=("train.epochs",)) == ["model.base_filters"]


def test_attack_names_match_the_attack_layer():
    # config.py names the attacks without importing TensorFlow; the lists must agree.
    from imuge_tf.attacks import benign, pipeline
    from imuge_tf.config import BENIGN_ATTACKS, RESIZE_METHODS, TAMPER_KINDS

    assert set(BENIGN_ATTACKS) == set(pipeline.BENIGN_ATTACKS)
    assert set(TAMPER_KINDS) == set(pipeline.TAMPERS)
    assert RESIZE_METHODS == benign.RESIZE_METHODS


def test_every_attack_field_reaches_the_attack_layer():
    from imuge_tf.attacks.pipeline import AttackPipeline
    from imuge_tf.models.factory import attack_arguments

    config = load_config("smoke", ["attacks.benign=[median, resize]", "attacks.tampers=[removal]",
                                   "attacks.resize_methods=[nearest, area]",
                                   "attacks.copy_move_flip_probability=0.25"])
    pipeline_config = AttackPipeline(**attack_arguments(config)).get_config()
    assert pipeline_config["resize_methods"] in (["nearest", "area"], ("nearest", "area"))
    assert pipeline_config["copy_move_flip_probability"] == 0.25
    assert list(pipeline_config["benign_attacks"]) == ["median", "resize"]


@pytest.mark.parametrize("spelling, value", [("5e-4", 5e-4), ("1E-4", 1e-4), ("1e-3", 1e-3),
                                             ("2.0e-4", 2e-4), (".5", 0.5), ("+3E0", 3.0)])
def test_every_yaml_float_spelling_is_a_number(tmp_path, spelling, value):
    config = load_config("smoke", [f"train.learning_rate={spelling}"])
    assert config.train.learning_rate == pytest.approx(value)
    # The same in a YAML file, where PyYAML reads `5e-4` as a string.
    path = tmp_path / "config.yaml"
    path.write_text(f"loss:\n  classification_weight: {spelling}\n")
    assert load_config(str(path)).loss.classification_weight == pytest.approx(value)


@pytest.mark.parametrize("spelling", [".inf", "-.inf", ".nan", ".NaN", "1e999"])
def test_non_finite_numbers_are_refused(spelling):
    with pytest.raises(ConfigError, match="train.learning_rate.*finite"):
        load_config("smoke", [f"train.learning_rate={spelling}"])


@pytest.mark.parametrize("spelling", ["5e", "e-4", "1e-4x", "1e-4.5"])
def test_strings_that_only_look_like_numbers_are_refused(spelling):
    with pytest.raises(ConfigError, match="expected a number"):
        load_config("smoke", [f"train.learning_rate={spelling}"])
