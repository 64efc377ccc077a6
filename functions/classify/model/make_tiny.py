"""Make the tiny synthetic TFLite models used by the classify unit tests.

Runs in the same throwaway conversion venv as convert.py (see its docstring for how to
create /tmp/convenv); not part of `make setup` / `make test`.

    /tmp/convenv/bin/python functions/classify/model/make_tiny.py

Writes, under tests/data/:
    tiny_f32.tflite   input float32 [1,4,4,3] (RGB, 0..255) -> output float32 [1,3]
    tiny_u8.tflite    input uint8   [1,4,4,3] (RGB, 0..255) -> output float32 [1,3]
    tiny_labels.txt   red, green, blue

Both models compute softmax(GAIN * mean_rgb / 255): the per-channel means of the image,
scaled to 0..1, through a fixed linear layer (GAIN times identity, zero bias). So a pure
red / green / blue image gives class 0 / 1 / 2 as top-1 (score ~0.99991), and any grey
image gives 1/3 for every class. No randomness, no training.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[2] / "tests" / "data"
LABELS = ["red", "green", "blue"]
SIZE = 4
GAIN = 10.0


class MeanColourClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, len(LABELS))
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(3) * GAIN)
            self.fc.bias.zero_()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(torch.float32)            # a no-op for float input, a CAST for uint8
        means = x.mean(dim=(1, 2)) / 255.0     # [N,H,W,3] -> [N,3]
        return torch.softmax(self.fc(means), dim=-1)


def expected(image: torch.Tensor) -> torch.Tensor:
    """Reference result, computed without the module, for the self-check."""
    means = image.to(torch.float64).mean(dim=(1, 2)) / 255.0
    return torch.softmax(GAIN * means, dim=-1)


def solid(rgb, dtype):
    return torch.tensor(rgb, dtype=dtype).reshape(1, 1, 1, 3).expand(1, SIZE, SIZE, 3).contiguous()


def build(dtype, path: Path) -> None:
    import litert_torch
    import numpy as np

    model = MeanColourClassifier().eval()
    if dtype == torch.uint8:
        sample = torch.randint(0, 256, (1, SIZE, SIZE, 3), dtype=torch.uint8)
    else:
        sample = torch.rand(1, SIZE, SIZE, 3) * 255.0
    with torch.no_grad():
        edge = litert_torch.convert(model, (sample,))
    edge.export(str(path))

    for cls, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        x = solid(rgb, dtype)
        got = np.asarray(edge(x.numpy()))
        if int(got.argmax()) != cls or not np.allclose(got, expected(x).numpy(), atol=1e-5):
            raise SystemExit(f"{path.name}: wrong result {got} for {LABELS[cls]}")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tiny_labels.txt").write_text("".join(f"{s}\n" for s in LABELS), encoding="utf-8")
    build(torch.float32, OUT / "tiny_f32.tflite")
    build(torch.uint8, OUT / "tiny_u8.tflite")
    return 0


if __name__ == "__main__":
    sys.exit(main())
