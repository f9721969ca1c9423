"""The peer: LitServe with batching hosting diffusers' VQModel, with LitServe's idiomatic JSON/base64 interface.

POST /predict {"image": "<base64 PNG>"} -> {"image": "<base64 PNG>"} (reconstruction through the codes). Batching:
max batch 8, a few ms batch timeout. Dev-only (litserve and diffusers are dev dependencies). Pixels convert with
`model.pixels`, as in vqserve (diffusers' own arithmetic): the peer differs in its serving stack, not in its maths.

    python -m bench.peers.litserve_vq --checkpoint model/weights/default --port 8100
"""

from __future__ import annotations

import argparse
import base64
import io

import litserve as ls
import numpy as np
import torch
from diffusers import VQModel
from PIL import Image

from model.pixels import from_uint8, to_uint8


class VQReconstructAPI(ls.LitAPI):
    def __init__(self, checkpoint: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.checkpoint = checkpoint

    def setup(self, device: str) -> None:
        self.model = VQModel.from_pretrained(self.checkpoint).eval().to(device)
        self.device = device

    def decode_request(self, request: dict) -> torch.Tensor:
        image = Image.open(io.BytesIO(base64.b64decode(request["image"]))).convert("RGB")
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (H, W, C)
        return from_uint8(pixels.permute(2, 0, 1).contiguous())  # -> (C, H, W) in [-1, 1]

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device)).sample

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, output: torch.Tensor) -> dict:
        pixels = to_uint8(output).permute(1, 2, 0).cpu().numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return {"image": base64.b64encode(buffer.getvalue()).decode()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    args = parser.parse_args()
    api = VQReconstructAPI(args.checkpoint, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="auto", workers_per_device=1, timeout=120)
    server.run(host=args.host, port=args.port, generate_client_file=False, num_api_servers=1)


if __name__ == "__main__":
    main()
