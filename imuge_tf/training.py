"""The training loop: a work directory that resumes by itself, on any tf.distribute strategy.

Work directory layout (documented in the README):

    config.yaml          the resolved config of the run (a different config is refused)
    checkpoints/         tf.train.Checkpoint of the model and both optimizers (last N)
    logs/                TensorBoard scalars (train/) and image grids (images/)
    inference/           encoder.keras, verifier.keras, decoder.keras, imuge.json:
                         the inference networks, rewritten atomically after every epoch

The module is over 500 lines because keeping that directory resumable is one job: the loop,
the checks that keep a diverged state from being saved and the recovery of checkpoints that a
kill left damaged share TrainingError, the checkpoint layout and the run's order of events.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil

import keras
import numpy as np
import tensorflow as tf

from imuge_tf.config import Config, ConfigError, config_from_dict, differing_keys
from imuge_tf.data import find_images, load_images, make_dataset
from imuge_tf.io import remove_stale_partials, write_text_atomic
from imuge_tf.models.factory import build_imuge, compile_imuge

STRATEGIES = ("default", "mirrored", "multiworker")
# Fields that may change between runs in one work directory (train longer, log differently).
RESUMABLE_KEYS = ("train.epochs", "train.keep_checkpoints", "train.checkpoint_every_steps",
                  "train.image_log_every_epochs")
INFERENCE_FORMAT_VERSION = 1
PREVIEW_SAMPLES = 4


_CHECKPOINT_INDEX = re.compile(r"^ckpt-(\d+)\.index$")


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


class DivergedError(TrainingError):
    """The losses or the weights stopped being finite numbers: the run stops at once, and no
    checkpoint or inference file is written from that state."""


def select_strategy(name: str) -> tf.distribute.Strategy:
    """`default` (one device), `mirrored` (all local devices), `multiworker` (from TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise TrainingError("--strategy multiworker needs TF_CONFIG describing the cluster "
                                "(see the README, 'Distributed training')")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TrainingError(f"unknown strategy '{name}': expected one of {', '.join(STRATEGIES)}")


def worker_role(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """(is this process the chief, its task id): only the chief writes shared outputs."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True, 0
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0
                                        and "chief" not in resolver.cluster_spec().as_dict())
    return is_chief, task_id


def prepare_workdir(workdir: str, config: Config, write: bool = True) -> None:
    """Creates the work directory, or checks that it belongs to this config."""
    config_path = os.path.join(workdir, "config.yaml")
    if os.path.exists(config_path):
        import yaml

        try:
            with open(config_path, encoding="utf-8") as stream:
                stored = config_from_dict(yaml.safe_load(stream))
        except (ConfigError, yaml.YAMLError) as error:
            raise TrainingError(f"{config_path} is not a valid config ({error}); "
                                "use a new --workdir") from None
        changed = differing_keys(stored, config, ignore=RESUMABLE_KEYS)
        if changed:
            raise TrainingError(
                f"work directory {workdir} belongs to another config (differs in "
                f"{', '.join(changed)}); use a new --workdir, or the config stored in "
                f"{config_path}")
    elif os.path.exists(workdir) and not os.path.isdir(workdir):
        raise TrainingError(f"--workdir {workdir} exists and is not a folder")
    if write:
        os.makedirs(workdir, exist_ok=True)
        write_text_atomic(config_path, config.to_yaml(), force=True)


def save_inference_networks(model, config: Config, folder: str, step: int) -> None:
    """Writes E, V and R as `.keras` files plus `imuge.json`, each file atomically."""
    os.makedirs(folder, exist_ok=True)
    for name in ("encoder", "verifier", "decoder"):
        network = getattr(model, name)
        partial = os.path.join(folder, f".partial-{name}.keras")
        network.save(partial)
        os.replace(partial, os.path.join(folder, f"{name}.keras"))
    metadata = {
        "format_version": INFERENCE_FORMAT_VERSION,
        "config_name": config.name,
        "image_size": config.model.image_size,
        "step": int(step),
        "networks": {"encoder": "encoder.keras", "verifier": "verifier.keras",
                     "decoder": "decoder.keras"},
        "config": config.to_dict(),
    }
    write_text_atomic(os.path.join(folder, "imuge.json"), json.dumps(metadata, indent=2),
                      force=True)


def image_grid(outputs: dict, samples: int = PREVIEW_SAMPLES) -> np.ndarray:
    """One row per sample: original, immunized, residual x10, attacked, true mask, predicted
    mask, recovered. Returns a [1, H, W, 3] float array for tf.summary.image."""
    def rgb(x):
        x = np.asarray(x)[:samples]
        return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x

    residual = 0.5 + 10.0 * (np.asarray(outputs["immunized"]) - np.asarray(outputs["image"]))
    columns = [outputs["image"], outputs["immunized"], residual, outputs["attacked"],
               outputs["true_mask"], outputs["predicted_mask"], outputs["recovered"]]
    columns = [np.clip(rgb(column), 0.0, 1.0) for column in columns]
    rows = [np.concatenate([column[i] for column in columns], axis=1)
            for i in range(columns[0].shape[0])]
    return np.concatenate(rows, axis=0)[None].astype(np.float32)


class WorkdirCallback(keras.callbacks.Callback):
    """Checkpoints (every epoch and every N steps), image grids and inference weights."""

    def __init__(self, manager, config, workdir, preview_batch, is_chief, image_writer):
        super().__init__()
        self.manager = manager
        self.config = config
        self.workdir = workdir
        self.preview_batch = preview_batch
        self.is_chief = is_chief
        self.image_writer = image_writer

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def _save(self, step):
        check_finite_weights(self.model, step, self.manager.latest_checkpoint)
        self.manager.save(checkpoint_number=step)

    def on_train_batch_end(self, batch, logs=None):
        check_finite_logs(logs, self._step(), self.manager.latest_checkpoint)
        every = self.config.train.checkpoint_every_steps
        if every and self._step() % every == 0:
            self._save(self._step())

    def on_epoch_end(self, epoch, logs=None):
        step = self._step()
        if self.manager.latest_checkpoint != self._checkpoint_path(step):
            self._save(step)
        # Finite weights can still be large enough to give NaN photos: checked on the preview
        # batch before the networks are published.
        outputs = check_finite_outputs(self.model, self.preview_batch, step,
                                       self.manager.latest_checkpoint)
        if not self.is_chief:
            return
        save_inference_networks(self.model, self.config,
                                os.path.join(self.workdir, "inference"), step)
        every = self.config.train.image_log_every_epochs
        if every and (epoch + 1) % every == 0 and self.image_writer is not None:
            with self.image_writer.as_default():
                tf.summary.image("original|immunized|residual x10|attacked|true mask|"
                                 "predicted mask|recovered", image_grid(outputs), step=step)
            self.image_writer.flush()

    def _checkpoint_path(self, step):
        return os.path.join(self.manager.directory, f"ckpt-{step}")


def _diverged_message(what: str, step: int, last_checkpoint: str | None) -> str:
    kept = (f"the last finite checkpoint, {os.path.basename(last_checkpoint)}, stays the "
            "latest" if last_checkpoint else "no checkpoint was written from it")
    return (f"training diverged at step {step}: {what}; {kept}. Lower train.learning_rate "
            "(or the loss weights) and train in a new --workdir, with --init-from this one "
            "to start from its last finite weights")


def check_finite_logs(logs, step: int, last_checkpoint: str | None = None) -> None:
    """Raises DivergedError when a logged loss or metric is NaN or infinite."""
    bad = []
    for name, value in (logs or {}).items():
        try:
            number = float(np.asarray(value))
        except (TypeError, ValueError):
            continue
        if not math.isfinite(number):
            bad.append(f"{name}={number}")
    if bad:
        raise DivergedError(_diverged_message(f"the losses are not finite ({', '.join(bad)})",
                                              step, last_checkpoint))


def non_finite_variables(variables) -> list[str]:
    """Paths of the floating-point variables holding a NaN or an infinity."""
    names = []
    for variable in variables:
        dtype = tf.as_dtype(variable.dtype)
        if dtype.is_floating and not bool(tf.reduce_all(tf.math.is_finite(variable))):
            names.append(getattr(variable, "path", None) or variable.name)
    return names


def check_finite_weights(model, step: int, last_checkpoint: str | None = None) -> None:
    """Raises DivergedError when a weight of the model (networks or optimizer state) is not
    finite: such a state is never saved."""
    variables = list(model.variables)
    for optimizer in (model.optimizer, getattr(model, "discriminator_optimizer", None)):
        if optimizer is not None:
            variables += list(optimizer.variables)
    bad = non_finite_variables(variables)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DivergedError(_diverged_message(
            f"{len(bad)} weight(s) are not finite ({', '.join(bad[:3])}{more})", step,
            last_checkpoint))


def check_finite_outputs(model, batch, step: int, last_checkpoint: str | None = None) -> dict:
    """Runs the whole data flow on `batch`; returns its outputs, or raises DivergedError when
    one of them is not finite (or an op refused a NaN input)."""
    stage, alpha, decoupled = model.schedule()
    try:
        outputs = model.forward(batch, stage, alpha, decoupled)
        bad = sorted(name for name, value in outputs.items()
                     if tf.as_dtype(value.dtype).is_floating
                     and not bool(tf.reduce_all(tf.math.is_finite(value))))
    except tf.errors.InvalidArgumentError as error:
        bad = [f"an op refused its input: {_first_line(error)}"]
    if bad:
        raise DivergedError(_diverged_message(f"the outputs are not finite ({', '.join(bad)})",
                                              step, last_checkpoint))
    return outputs


def remove_stale_temporaries(workdir: str) -> list[str]:
    """Removes what a run killed while saving leaves behind: `ckpt-N_temp/` folders of
    TensorFlow's checkpoint writer and `.partial-*` files of this module's atomic writes.
    Only one process trains in a work directory, so none of them can still be in use."""
    leftovers = glob.glob(os.path.join(workdir, "checkpoints", "*_temp"))
    leftovers += glob.glob(os.path.join(workdir, "inference", ".partial-*.keras"))
    for path in leftovers:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)
    for folder in (workdir, os.path.join(workdir, "checkpoints"),
                   os.path.join(workdir, "inference")):
        leftovers += remove_stale_partials(folder)
    return leftovers


def _numbered_checkpoints(directory: str) -> list[str]:
    """Checkpoint prefixes in `directory`, newest (highest step) first. Read from the files
    themselves, so that a garbled `checkpoint` state file cannot hide them."""
    found = []
    for entry in os.listdir(directory) if os.path.isdir(directory) else ():
        match = _CHECKPOINT_INDEX.match(entry)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, entry[:-len(".index")])))
    return [prefix for _, prefix in sorted(found, reverse=True)]


def _readable(prefix: str) -> str | None:
    """None when every tensor of the checkpoint reads back, else why not."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as error:  # noqa: BLE001 - any failure to read means unusable
        return _first_line(error)
    return None


def _first_line(error) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def restore_newest_readable(checkpoint, directory: str, log=print) -> str | None:
    """Restores the newest checkpoint in `directory` that reads back whole; returns its prefix
    (None when there is none). Unreadable newer ones (a truncated or garbled file) are said,
    moved into `directory/unreadable/`, and the state file is rewritten without them, so the
    run goes on from the previous checkpoint instead of stopping."""
    candidates = _numbered_checkpoints(directory)
    skipped = []
    restored = None
    for prefix in candidates:
        problem = _readable(prefix)
        if problem is None:
            try:
                checkpoint.restore(prefix).expect_partial()
            except (ValueError, tf.errors.OpError) as error:
                # It reads, so it is not damaged: it belongs to another model. Kept as it is.
                raise TrainingError(f"{prefix} does not fit this model ({_first_line(error)}); "
                                    "use a new --workdir") from None
            restored = prefix
            break
        skipped.append(prefix)
        log(f"skipped checkpoint {os.path.basename(prefix)}: it cannot be read ({problem})")
    if skipped:
        aside = os.path.join(directory, "unreadable")
        os.makedirs(aside, exist_ok=True)
        for prefix in skipped:
            for path in glob.glob(glob.escape(prefix) + ".*"):
                os.replace(path, os.path.join(aside, os.path.basename(path)))
    if skipped or (candidates and _state_file_unreadable(directory)):
        _write_checkpoint_state(directory, [p for p in reversed(candidates) if p not in skipped])
    return restored


def _state_file_unreadable(directory: str) -> bool:
    try:
        return tf.train.get_checkpoint_state(directory) is None
    except Exception:  # noqa: BLE001 - a garbled state file
        return True


def _write_checkpoint_state(directory: str, prefixes: list[str]) -> None:
    """Rewrites the `checkpoint` state file (a text proto naming the latest checkpoint and
    those kept, oldest first) so that tf.train.CheckpointManager goes on from `prefixes`."""
    state = os.path.join(directory, "checkpoint")
    if not prefixes:
        if os.path.exists(state):
            os.remove(state)
        return
    names = [os.path.basename(prefix) for prefix in prefixes]
    # The manager only deletes checkpoints younger than `last_preserved_timestamp`: without
    # the times, the kept ones would stay on disk for good.
    times = [os.path.getmtime(prefix + ".index") for prefix in prefixes]
    lines = [f'model_checkpoint_path: "{names[-1]}"']
    lines += [f'all_model_checkpoint_paths: "{name}"' for name in names]
    lines += [f"all_model_checkpoint_timestamps: {time!r}" for time in times]
    lines.append(f"last_preserved_timestamp: {min(times) - 1.0!r}")
    write_text_atomic(state, "\n".join(lines) + "\n", force=True)


def _warm_start(model, source_workdir: str) -> str:
    """Loads the networks' weights (not the optimizer state or the step counter) from the
    latest checkpoint of another work directory: fine-tuning starts a fresh schedule.

    Keras 3 networks reach the checkpoint through the optimizers, which hold them in
    `_trainable_variables` in a fixed order; they are read from there by position, with every
    shape checked, so the source run must have the same architecture.
    """
    path = tf.train.latest_checkpoint(os.path.join(source_workdir, "checkpoints"))
    if path is None:
        return _warm_start_from_inference(model, source_workdir)
    reader = tf.train.load_checkpoint(path)
    for optimizer_name, variables in (("generator_optimizer", model.generator_variables),
                                      ("discriminator_optimizer",
                                       model.discriminator_variables)):
        for index, variable in enumerate(variables):
            key = f"{optimizer_name}/_trainable_variables/{index}/.ATTRIBUTES/VARIABLE_VALUE"
            if not reader.has_tensor(key):
                raise TrainingError(f"--init-from: {path} lacks {variable.path}: "
                                    "was it trained with the same model settings?")
            value = reader.get_tensor(key)
            if tuple(value.shape) != tuple(variable.shape):
                raise TrainingError(f"--init-from: {variable.path} is {tuple(variable.shape)} "
                                    f"here but {tuple(value.shape)} in {path}")
            variable.assign(value)
    return path


def _warm_start_from_inference(model, folder: str) -> str:
    """Without a checkpoint: E, V and R from inference `.keras` files (a work directory's
    `inference/` or a shipped model folder); the discriminators start fresh."""
    for candidate in (folder, os.path.join(folder, "inference")):
        if os.path.isfile(os.path.join(candidate, "imuge.json")):
            break
    else:
        raise TrainingError(f"--init-from: no checkpoint in {folder}/checkpoints and no "
                            f"inference networks (imuge.json) in {folder}")
    for name in ("encoder", "verifier", "decoder"):
        source = keras.saving.load_model(os.path.join(candidate, f"{name}.keras"),
                                         compile=False)
        try:
            getattr(model, name).set_weights(source.get_weights())
        except ValueError as error:
            raise TrainingError(f"--init-from: {name} does not match {candidate}: {error}") \
                from None
    return candidate


def train(config: Config, images, workdir: str, strategy_name: str = "default",
          verbose: int | str = "auto", log=print, init_from: str | None = None) -> dict:
    """Trains (or resumes) the run in `workdir`; returns a summary dict.

    `images` is a folder of photos or a list of uint8 arrays. `init_from` (another work
    directory) starts a new run from that run's network weights; a run that already has its
    own checkpoint resumes from it instead.
    """
    strategy = select_strategy(strategy_name)
    is_chief, task_id = worker_role(strategy)
    prepare_workdir(workdir, config, write=is_chief)

    train_config = config.train
    # Photos are decoded once, before any model is built, so a data error comes first.
    source = images
    if isinstance(images, (str, os.PathLike)):
        images, read_stats = load_images(find_images(images), config.model.image_size,
                                         config.data.load_size or None)
        if read_stats.skipped:
            log(f"skipped {read_stats.skipped} unreadable file(s): "
                f"{', '.join(read_stats.skipped_files[:5])}")

    if is_chief:
        leftovers = remove_stale_temporaries(workdir)
        if leftovers:
            log(f"removed {len(leftovers)} temporary file(s) left by an interrupted save")
    # Python's, NumPy's and TensorFlow's global generators (weight initialisers, Keras seed
    # generators) start from the config's seed: on one machine a run is repeatable bit for bit.
    keras.utils.set_random_seed(config.data.seed)

    with strategy.scope():
        model = compile_imuge(build_imuge(config), config)
        checkpoint = tf.train.Checkpoint(
            model=model, generator_optimizer=model.optimizer,
            discriminator_optimizer=model.discriminator_optimizer)
        # Non-chief workers must save too (collective variables), but to a private folder.
        checkpoint_dir = os.path.join(workdir, "checkpoints") if is_chief else os.path.join(
            workdir, f".worker-{task_id}-checkpoints")
        restore_path = restore_newest_readable(checkpoint, os.path.join(workdir, "checkpoints"),
                                               log=log if is_chief else (lambda text: None))
        manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir,
                                             max_to_keep=train_config.keep_checkpoints)
        if restore_path is None and init_from:
            log(f"starting from the networks of {_warm_start(model, init_from)}")

    start_step = int(model.optimizer.iterations.numpy())
    total_steps = train_config.epochs * train_config.steps_per_epoch
    if start_step:
        log(f"resuming {workdir} from step {start_step} of {total_steps}")
    log(f"training '{config.name}' on {_describe(source, images)} with "
        f"{strategy.num_replicas_in_sync} replica(s) ({strategy_name} strategy)")
    if start_step >= total_steps:
        log("nothing to do: the run is complete (raise train.epochs to train longer)")
        return {"start_step": start_step, "step": start_step, "history": {}, "model": model}

    # A resumed run draws fresh attacks and crops instead of replaying the first steps.
    seed = config.data.seed + 7919 * start_step

    def dataset_fn(input_context):
        dataset, _ = make_dataset(images, **_dataset_arguments(config), seed=seed,
                                  input_context=input_context)
        return dataset

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    preview_dataset, _ = make_dataset(images, **_dataset_arguments(config, batch_size=min(
        PREVIEW_SAMPLES, train_config.batch_size)), seed=config.data.seed + 1)
    preview_batch = next(iter(preview_dataset))

    callbacks = []
    image_writer = None
    if is_chief:
        logs_dir = os.path.join(workdir, "logs")
        callbacks.append(keras.callbacks.TensorBoard(logs_dir, write_graph=False,
                                                     update_freq="epoch"))
        image_writer = tf.summary.create_file_writer(os.path.join(logs_dir, "images"))
    callbacks.append(WorkdirCallback(manager, config, workdir, preview_batch, is_chief,
                                     image_writer))

    def fit(**arguments):
        try:
            return model.fit(dataset, callbacks=callbacks, verbose=verbose, shuffle=False,
                             **arguments)
        except DivergedError:
            raise
        except Exception:
            # A non-finite weight can fail an op before any loss is logged (an attack that
            # checks its input range, say): said as what it is, not as that op's error.
            step = int(model.optimizer.iterations.numpy())
            check_finite_weights(model, step, manager.latest_checkpoint)
            check_finite_outputs(model, preview_batch, step, manager.latest_checkpoint)
            raise

    history = {}
    steps_per_epoch = train_config.steps_per_epoch
    epoch, done_in_epoch = divmod(start_step, steps_per_epoch)
    if done_in_epoch:
        # Finish the interrupted epoch first, so epochs stay aligned with steps.
        result = fit(initial_epoch=epoch, epochs=epoch + 1,
                     steps_per_epoch=steps_per_epoch - done_in_epoch)
        history.update(result.history)
        epoch += 1
    if epoch < train_config.epochs:
        result = fit(initial_epoch=epoch, epochs=train_config.epochs,
                     steps_per_epoch=steps_per_epoch)
        for key, values in result.history.items():
            history.setdefault(key, []).extend(values)

    if not is_chief:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    final_step = int(model.optimizer.iterations.numpy())
    log(f"done at step {final_step}; inference networks in {os.path.join(workdir, 'inference')}")
    return {"start_step": start_step, "step": final_step, "history": history, "model": model}


def _dataset_arguments(config: Config, batch_size: int | None = None) -> dict:
    data = config.data
    return {
        "image_size": config.model.image_size,
        "batch_size": batch_size or config.train.batch_size,
        "load_size": data.load_size or None,
        "mask_area_range": data.mask_area_range,
        "mask_largest_range": data.mask_largest_range,
        "mask_max_regions": data.mask_max_regions,
        "mask_shapes": data.mask_shapes,
    }


def _describe(source, images) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"{len(images)} photo(s) from {source}"
    return f"{len(images)} photo(s)"
