"""Train Imuge: `python train.py --config configs/paper.yaml --data DIR --strategy mirrored`.

Thin on purpose: the flags are those of `imuge train` (imuge_tf/cli/) and the loop is
imuge_tf/training.py.
"""

import sys

from imuge_tf.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
