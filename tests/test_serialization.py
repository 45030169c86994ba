"""Every Keras class the package registers: a flat config that round-trips, and `.keras` files.

The classes come from Keras' registry (package "imuge_tf") after every module of the package
is imported, so a newly registered layer or model without a case in CASES fails here.
"""

import importlib
import json
import pkgutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import imuge_tf
from imuge_tf.config import load_config
from imuge_tf.models.carrier import CarrierEmbedding, CarrierReader
from imuge_tf.models.factory import build_imuge, compile_imuge
from imuge_tf.models.hiding import ThumbnailHiding
from imuge_tf.models.patch_gan import PatchDiscriminator
from imuge_tf.models.refiner import RefinerModel, build_refiner
from imuge_tf.models.segments import (
    ConvNormAct,
    DecodingSegment,
    EncodingSegment,
    HalfShift,
    MiddleSegment,
)
from imuge_tf.models.unet import UNet

PACKAGE = "imuge_tf"
SMALL = {"base_filters": 4, "max_filters": 8, "middle_dilations": (2,)}


def registered_classes() -> dict:
    """{registered name without the package: class} for the whole package."""
    for module in pkgutil.walk_packages(imuge_tf.__path__, f"{PACKAGE}."):
        if module.name.rsplit(".", 1)[-1] != "__main__":  # those run a program on import
            importlib.import_module(module.name)
    prefix = f"{PACKAGE}>"
    return {name[len(prefix):]: cls for name, cls in keras.saving.get_custom_objects().items()
            if name.startswith(prefix)}


