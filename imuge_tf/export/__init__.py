"""Deployment exports: a TFLite (LiteRT) camera model and encoder, a TF Serving verifier + decoder.

`export_model(imuge, out_dir)` writes the layout that export/README.md documents:

    out_dir/
      manifest.json                what was exported, from which model, and the parity checks
      camera/                      only with camera_size (width, height):
        camera_WxH.tflite          the whole immunization, uint8 photo in and out
        saved_model/               the same graph as a SavedModel
      encoder/
        saved_model/               the encoder as a SavedModel (signature serving_default)
        encoder_fp32.tflite        the encoder for LiteRT, builtin ops only
        encoder_fp16.tflite        float16 weights
        encoder_dynamic.tflite     dynamic-range int8 weights, only when its gate holds
        encoder_int8.tflite        full int8, only when its gate holds
      serving/
        models.config              TF Serving model config (text proto)
        batching_parameters.txt    TF Serving batching parameters (text proto)
        imuge/1/                   the verifier + decoder SavedModel, with
                                   assets.extra/tf_serving_warmup_requests

The encoder's input is the photo resized to S x S (bilinear with antialiasing), 1 x S x S x 3
float32 in [0, 1]; its output is the residual at that size, 1 x S x S x 3 float32 in [-1, 1].
The camera model is the whole of `Imuge.immunize` on a full-size photo in one graph; a camera
that runs the encoder alone upsamples its residual to the photo's full resolution and composes
the rest itself.

The serving SavedModel does everything `Imuge.verify` and `Imuge.recover` do, in stock TF ops
(no py_function), so that TF Serving can run it: decoding (after reading the declared size
from the image's header), `InferencePipeline.analyse` (the keyed block mark's geometry search
and verdict, or the learned verifier where no mark is found), `recover`, and PNG encoding of
the mask and the recovered photo at the received size.

The modules, by responsibility:

- `conversion`: SavedModels of the encoder and the camera model, TFLite conversion with
  builtin ops only, representative images for full int8, and the TFLite runners;
- `parity`: the gates a converted model must pass against the Keras model it replaces;
- `serving_graph`: the serving SavedModel's graph around `InferencePipeline`;
- `serving_files`: TF Serving's model config, batching parameters and warm-up records;
- `inspection`: the op types in a SavedModel or TFLite model (the private APIs it needs are
  kept there);
- `exporter`: `export_model`, which runs the rest and writes the folder as a unit.
"""

from imuge_tf.export.conversion import (
    CALIBRATION_SAMPLES,
    ENCODER_VARIANTS,
    REQUIRED_VARIANTS,
    TFLiteCamera,
    TFLiteEncoder,
    convert_saved_model,
    parse_camera_size,
    representative_images,
    save_camera_model,
    save_encoder,
)
from imuge_tf.export.errors import ExportError
from imuge_tf.export.exporter import MANIFEST, check_out_dir, encoder_variants, export_model
from imuge_tf.export.inspection import graph_ops, nonstock_ops, tflite_ops
from imuge_tf.export.parity import (
    CAMERA_MAX_LEVELS,
    FP32_MAX_LEVELS,
    QUANTIZED_MAX_LEVELS,
    QUANTIZED_RMS_SHARE,
    camera_parity,
    residual_error,
    residual_gate,
)
from imuge_tf.export.serving_files import (
    BATCHING_PARAMETERS,
    MODELS_CONFIG,
    SERVING_BASE_PATH,
    SERVING_NAME,
    SERVING_VERSION,
    WARMUP_FILE,
    warmup_image,
    write_warmup_requests,
)
from imuge_tf.export.serving_graph import (
    GEOMETRY_OUTPUTS,
    _ServingGraph,  # the serving graph's pieces, for tests and the server benchmark
    save_serving_model,
)

__all__ = [
    "BATCHING_PARAMETERS", "CALIBRATION_SAMPLES", "CAMERA_MAX_LEVELS", "ENCODER_VARIANTS",
    "FP32_MAX_LEVELS", "GEOMETRY_OUTPUTS", "MANIFEST", "MODELS_CONFIG", "QUANTIZED_MAX_LEVELS",
    "QUANTIZED_RMS_SHARE", "REQUIRED_VARIANTS", "SERVING_BASE_PATH", "SERVING_NAME",
    "SERVING_VERSION", "WARMUP_FILE", "ExportError", "TFLiteCamera", "TFLiteEncoder",
    "_ServingGraph", "camera_parity", "check_out_dir", "convert_saved_model",
    "encoder_variants", "export_model", "graph_ops", "nonstock_ops", "parse_camera_size",
    "representative_images", "residual_error", "residual_gate", "save_camera_model",
    "save_encoder", "save_serving_model", "tflite_ops", "warmup_image",
    "write_warmup_requests",
]
