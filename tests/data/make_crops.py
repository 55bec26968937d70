"""Re-create tests/data/usiigaci from ../shared/data/usiigaci_phase (pixel values and label ids unchanged)."""

import shutil
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from conftest import SMALL_SETS, USIIGACI  # noqa: E402


def main() -> None:
    out = HERE / "usiigaci"
    for name, (rows, cols) in SMALL_SETS.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        image = tifffile.imread(USIIGACI / name / "raw.tif")[:rows, :cols]
        tifffile.imwrite(folder / "raw.tif", image, compression="zlib", compressionargs={"level": 9}, predictor=True)
        for png in ("instances_ids.png", "feature_0.png"):
            if (USIIGACI / name / png).exists():
                Image.fromarray(np.asarray(Image.open(USIIGACI / name / png))[:rows, :cols]).save(folder / png,
                                                                                                   optimize=True)
    shutil.copy(USIIGACI / "LICENSE", out / "LICENSE")


if __name__ == "__main__":
    main()
