"""Per-sample stateless randomness for the attack layer and the model's own per-sample draws.

Every sample of a batch carries an int [2] seed; everything random about it is drawn from that
seed with ``tf.random.stateless_*`` ops, one draw per sample through ``tf.map_fn``. So a batch
traces once in ``tf.function``, samples (and replicas, given different seeds) draw their own,
and the same seeds give the same draws.
"""

import tensorflow as tf

__all__ = ["normal_per_sample", "split_seeds", "uniform_per_sample"]


def split_seeds(seeds, count):
    """Derives `count` independent seeds from each per-sample seed.

    Args:
        seeds: int [B, 2] per-sample seeds.
        count: Python int.

    Returns:
        int32 [count, B, 2]: element i is a fresh [B, 2] seed tensor for the i-th use.
    """
    seeds = tf.cast(tf.convert_to_tensor(seeds), tf.int32)
    split = tf.map_fn(
        lambda seed: tf.random.experimental.stateless_split(seed, count),
        seeds,
        fn_output_signature=tf.TensorSpec([count, 2], tf.int32),
    )
    return tf.transpose(split, [1, 0, 2])


def uniform_per_sample(seeds, shape=(), minval=0.0, maxval=1.0, dtype=tf.float32):
    """One stateless uniform draw of `shape` per sample: a [B, *shape] tensor in
    [minval, maxval) (integers need both bounds)."""
    seeds = tf.cast(tf.convert_to_tensor(seeds), tf.int32)
    static_shape = tf.TensorShape(shape) if not tf.is_tensor(shape) else tf.TensorShape(None)
    return tf.map_fn(
        lambda seed: tf.random.stateless_uniform(
            shape, seed, minval=minval, maxval=maxval, dtype=dtype
        ),
        seeds,
        fn_output_signature=tf.TensorSpec(static_shape, dtype),
    )


def normal_per_sample(seeds, shape):
    """One stateless standard normal draw of `shape` per sample: a [B, *shape] tensor."""
    seeds = tf.cast(tf.convert_to_tensor(seeds), tf.int32)
    return tf.map_fn(
        lambda seed: tf.random.stateless_normal(shape, seed),
        seeds,
        fn_output_signature=tf.TensorSpec(None, tf.float32),
    )
