"""ImugeModel: the five networks of the paper trained together (sections 3.1-3.5).

One `keras.Model` owns the encoder E, verifier V, decoder R and the discriminators D_C and D_S.
`train_step` runs the generator update (E, V, R on L_G) and then the discriminator update
(D_C, D_S on eq. 9), like the keras-io GAN examples. The training schedule (progressive
recovery stages, the fade-in `alpha`, task decoupling) is a pure function of the step counter,
so a run resumed from a checkpoint is at the same point of the schedule.
"""

import keras
import tensorflow as tf

from imuge_tf import losses
from imuge_tf.attacks.pipeline import AttackPipeline
from imuge_tf.attacks.seeds import uniform_per_sample
from imuge_tf.attacks.tamper import pyramid_fill
from imuge_tf.metrics import masked_psnr, psnr
from imuge_tf.models.hiding import DEFAULT_BLOCK, hidden_prefill
from imuge_tf.models.unet import LEVELS, pool_to_level, upsample

LOSS_NAMES = ("L_G", "L_R", "L_C", "L_cls", "L_DR", "L_DC", "L_D_C", "L_D_S")
QUALITY_NAMES = ("psnr_immunized", "psnr_recovered", "l_psnr")
# Offset added to each sample's seed for the model's own draws (never-immunized, residual
# removal), so they are independent of the attack layer's.
_COMPOSITION_SEED_OFFSET = (7477, 3119)


def training_schedule(step, *, steps_per_epoch, stage_epochs, fade_fraction, decoupling_epochs,
                      progressive_recovery=True, task_decoupling=True):
    """Where training is at `step`: (stage 1..4 int32, alpha float32, decoupled bool).

    Stages 1-3 of progressive recovery last `stage_epochs` each, stage 4 the rest; the
    segments new in a stage fade in over its first `fade_fraction` (section 3.3.2). Task
    decoupling holds for the first `decoupling_epochs` (section 3.3.1).
    """
    epoch = tf.cast(step, tf.float32) / float(steps_per_epoch)
    if progressive_recovery and stage_epochs > 0:
        stage_float = 1.0 + tf.floor(epoch / float(stage_epochs))
        stage = tf.cast(tf.minimum(stage_float, float(LEVELS)), tf.int32)
        into_stage = epoch - (tf.cast(stage, tf.float32) - 1.0) * float(stage_epochs)
        fade_epochs = max(fade_fraction * stage_epochs, 1e-6)
        alpha = tf.clip_by_value(into_stage / fade_epochs, 0.0, 1.0)
        alpha = tf.where(stage == 1, 1.0, alpha)  # stage 1 has nothing to fade from
    else:
        stage, alpha = tf.constant(LEVELS, tf.int32), tf.constant(1.0)
    decoupled = tf.logical_and(tf.constant(task_decoupling), epoch < float(decoupling_epochs))
    return stage, alpha, decoupled


def rectify(attacked, mask, *, prefill, thumbnail_step=0.0, thumbnail_block=DEFAULT_BLOCK):
    """The decoder's input image, shared by training, `Imuge` and the serving export.

    The hole (`mask` = 1) is filled by the push-pull fill (`prefill`) or zeroed; with a hidden
    thumbnail, by the thumbnail wherever it can be read. No gradient flows through the read
    thumbnail (it is a fixed, piecewise constant function of the pixels).
    """
    fill = pyramid_fill(attacked, mask) if prefill else attacked * (1.0 - mask)
    if thumbnail_step <= 0:
        return fill
    return hidden_prefill(attacked, mask, fill, thumbnail_step, thumbnail_block)


def decoded_image(output, rectified, *, prefill):
    """The decoder's image: its output, or with pre-fill the fill plus its correction."""
    if not prefill:
        return output
    return tf.clip_by_value(rectified + output, 0.0, 1.0)


def recover_working_size(decoder, images, masks, *, prefill, thumbnail_step=0.0,
                         thumbnail_block=DEFAULT_BLOCK):
    """Working-size images and masks -> the decoder's recovered images (inference: `Imuge`
    and the serving export share it)."""
    rectified = rectify(images, masks, prefill=prefill, thumbnail_step=thumbnail_step,
                        thumbnail_block=thumbnail_block)
    output = decoder([rectified, masks], training=False)
    return decoded_image(output, rectified, prefill=prefill)


