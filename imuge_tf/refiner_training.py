"""Training of the reference refiner (`models/refiner.py`) on a folder of photos.

    python -m imuge_tf.refiner_training --data DIR --out MODEL_DIR [--minutes 20]

Each example is a random crop of a photo at its own resolution: its self-embedded reference as
an untouched copy reads it back (`SelfReference.expected`), an object-shaped tamper mask, and the
photo outside the mask, sometimes after a real JPEG round trip, all brought to the refiner's
scale. The trained network is written as `refiner.f16.npz` into MODEL_DIR (a folder with an
`imuge.json`, such as the shipped model), and `imuge.json` names it, so `Imuge.load` picks it up.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

CROP = 512
MASK = {"area_range": (0.05, 0.40), "largest_range": (0.04, 0.25), "max_regions": 4,
        "shapes": ("ellipse", "polygon", "blob")}


def make_examples(photos, count, *, seed=0, progress=None):
    """`count` examples (context, mask, reference, original) at the refiner's scale, uint8 /
    float32 NumPy arrays, from random crops of `photos` (uint8 arrays, each at least CROP)."""
    import tensorflow as tf

    from imuge_tf.attacks.evaluation import jpeg_attack
    from imuge_tf.attacks.masks import random_tamper_mask
    from imuge_tf.models.reference import SelfReference
    from imuge_tf.models.refiner import FACTOR

    rng = np.random.default_rng(seed)
    reference = SelfReference()
    expected = tf.function(reference.expected)
    small = CROP // FACTOR
    contexts, masks, references, originals = [], [], [], []
    for index in range(count):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - CROP + 1)
        left = rng.integers(photo.shape[1] - CROP + 1)
        crop = photo[top:top + CROP, left:left + CROP]
        received = jpeg_attack(crop, rng.integers(70, 96))[0] if rng.random() < 0.5 else crop
        full = tf.constant(np.stack([crop, received]).astype(np.float32))
        pooled = tf.nn.avg_pool2d(full, FACTOR, FACTOR, "VALID")
        ref = tf.nn.avg_pool2d(expected(full[:1]), FACTOR, FACTOR, "VALID")
        mask = random_tamper_mask(tf.constant([seed, index], tf.int64), small, **MASK)
        originals.append(np.asarray(pooled[0]))
        contexts.append(np.asarray(pooled[1]))
        references.append(np.asarray(ref[0]))
        masks.append(np.asarray(mask))
        if progress is not None:
            progress(index + 1, count)
    return (np.stack(contexts), np.stack(masks).astype(np.float32), np.stack(references),
            np.stack(originals))


def _stored_refiner(out_dir):
    """(the refiner `out_dir`'s imuge.json names, its steps) or (None, 0)."""
    from imuge_tf.inference import load_refiner

    metadata_path = os.path.join(out_dir, "imuge.json")
    if not os.path.isfile(metadata_path):
        return None, 0
    with open(metadata_path) as handle:
        metadata = json.load(handle)
    network = load_refiner(out_dir, metadata)
    if network is None:
        return None, 0
    return network, int(metadata["refiner"].get("steps", 0))


def train_refiner(photos, out_dir, *, minutes=20.0, examples=3000, batch_size=16, seed=0,
                  learning_rate=1e-3, steps_per_round=100, resume=False, log=print):
    """Trains a refiner on `photos` for about `minutes` (at least one round of
    `steps_per_round` steps) and stores it in `out_dir`; with `resume`, training goes on
    from the refiner stored there."""
    import keras
    import tensorflow as tf

    from imuge_tf.inference import save_half
    from imuge_tf.models.refiner import RefinerModel, build_refiner

    keras.utils.set_random_seed(seed)
    started = time.monotonic()
    data = make_examples(photos, examples + max(1, examples // 10), seed=seed)
    held_out = tuple(array[examples:] for array in data)
    train = tuple(array[:examples] for array in data)
    log(f"{examples} examples in {time.monotonic() - started:.0f} s")
    dataset = (tf.data.Dataset.from_tensor_slices(train).shuffle(examples, seed=seed)
               .repeat().batch(batch_size, drop_remainder=True).prefetch(2))
    refiner, done = _stored_refiner(out_dir) if resume else (None, 0)
    if refiner is not None:
        log(f"resuming the refiner in {out_dir} after {done} steps")
    model = RefinerModel(refiner if refiner is not None else build_refiner())
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, 100_000, alpha=0.1)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    deadline = started + minutes * 60.0
    epoch = 0
    while epoch == 0 or time.monotonic() < deadline:
        history = model.fit(dataset, steps_per_epoch=steps_per_round, epochs=epoch + 1,
                            initial_epoch=epoch, verbose=0)
        scores = model.evaluate(tf.data.Dataset.from_tensor_slices(held_out).batch(32),
                                verbose=0, return_dict=True)
        epoch += 1
        log(f"step {done + epoch * steps_per_round}: train loss {history.history['loss'][-1]:.4f}, "
            f"held-out L1 gain over the bare reference {scores['l1_gain']:.3f} levels")
    os.makedirs(out_dir, exist_ok=True)
    save_half(model.refiner, os.path.join(out_dir, "refiner.f16.npz"))
    metadata_path = os.path.join(out_dir, "imuge.json")
    if os.path.isfile(metadata_path):
        from imuge_tf.io import write_text_atomic

        with open(metadata_path) as handle:
            metadata = json.load(handle)
        metadata.setdefault("networks", {})["refiner"] = "refiner.f16.npz"
        metadata["refiner"] = {"config": model.refiner.get_config(),
                               "steps": done + epoch * steps_per_round,
                               "held_out_l1_gain": float(scores["l1_gain"])}
        write_text_atomic(metadata_path, json.dumps(metadata, indent=2), force=True)
    return model


def main(argv=None):
    from imuge_tf.data import find_images
    from imuge_tf.io import read_image

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder of training photos")
    parser.add_argument("--out", required=True, help="model folder (with imuge.json)")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps-per-round", type=int, default=100,
                        help="training steps between held-out evaluations")
    parser.add_argument("--resume", action="store_true",
                        help="go on from the refiner stored in --out")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args(argv)
    from imuge_tf.data import DataError
    from imuge_tf.io import ImageReadError

    try:
        photos = [photo for photo in (read_image(path) for path in find_images(args.data))
                  if min(photo.shape[:2]) >= CROP]
    except (DataError, ImageReadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not photos:
        print(f"error: no photo of at least {CROP} px in {args.data}", file=sys.stderr)
        return 2
    train_refiner(photos, args.out, minutes=args.minutes, examples=args.examples,
                  seed=args.seed, steps_per_round=args.steps_per_round,
                  resume=args.resume, learning_rate=args.learning_rate,
                  log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
