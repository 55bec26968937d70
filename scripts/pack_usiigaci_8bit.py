"""Copy the Usiigaci training sets into a compact 8-bit copy (for shipping them to a remote GPU machine).

The lent GPU machine accepts at most 64 MiB per call, and the 40 uint16 images take 86 MB. This writes each image
after the same percentile normalisation the model uses (1-99.8 %), quantised to uint8 and deflate-compressed, next to
the untouched label and border PNGs. Training on this copy differs from training on the originals only by 8-bit
quantisation of the normalised intensities (LIVECell images are 8-bit to begin with).

    python scripts/pack_usiigaci_8bit.py ../shared/data/usiigaci_phase .devcarry/usiigaci_phase
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import tifffile


def main(src: Path, dst: Path) -> None:
    total = 0
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and p.name.startswith("set")):
        out = dst / folder.name
        out.mkdir(parents=True, exist_ok=True)
        image = tifffile.imread(folder / "raw.tif").astype(np.float32)
        lo, hi = np.percentile(image, (1.0, 99.8))
        image8 = np.clip((image - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        tifffile.imwrite(out / "raw.tif", image8, compression="zlib")
        for name in ("instances_ids.png", "feature_0.png"):
            if (folder / name).exists():
                shutil.copyfile(folder / name, out / name)
        total += sum(f.stat().st_size for f in out.iterdir())
    for name in ("sets.csv", "LICENSE"):
        shutil.copyfile(src / name, dst / name)
    print(f"wrote {dst}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
