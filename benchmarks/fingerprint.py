"""What the content fingerprint costs per photo: the sha256 of the bytes a pass has already
read (labeler.photos.fetching.fingerprint), beside decoding and preprocessing the same photo.

    .venv/bin/python benchmarks/fingerprint.py [--phones 20] [--repeat 5]

Photos: the full-frame sample as stored (about 426x320, 25 KB) and ``--phones`` 12-megapixel
phone JPEGs made from it (``common.phone_jpegs``, a few MB each). Each is timed in memory: no
read is added, the fingerprint hashes the bytes the decoder gets.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

from common import phone_jpegs, sample_photos

from labeler.model.preprocessing import PreprocessingConfig, preprocess_image
from labeler.photos.decoding import decode_image
from labeler.photos.fetching import fingerprint


def ms_per_photo(fn: Callable[[bytes], object], photos: Sequence[bytes], repeat: int) -> float:
    """Median milliseconds per photo."""
    fn(photos[0])  # warm-up
    times = []
    for _ in range(repeat):
        for data in photos:
            t0 = time.perf_counter()
            fn(data)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    config = PreprocessingConfig()

    def prepare(data: bytes) -> object:
        image = decode_image(data, target_size=config.image_size)
        return preprocess_image(image, config)

    sets = {"sample (stored)": sample_photos(), "12 MP phone JPEGs": phone_jpegs(args.phones)}
    print(f"{'photos':<20} {'KB/photo':>9} {'sha256 ms':>10} {'decode+prep ms':>15} {'share':>7}")
    for name, photos in sets.items():
        kb = statistics.mean(len(p) for p in photos) / 1000
        hashed = ms_per_photo(fingerprint, photos, args.repeat)
        prepared = ms_per_photo(prepare, photos, max(1, args.repeat // 2))
        share = hashed / (hashed + prepared) * 100
        print(f"{name:<20} {kb:>9.0f} {hashed:>10.3f} {prepared:>15.2f} {share:>6.2f}%")


if __name__ == "__main__":
    main()