def uniform(*shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def box_mask(n, size):
    mask = np.zeros((n, size, size, 1), np.float32)
    mask[:, size // 4:size // 2, size // 8:size // 2 + 2] = 1.0
    return mask


def wrapped(layer, inputs, call=None):
    """A functional model around one layer, so that it can be saved to `.keras` on its own."""
    symbolic = [keras.Input(x.shape[1:], name=f"input{i}") for i, x in enumerate(inputs)]
    symbolic = symbolic if len(symbolic) > 1 else symbolic[0]
    outputs = call(layer, *symbolic) if call else layer(symbolic)
    return keras.Model(symbolic, outputs)


class Case:
    """One instance to check: `owner` is what gets saved (the instance, or a model around a
    layer); `run(network)` gives the outputs to compare after loading; `check(original,
    loaded)` anything else the loaded owner must keep."""

    def __init__(self, instance, run, owner=None, check=None):
        self.instance, self.run, self.check = instance, run, check
        self.owner = instance if owner is None else owner


def layer_case(layer, inputs, call=None):
    model = wrapped(layer, inputs, call)
    return Case(layer, lambda network: network(inputs if len(inputs) > 1 else inputs[0]), model)


def unet_cases():
    image, mask = uniform(2, 32, 32, 3), box_mask(2, 32)
    encoder = UNet(output_activation="tanh", carrier="embed", carrier_protect=True,
                   thumbnail_step=6.0, context_shift=True, name="encoder", **SMALL)
    verifier = UNet(output_channels=1, output_activation="sigmoid", carrier="read",
                    name="verifier", **SMALL)
    decoder = UNet(mask_input=True, local_feature_sharing=True, progressive=True,
                   output_activation="sigmoid", norm="batch", name="decoder", **SMALL)
    return [Case(encoder, lambda network: network(image)),
            Case(verifier, lambda network: network(image)),
            Case(decoder, lambda network: (
                network([image, mask]),
                network.progressive_call(image, mask, stage=2, alpha=0.5)))]


def imuge_cases():
    # Compiled, with some optimizer state, so that the file must carry both optimizers too.
    config = load_config("smoke")
    model = compile_imuge(build_imuge(config), config)
    model.optimizer.iterations.assign(5)
    model.discriminator_optimizer.iterations.assign(3)
    rng = np.random.default_rng(0)
    for optimizer in (model.optimizer, model.discriminator_optimizer):
        for variable in optimizer.variables[2:6]:  # some moment estimates
            variable.assign(rng.random(variable.shape))
    batch = {"image": uniform(2, 32, 32, 3, seed=1), "donor": uniform(2, 32, 32, 3, seed=2),
             "mask": box_mask(2, 32), "seed": np.array([[1, 2], [3, 4]], np.int32)}

    def run(network):
        outputs = network.forward(batch, tf.constant(4), tf.constant(1.0), tf.constant(False))
        return network(batch["image"]), *(outputs[key] for key in sorted(outputs))

    return [Case(model, run, check=same_optimizers)]


def same_optimizers(model, loaded):
    assert loaded.compiled
    for name in ("optimizer", "discriminator_optimizer"):
        original, restored = getattr(model, name), getattr(loaded, name)
        assert type(restored) is type(original)
        assert restored.get_config() == original.get_config()
        assert [v.path for v in restored.variables] == [v.path for v in original.variables]
        for a, b in zip(restored.variables, original.variables):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=b.path)
    assert int(loaded.optimizer.iterations.numpy()) == 5


def refiner_cases():
    model = RefinerModel(build_refiner(base_filters=4, max_filters=8), outside_weight=0.2)
    for index, variable in enumerate(model.refiner.trainable_variables):
        # Not the zero-initialised head: the correction must depend on the weights.
        variable.assign(np.random.default_rng(index).normal(0, 0.05, variable.shape))
    levels = uniform(2, 16, 16, 3) * 255.0
    inputs = (levels, box_mask(2, 16), uniform(2, 16, 16, 3, seed=3) * 255.0)
    return [Case(model, lambda network: network(inputs))]


CASES = {
    "UNet": unet_cases,
    "ImugeModel": imuge_cases,
    "RefinerModel": refiner_cases,
    "PatchDiscriminator": lambda: [Case(
        PatchDiscriminator(filters=4, name="d"),
        lambda network: network(uniform(2, 32, 32, 3)))],
    "HalfShift": lambda: [layer_case(HalfShift(), [uniform(2, 8, 6, 3)])],
    "CarrierEmbedding": lambda: [layer_case(
        CarrierEmbedding(protect=True, protect_window=4, period=16),
        [uniform(2, 16, 16, 3) * 0.01])],
    "CarrierReader": lambda: [layer_case(CarrierReader(windows=(4, 8), period=16),
                                         [uniform(2, 16, 16, 3)])],
    "ThumbnailHiding": lambda: [layer_case(ThumbnailHiding(step=6.0, block=2),
                                           [uniform(2, 16, 16, 3), uniform(2, 16, 16, 3) * 0.01])],
    "ConvNormAct": lambda: [
        layer_case(ConvNormAct(8, strides=2, norm="group"), [uniform(2, 8, 8, 4)]),
        layer_case(ConvNormAct(4, strides=2, transposed=True, norm="batch"),
                   [uniform(2, 4, 4, 8)])],
    "EncodingSegment": lambda: [layer_case(EncodingSegment(8), [uniform(2, 8, 8, 4)])],
    "MiddleSegment": lambda: [layer_case(MiddleSegment(8, dilations=(2,)),
                                         [uniform(2, 4, 4, 8)])],
    "DecodingSegment": lambda: [layer_case(
        DecodingSegment(4), [uniform(2, 4, 4, 8), uniform(2, 8, 8, 4), box_mask(2, 8)],
        call=lambda layer, x, skip, mask: layer(x, skip, tamper_mask=mask))],
}

REGISTERED = registered_classes()


def test_every_registered_class_has_a_case():
    missing = sorted(set(REGISTERED) - set(CASES))
    assert not missing, f"registered without a serialization case in CASES: {missing}"
    assert not sorted(set(CASES) - set(REGISTERED)), "a case for a class that is not registered"


def _is_plain(value):
    if isinstance(value, list):
        return all(isinstance(item, (str, int, float, bool)) for item in value)
    return value is None or isinstance(value, (str, int, float, bool))


def assert_flat(config, where):
    """Plain JSON values; nested objects only where Keras needs them: the dtype policy and
    the registered networks a model owns (each flat in turn). A dict of plain values (the
    attack layer's keyword arguments) counts as plain."""
    json.dumps(config)  # no tuples-as-objects, no config classes, nothing Python-only
    for key, value in config.items():
        if isinstance(value, dict) and {"class_name", "config"} <= set(value):
            registered = value.get("registered_name") or ""
            assert key == "dtype" or registered.startswith(f"{PACKAGE}>"), (
                f"{where}.{key}: a nested {value['class_name']} config")
            assert_flat(value["config"], f"{where}.{key}")
        elif isinstance(value, dict):
            assert all(_is_plain(item) for item in value.values()), f"{where}.{key} is nested"
        else:
            assert _is_plain(value), f"{where}.{key} = {value!r} is not a plain JSON value"


def outputs_of(case, network):
    results = case.run(network)
    results = results if isinstance(results, tuple) else (results,)
    return [np.asarray(result) for result in results]


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_config_is_flat_and_round_trips_and_keras_file_gives_identical_outputs(name, tmp_path):
    if name not in CASES:
        pytest.fail(f"{name} is registered but has no case in CASES")
    cls = REGISTERED[name]
    for index, case in enumerate(CASES[name]()):
        instance = case.instance
        assert type(instance) is cls
        config = instance.get_config()
        assert_flat(config, name)
        assert "dtype" in config, f"{name}.get_config() drops the base config's dtype"
        assert keras.dtype_policies.get(config["dtype"]).name == instance.dtype_policy.name
        assert cls.from_config(config).get_config() == config

        expected = outputs_of(case, case.owner)
        path = str(tmp_path / f"{name}{index}.keras")
        keras.saving.save_model(case.owner, path)
        loaded = keras.saving.load_model(path)
        assert type(loaded) is type(case.owner)
        assert [w.path for w in loaded.weights] == [w.path for w in case.owner.weights]
        for restored, original in zip(loaded.weights, case.owner.weights):
            np.testing.assert_array_equal(restored.numpy(), original.numpy(), err_msg=original.path)
        got = outputs_of(case, loaded)
        assert len(got) == len(expected)
        for restored, original in zip(got, expected):
            np.testing.assert_array_equal(restored, original)
        if case.check:
            case.check(case.owner, loaded)


@pytest.mark.parametrize("dtype", ["bfloat16", "mixed_bfloat16"])
def test_the_networks_build_their_layers_in_the_given_dtype(dtype):
    image, mask = uniform(1, 32, 32, 3), box_mask(1, 32)
    networks = [
        (UNet(carrier="embed", thumbnail_step=6.0, dtype=dtype, **SMALL), image),
        (UNet(output_channels=1, carrier="read", context_shift=True, dtype=dtype, **SMALL),
         image),
        (UNet(mask_input=True, local_feature_sharing=True, dtype=dtype, **SMALL),
         [image, mask]),
        (PatchDiscriminator(filters=4, dtype=dtype), image),
    ]
    exact = ("carrier", "thumbnail")  # float32 whatever the dtype (unet.py says why)
    for network, inputs in networks:
        assert keras.dtype_policies.get(network.get_config()["dtype"]).name == dtype
        for layer in network._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.InputLayer):
                continue
            wanted = "float32" if any(part in layer.name for part in exact) else dtype
            assert layer.dtype_policy.name == wanted, layer.name
        assert np.all(np.isfinite(np.asarray(network(inputs), np.float32)))
        again = type(network).from_config(network.get_config())
        assert again.get_config() == network.get_config()