@keras.saving.register_keras_serializable(package="imuge_tf")
class ImugeModel(keras.Model):
    """Encoder + attack layer + verifier + decoder (+ two PatchGAN discriminators).

    Args:
        encoder: U-Net, image -> residual in [-1, 1]; `I_M = clip(I + R)`.
        verifier: U-Net, image -> per-pixel tamper probability.
        decoder: U-Net, [rectified image, mask] -> recovered image; built with
            `progressive=True` when `progressive_recovery` is on.
        container_discriminator, recovery_discriminator: PatchGANs D_C and D_S, or None to
            train without discriminators.
        attacks: keyword arguments of `AttackPipeline` (a flat dict).
        use_verifier: False for the ablation without V (the decoder then sees the attacked
            image with its tampered content and an empty mask).
        classification_weight, adversarial_weight, immunization_weight,
            container_adversarial_weight: alpha, beta, gamma, theta of eqs. 3, 6, 8.
        steps_per_epoch, stage_epochs, fade_fraction, decoupling_epochs,
            progressive_recovery, task_decoupling: the schedule, see `training_schedule`.
        decoder_prefill: R gets the push-pull fill of the hole (`pyramid_fill`) and its
            output (tanh) is a correction added to that fill.
        quantize_immunized: round I_M to 8-bit levels, straight-through.
        immunization_psnr_target: 0 for the paper's flat L_C; else L_C is the hinge
            `mean(relu(target - PSNR(I, I_M)))` in dB.
        never_immunized_probability: share of samples attacked without immunization; their
            verifier target is all ones and they take no part in L_R.
        residual_removal_probability: share of samples whose donor is their own original,
            so donor-based tampers remove the immunization only.
        encoder_classification_weight: 0 for the paper's schedule; else the weight of the
            L_cls gradient that reaches E at every step, decoupled or not.
        thumbnail_step, thumbnail_block: > 0 when E writes the hidden thumbnail
            (`hiding.py`); R's input is then filled from it where it can be read.
    """

    def __init__(self, encoder, verifier, decoder, container_discriminator=None,
                 recovery_discriminator=None, attacks=None, use_verifier=True,
                 classification_weight=0.01, adversarial_weight=0.005, immunization_weight=0.5,
                 container_adversarial_weight=0.5, steps_per_epoch=1000, stage_epochs=20,
                 fade_fraction=0.5, decoupling_epochs=100, progressive_recovery=True,
                 task_decoupling=True, decoder_prefill=False, quantize_immunized=False,
                 immunization_psnr_target=0.0, never_immunized_probability=0.0,
                 residual_removal_probability=0.0, encoder_classification_weight=0.0,
                 thumbnail_step=0.0, thumbnail_block=DEFAULT_BLOCK, **kwargs):
        super().__init__(**kwargs)
        if (container_discriminator is None) != (recovery_discriminator is None):
            raise ValueError("give both discriminators or neither")
        if progressive_recovery and not getattr(decoder, "progressive", False):
            raise ValueError("progressive_recovery needs a decoder built with progressive=True")
        self.encoder = encoder
        self.verifier = verifier
        self.decoder = decoder
        self.container_discriminator = container_discriminator
        self.recovery_discriminator = recovery_discriminator
        self.attack_config = dict(attacks or {})
        self.attacks = AttackPipeline(**self.attack_config)
        self.use_verifier = use_verifier
        self.classification_weight = classification_weight
        self.adversarial_weight = adversarial_weight
        self.immunization_weight = immunization_weight
        self.container_adversarial_weight = container_adversarial_weight
        self.steps_per_epoch = steps_per_epoch
        self.stage_epochs = stage_epochs
        self.fade_fraction = fade_fraction
        self.decoupling_epochs = decoupling_epochs
        self.progressive_recovery = progressive_recovery
        self.task_decoupling = task_decoupling
        self.decoder_prefill = decoder_prefill
        self.quantize_immunized = quantize_immunized
        self.immunization_psnr_target = float(immunization_psnr_target)
        self.never_immunized_probability = float(never_immunized_probability)
        self.residual_removal_probability = float(residual_removal_probability)
        self.encoder_classification_weight = float(encoder_classification_weight)
        self.thumbnail_step = float(thumbnail_step)
        self.thumbnail_block = int(thumbnail_block)
        self.trackers = {name: keras.metrics.Mean(name=name)
                         for name in (*LOSS_NAMES, *QUALITY_NAMES)}
        self.built = True

    @property
    def use_discriminators(self):
        return self.container_discriminator is not None

    @property
    def generator_variables(self):
        networks = [self.encoder, self.decoder] + ([self.verifier] if self.use_verifier else [])
        return [v for network in networks for v in network.trainable_variables]

    @property
    def discriminator_variables(self):
        if not self.use_discriminators:
            return []
        return (self.container_discriminator.trainable_variables
                + self.recovery_discriminator.trainable_variables)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def compile(self, generator_optimizer=None, discriminator_optimizer=None, **kwargs):
        """Sets and builds both optimizers on their exact variables.

        Call inside `strategy.scope()`: an optimizer built lazily inside a distributed step
        fails under MirroredStrategy (docs/design.md, known pitfalls).
        """
        generator_optimizer = generator_optimizer or keras.optimizers.Adam(2e-4)
        discriminator_optimizer = discriminator_optimizer or keras.optimizers.Adam(2e-4)
        # The generator optimizer is `self.optimizer`, so Keras does not make one of its own
        # and its `iterations` is the step counter of the schedule.
        super().compile(optimizer=generator_optimizer, **kwargs)
        self.discriminator_optimizer = discriminator_optimizer
        generator_optimizer.build(self.generator_variables)
        if self.use_discriminators:
            discriminator_optimizer.build(self.discriminator_variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 reduces one distributed batch over replicas to build compiled losses and
        # metrics before `fit`; under MultiWorkerMirroredStrategy that collective reduce fails
        # on a dict batch ("Attempt to convert a value ({'image': PerReplica..."). Nothing
        # needs it here: the networks are built in __init__, both optimizers in compile(), and
        # there are no compiled losses or metrics.
        return

    def call(self, images, training=False):
        """The immunized image of `images` (inference path of the encoder)."""
        return self.immunize(images, training=training)

    def immunize(self, images, training=False):
        residual = self.encoder(images, training=training)
        immunized = tf.clip_by_value(images + residual, 0.0, 1.0)
        if self.quantize_immunized:
            # The photo is saved with 8 bits: train on what the verifier will really get.
            immunized = immunized + tf.stop_gradient(
                tf.round(immunized * 255.0) / 255.0 - immunized)
        return immunized

    def _composition(self, batch):
        """Per sample: (never immunized [B] bool, donor replaced by the original [B] bool)."""
        draws = uniform_per_sample(
            batch["seed"] + tf.constant([_COMPOSITION_SEED_OFFSET], tf.int32), shape=[2])
        return (draws[:, 0] < self.never_immunized_probability,
                draws[:, 1] < self.residual_removal_probability)

    def schedule(self, step=None):
        """(stage, alpha, decoupled) at `step` (default: the optimizer's step counter)."""
        if step is None:
            step = self.optimizer.iterations
        return training_schedule(
            step, steps_per_epoch=self.steps_per_epoch, stage_epochs=self.stage_epochs,
            fade_fraction=self.fade_fraction, decoupling_epochs=self.decoupling_epochs,
            progressive_recovery=self.progressive_recovery, task_decoupling=self.task_decoupling)

    def forward(self, batch, stage, alpha, decoupled, training=False):
        """The whole data flow of Fig. 2 (Fig. 3 while decoupled) on one batch; a dict."""
        images = batch["image"]
        immunized = self.immunize(images, training=training)
        never_immunized, own_donor = self._composition(batch)
        per_sample = lambda flags: tf.reshape(flags, [-1, 1, 1, 1])  # noqa: E731
        attack_input = tf.where(per_sample(never_immunized), images, immunized)
        donors = tf.where(per_sample(own_donor), images, batch["donor"])
        attacked_out = self.attacks(attack_input, donors, batch["mask"], batch["seed"])
        attacked = attacked_out["attacked"]
        # A never-immunized photo is wholly "not immunized": every pixel is flagged.
        true_mask = tf.where(per_sample(never_immunized), tf.ones_like(attacked_out["mask"]),
                             attacked_out["mask"])

        if self.use_verifier:
            verifier_input = self._verifier_input(attacked, decoupled)
            predicted_mask = self.verifier(verifier_input, training=training)
            decoder_mask = tf.where(decoupled, true_mask, predicted_mask)
        else:
            predicted_mask = tf.zeros_like(true_mask)
            decoder_mask = predicted_mask
        rectified = self.rectify(attacked, decoder_mask)
        recovered, reference = self._recover(images, rectified, decoder_mask, stage, alpha,
                                             training)
        return {
            "image": images,
            "immunized": immunized,
            "attacked": attacked,
            "tampered": attacked_out["tampered"],
            "true_mask": true_mask,
            "predicted_mask": predicted_mask,
            "rectified": rectified,
            "recovered": recovered,
            "reference": reference,
            "never_immunized": never_immunized,
        }

    def rectify(self, attacked, mask):
        """R's input image: the hole filled (hidden thumbnail, push-pull fill) or zeroed."""
        return rectify(attacked, mask, prefill=self.decoder_prefill,
                       thumbnail_step=self.thumbnail_step, thumbnail_block=self.thumbnail_block)

    def _classification_weight(self, decoupled):
        """L_cls's weight in L_G: while decoupled it trains V alone (section 3.5), at full
        weight with no path into E/R; after, the paper's alpha."""
        return tf.where(decoupled, 1.0, self.classification_weight)

    def _verifier_input(self, attacked, decoupled):
        """The attacked image as V sees it, with the share of L_cls's gradient that reaches E.

        Paper: while decoupled, V learns from L_cls alone (no gradient into E). With
        `encoder_classification_weight` w, E always gets w times the L_cls gradient: the input
        keeps its value and its gradient is rescaled from V's loss weight to w.
        """
        if self.encoder_classification_weight <= 0:
            return tf.cond(decoupled, lambda: tf.stop_gradient(attacked), lambda: attacked)
        scale = (self.encoder_classification_weight
                 / tf.maximum(self._classification_weight(decoupled), 1e-8))
        frozen = tf.stop_gradient(attacked)
        return frozen + scale * (attacked - frozen)

    def _recover(self, images, rectified, mask, stage, alpha, training):
        """Runs the decoder at the current progressive stage; returns (I_R, its target).

        Both come back at full size: stage s recovers at 1/2^(4-s) resolution, so its target is
        the original brought down to that resolution and back up the same way.
        """
        if not self.progressive_recovery:
            output = self.decoder([rectified, mask], training=training)
            return self._decoded_image(output, rectified), images

        def branch(stage_number):
            def run():
                output = self.decoder.progressive_call(rectified, mask, stage=stage_number,
                                                       alpha=alpha, training=training)
                level = LEVELS - stage_number

                def at_stage(x):
                    return upsample(pool_to_level(x, level), 2**level)

                return self._decoded_image(output, at_stage(rectified)), at_stage(images)
            return run

        return tf.switch_case(stage - 1, [branch(s) for s in range(1, LEVELS + 1)])

    def _decoded_image(self, output, prefilled):
        return decoded_image(output, prefilled, prefill=self.decoder_prefill)

    def _generator_losses(self, outputs, decoupled):
        images, immunized = outputs["image"], outputs["immunized"]
        true_mask = outputs["true_mask"]
        recoverable = 1.0 - tf.cast(outputs["never_immunized"], tf.float32)
        if self.immunization_psnr_target > 0:
            fidelity = losses.immunization_hinge_loss(images, immunized,
                                                      self.immunization_psnr_target)
        else:
            fidelity = losses.immunization_loss(images, immunized)
        terms = {
            "L_R": losses.recovery_loss(outputs["reference"], outputs["recovered"], true_mask,
                                        sample_weight=recoverable),
            "L_C": fidelity,
            "L_cls": losses.tamper_classification_loss(outputs["predicted_mask"], true_mask)
            if self.use_verifier else tf.constant(0.0),
        }
        if self.use_discriminators:
            terms["L_DR"] = losses.generator_adversarial_loss(
                self.recovery_discriminator(outputs["recovered"], training=False))
            terms["L_DC"] = losses.generator_adversarial_loss(
                self.container_discriminator(immunized, training=False))
        else:
            terms["L_DR"] = terms["L_DC"] = tf.constant(0.0)
        terms["L_G"] = losses.generator_loss(
            terms["L_R"], terms["L_C"], terms["L_cls"], terms["L_DR"], terms["L_DC"],
            classification_weight=self._classification_weight(decoupled),
            adversarial_weight=self.adversarial_weight if self.use_discriminators else 0.0,
            immunization_weight=self.immunization_weight,
            container_adversarial_weight=self.container_adversarial_weight)
        return terms

    def _generator_step(self, batch, stage, alpha, decoupled):
        variables = self.generator_variables
        with tf.GradientTape() as tape:
            outputs = self.forward(batch, stage, alpha, decoupled, training=True)
            terms = self._generator_losses(outputs, decoupled)
            scaled = terms["L_G"] / tf.distribute.get_strategy().num_replicas_in_sync
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return outputs, terms

    def _discriminator_losses(self, outputs, training):
        """Eq. 9 for D_C (originals vs immunized) and D_S (originals vs recovered)."""
        container = losses.discriminator_loss(
            self.container_discriminator(outputs["image"], training=training),
            self.container_discriminator(tf.stop_gradient(outputs["immunized"]),
                                         training=training))
        recovery = losses.discriminator_loss(
            self.recovery_discriminator(outputs["reference"], training=training),
            self.recovery_discriminator(tf.stop_gradient(outputs["recovered"]),
                                        training=training))
        return {"L_D_C": container, "L_D_S": recovery}

    def _discriminator_step(self, outputs):
        variables = self.discriminator_variables
        with tf.GradientTape() as tape:
            terms = self._discriminator_losses(outputs, training=True)
            scaled = (terms["L_D_C"] + terms["L_D_S"]) / (
                tf.distribute.get_strategy().num_replicas_in_sync)
        gradients = tape.gradient(scaled, variables)
        self.discriminator_optimizer.apply_gradients(zip(gradients, variables))
        return terms

    def train_step(self, batch):
        batch = self._with_replica_seeds(batch)
        stage, alpha, decoupled = self.schedule()
        outputs, terms = self._generator_step(batch, stage, alpha, decoupled)
        if self.use_discriminators:
            terms.update(self._discriminator_step(outputs))
        return self._update_metrics(outputs, terms, stage, alpha, decoupled)

    @staticmethod
    def _with_replica_seeds(batch):
        """Folds the replica id into the per-sample attack seeds.

        Samples already carry distinct seeds from the input pipeline; folding the replica id
        in as well guarantees that replicas never draw the same attacks, even if two replicas
        were ever fed the same elements (docs/design.md, known pitfalls).
        """
        replica = tf.distribute.get_replica_context()
        if replica is None:
            return batch
        replica_id = tf.cast(replica.replica_id_in_sync_group, tf.int32)
        seeds = batch["seed"] + tf.stack([replica_id * 7919, replica_id * 104729])
        return {**batch, "seed": seeds}

    def _update_metrics(self, outputs, terms, stage, alpha, decoupled):
        for name in LOSS_NAMES:
            if name in terms:
                self.trackers[name].update_state(terms[name])
        images = outputs["image"]
        self.trackers["psnr_immunized"].update_state(psnr(images, outputs["immunized"]))
        self.trackers["psnr_recovered"].update_state(psnr(outputs["reference"],
                                                          outputs["recovered"]))
        local, has_area = masked_psnr(outputs["reference"], outputs["recovered"],
                                      outputs["true_mask"])
        recoverable = 1.0 - tf.cast(outputs["never_immunized"], tf.float32)
        self.trackers["l_psnr"].update_state(local, sample_weight=has_area * recoverable)
        logs = {name: tracker.result() for name, tracker in self.trackers.items()}
        logs.update(stage=tf.cast(stage, tf.float32), alpha=alpha,
                    decoupled=tf.cast(decoupled, tf.float32))
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3.15 averages the logs over workers with strategy.reduce(..., axis=0),
            # which fails on scalars: give each value a batch axis of one.
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def get_config(self):
        # Flat arguments, but for the networks: Keras serializes each (registered, with its
        # own flat config) so that a `.keras` file rebuilds them without the factory.
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            encoder=serialize(self.encoder),
            verifier=serialize(self.verifier),
            decoder=serialize(self.decoder),
            container_discriminator=serialize(self.container_discriminator),
            recovery_discriminator=serialize(self.recovery_discriminator),
            # The attack layer's own keyword arguments, as plain JSON values.
            attacks=self.attacks.get_config(),
            use_verifier=self.use_verifier,
            classification_weight=self.classification_weight,
            adversarial_weight=self.adversarial_weight,
            immunization_weight=self.immunization_weight,
            container_adversarial_weight=self.container_adversarial_weight,
            steps_per_epoch=self.steps_per_epoch,
            stage_epochs=self.stage_epochs,
            fade_fraction=self.fade_fraction,
            decoupling_epochs=self.decoupling_epochs,
            progressive_recovery=self.progressive_recovery,
            task_decoupling=self.task_decoupling,
            decoder_prefill=self.decoder_prefill,
            quantize_immunized=self.quantize_immunized,
            immunization_psnr_target=self.immunization_psnr_target,
            never_immunized_probability=self.never_immunized_probability,
            residual_removal_probability=self.residual_removal_probability,
            encoder_classification_weight=self.encoder_classification_weight,
            thumbnail_step=self.thumbnail_step,
            thumbnail_block=self.thumbnail_block,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "verifier", "decoder", "container_discriminator",
                    "recovery_discriminator"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    def get_compile_config(self):
        # compile() takes two optimizers instead of Keras' (optimizer, loss, metrics): both
        # are stored, so that a loaded `.keras` file is compiled, optimizer state included.
        if not self.compiled:
            return {}
        serialize = keras.saving.serialize_keras_object
        return {"generator_optimizer": serialize(self.optimizer),
                "discriminator_optimizer": serialize(self.discriminator_optimizer),
                "jit_compile": self.jit_compile}

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("generator_optimizer", "discriminator_optimizer"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        self.compile(**config)
