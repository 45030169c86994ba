"""imuge-tf: immunized images that reveal and undo tampering (Imuge, ACM MM 2021)."""

from imuge_tf.config import load_config
from imuge_tf.inference import Imuge, ModelNotFoundError, VerifyResult

__all__ = ["Imuge", "ModelNotFoundError", "VerifyResult", "load_config"]

__version__ = "0.1.0"
