"""What TF Serving reads besides the SavedModel: the model config, the batching parameters and
the warm-up requests it replays when it loads a version.
"""

from __future__ import annotations

import os

import numpy as np

SERVING_NAME = "imuge"
SERVING_VERSION = 1
SERVING_BASE_PATH = "/models/imuge"  # where the docker command of export/README.md mounts it
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

# TF Serving text protos, written by export_model and kept as copies in the repository's
# export/ folder (a test checks that they agree).
MODELS_CONFIG = f"""\
# TF Serving model config: tensorflow_model_server --model_config_file=models.config
# base_path is the folder that holds the numbered versions (imuge/1/, imuge/2/, ...), as
# mounted by the docker command in export/README.md; the newest version is served.
model_config_list {{
  config {{
    name: "{SERVING_NAME}"
    base_path: "{SERVING_BASE_PATH}"
    model_platform: "tensorflow"
    model_version_policy {{
      latest {{
        num_versions: 1
      }}
    }}
  }}
}}
"""

BATCHING_PARAMETERS = """\
# TF Serving batching: tensorflow_model_server --enable_batching
#   --batching_parameters_file=batching_parameters.txt
# Requests are merged into batches of up to 8 photos (the graph analyses each photo at its
# own size, one after the other, so photos of different sizes batch together). A request
# waits at most 20 ms for others; 2 threads run batches (one per 1-2 CPU cores is a good
# start).
max_batch_size { value: 8 }
batch_timeout_micros { value: 20000 }
max_enqueued_batches { value: 64 }
num_batch_threads { value: 2 }
pad_variable_length_inputs: false
"""


def warmup_image(image_size: int) -> bytes:
    """A small PNG photo (a bundled one, scaled) for warm-up requests and examples."""
    import io

    from PIL import Image

    from imuge_tf.samples import sample_photo

    photo = Image.fromarray(sample_photo("coffee"))
    photo = photo.resize((image_size + image_size // 2, image_size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    return buffer.getvalue()


def write_warmup_requests(version_dir: str, image_size: int) -> str:
    """TF Serving warm-up: PredictionLog records for both signatures, batches of 1 and 2, so
    that the first real requests do not pay for tracing and memory allocation."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    png = warmup_image(image_size)
    working = np.full((1, image_size, image_size + image_size // 2, 3), 0.5, np.float32)
    requests = [
        ("serving_default", np.array([png], dtype=object)),
        ("serving_default", np.array([png, png], dtype=object)),
        ("verify_tensor", working),
    ]
    path = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, value in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=SERVING_NAME, signature_name=signature))
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path
