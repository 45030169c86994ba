"""`python -m imuge_tf.cli ...` is `imuge ...`."""

import sys

from imuge_tf.cli.runner import main

sys.exit(main())
