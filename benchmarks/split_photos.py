"""Splits a photo folder into train/ and heldout/ folders of symbolic links.

Every `--every`-th file in sorted order is held out (the 8th, 16th, ...; default 8: 64 of
shared/data/photos' 73 photos for training, 9 held out), so the split is the same on every
machine. The shipped demo model was trained on train/ and evaluated on heldout/ of this split:

    python benchmarks/split_photos.py --data PHOTOS --out /tmp/photos
    python train.py --config demo --data /tmp/photos/train --workdir workdirs/demo
    imuge evaluate --model workdirs/demo --data /tmp/photos/heldout --out runs/eval
"""

import argparse
import os

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_photos(folder):
    """Image files under `folder`, recursively (by suffix; no decoding, no TensorFlow)."""
    return [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
            if name.lower().endswith(SUFFIXES)]


def split(paths, every):
    """(train, heldout): every `every`-th path of the sorted list is held out."""
    ordered = sorted(paths)
    heldout = ordered[every - 1::every]
    return [path for path in ordered if path not in set(heldout)], heldout


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of photos")
    parser.add_argument("--out", required=True, help="where train/ and heldout/ are made")
    parser.add_argument("--every", type=int, default=8, help="hold out every N-th file")
    args = parser.parse_args(argv)
    train, heldout = split(find_photos(args.data), args.every)
    for name, paths in (("train", train), ("heldout", heldout)):
        folder = os.path.join(args.out, name)
        os.makedirs(folder, exist_ok=True)
        for path in paths:
            link = os.path.join(folder, os.path.basename(path))
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(path), link)
    print(f"{len(train)} training and {len(heldout)} held-out photos under {args.out}")


if __name__ == "__main__":
    main()
