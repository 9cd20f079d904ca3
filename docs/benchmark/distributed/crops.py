"""The speed-up measurement's dataset: 6 cases of 5 slices cut from the abdominal example
(spleen, right kidney, liver), as an npz pack: ``python docs/benchmark/distributed/crops.py DST``."""
import json
import sys
from pathlib import Path

import numpy as np

from RadSAMLib.imageio import image_to_array, read_image, read_label

src, dst = Path(__file__).resolve().parents[4] / "shared/data/totalseg_example", Path(sys.argv[1])
img = read_image(src / "ct.nii.gz")
volume, label = image_to_array(img), read_label(src / "seg.nii.gz", img)
dst.mkdir(parents=True, exist_ok=True)
for n, k in enumerate(range(0, 30, 5)):
    lab = np.where(np.isin(label[k:k + 5], [1, 2, 5]), label[k:k + 5], 0).astype(np.uint8)
    np.savez_compressed(dst / f"crop{n}.npz", image=volume[k:k + 5].astype(np.int16), label=lab,
                        spacing=np.array([3.0, 3.0, 3.0]))
(dst / "labels.json").write_text(json.dumps({"1": "spleen", "2": "kidney_right", "5": "liver"}))
