"""Regenerate Screenshot01.png: RadSAM's own result on the abdominal CT example (a result
figure, not a picture of the Slicer window; replace it with a Slicer screenshot).

One box (the spleen's box on slice 22, grown by 2 px) and the bounds 14..27, LiteMedSAM
on the CPU (about 30 s). Views in radiological convention. Run from the repository root:
``python Resources/screenshot01.py``.
"""
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from RadSAMLib.imageio import image_to_array, read_image, read_label  # noqa: E402
from RadSAMLib.models import load_model  # noqa: E402
from RadSAMLib.prompts import SlicePrompt, box_of_mask  # noqa: E402
from RadSAMLib.session import Session  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "totalseg_example"
K, BOUNDS = 22, (14, 27)

img = read_image(DATA / "ct.nii.gz")
vol, lab = image_to_array(img), read_label(DATA / "seg.nii.gz", img)
box = box_of_mask(lab[K] == 1, margin=2)
session = Session.from_volume(load_model("litemedsam", device="cpu"), vol)
session.segment(K, SlicePrompt(box=box), bounds=BOUNDS)
m = session.mask.astype(bool)

window = lambda a: np.clip((a + 160) / 400, 0, 1)  # noqa: E731
ys, xs = np.nonzero(m[K])
j0, i0 = int(np.median(ys)), int(np.median(xs))
rows, cols = vol.shape[1:]
fig, ax = plt.subplots(1, 3, figsize=(12, 4.2), facecolor="black")


def show(panel, image, mask, title):
    ax[panel].imshow(window(image), cmap="gray")
    rgba = np.zeros(mask.shape + (4,))
    rgba[mask] = (0.2, 0.85, 0.4, 0.5)
    ax[panel].imshow(rgba)
    ax[panel].set_title(title, color="white", fontsize=11)
    ax[panel].axis("off")


# (k, j, i) with RAS axes: flip j (anterior up) and i (patient's right on the left).
show(0, vol[K][::-1, ::-1], m[K][::-1, ::-1], f"prompt slice {K}: one box")
ax[0].add_patch(Rectangle((cols - 1 - box[2], rows - 1 - box[3]), box[2] - box[0], box[3] - box[1],
                          fill=False, ec="yellow", lw=1.5, ls="--"))
show(1, vol[::-1, j0, ::-1], m[::-1, j0, ::-1], f"coronal: slices {BOUNDS[0]}..{BOUNDS[1]} propagated")
show(2, vol[::-1, ::-1, i0], m[::-1, ::-1, i0], "sagittal")
for a in ax[1:]:
    for b in BOUNDS:
        a.axhline(vol.shape[0] - 1 - b, color="orange", lw=0.8, ls=":")
fig.suptitle("RadSAM: one box on one slice + bottom/top slices -> 3D spleen (LiteMedSAM, abdominal CT example)",
             color="white", fontsize=12)
plt.tight_layout()
fig.savefig(Path(__file__).with_name("Screenshot01.png"), dpi=90, facecolor="black")
