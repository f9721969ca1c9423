"""The `vqserve` command line (also `python -m service.cli`): serve, encode, decode, reconstruct, generate, info,
convert.

Every command but `serve` runs against a server (`--url`, through `service.client`) or in-process without one
(`--model-path`: the model is loaded here into the server's own `Engine`, and inputs are read and checked by
the same code the server uses, so both ways give the same indices). Work on many files runs concurrently with a
progress bar on stderr; results go to files, summaries to stdout. `convert` runs here, on files only.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import httpx
import numpy as np
from tqdm import tqdm

from .client import DEFAULT_URL, Client, Reconstruction, Samples, VQServeError, to_pil

if TYPE_CHECKING:
    from .settings import DType

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
T = TypeVar("T")
R = TypeVar("R")


class Backend(Protocol):
    """Where the model runs: a remote server or this process."""

    def encode(self, data: bytes) -> np.ndarray: ...  # image file bytes -> (h, w) int32

    def decode(self, indices: np.ndarray) -> np.ndarray: ...  # (B, h, w) -> (B, H, W, C) uint8

    def reconstruct(self, data: bytes) -> Reconstruction: ...

    def generate(self, draw: Draw) -> Samples: ...  # one sample (`draw.first_sample` of `draw.seed`)

    def info(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Draw:
    """One sample of `vqserve generate`: sample `first_sample` of `seed`, as /generate draws it."""

    first_sample: int
    seed: int
    label: int | None
    temperature: float
    top_k: int | None

    def body(self) -> dict[str, Any]:
        fields = {"label": self.label, "top_k": self.top_k}
        chosen = {k: v for k, v in fields.items() if v is not None}
        return {"first_sample": self.first_sample, "seed": self.seed, "temperature": self.temperature, **chosen}


class RemoteBackend:
    def __init__(self, client: Client, model: str | None) -> None:
        self.client = client
        self.model = model

    def encode(self, data: bytes) -> np.ndarray:
        result = self.client.encode(data, model=self.model)
        assert not isinstance(result, list)
        return result.indices

    def decode(self, indices: np.ndarray) -> np.ndarray:
        return self.client.decode(indices, model=self.model)

    def reconstruct(self, data: bytes) -> Reconstruction:
        return self.client.reconstruct(data, model=self.model)

    def generate(self, draw: Draw) -> Samples:
        return self.client.generate(
            label=draw.label,
            temperature=draw.temperature,
            top_k=draw.top_k,
            seed=draw.seed,
            first_sample=draw.first_sample,
            model=self.model,
        )

    def info(self) -> list[dict[str, Any]]:
        return self.client.models()


class LocalBackend:
    """The model in this process, through the server's own engine, input checks and reply helpers."""

    def __init__(self, path: Path, subfolder: str | None, device: str, decoder_dtype: DType = "auto") -> None:
        from .engine import Engine
        from .settings import ModelSpec, Settings

        settings = Settings(device=device, decoder_dtype=decoder_dtype, warmup=False, models=[], model_path=None)
        self.engine = Engine(ModelSpec(str(path), path, subfolder), settings)
        self.facts = self.engine.load()

    def _image(self, data: bytes) -> Any:
        from .inputs import prepare_images

        (image,) = prepare_images([data], self.facts, max_pixels=2**31)
        return image

    def encode(self, data: bytes) -> np.ndarray:
        from .ops import Op

        (encoded,) = self.engine.run(Op.ENCODE, [self._image(data).tensor])
        return np.asarray(encoded.indices.numpy(), dtype=np.int32)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        from .inputs import decode_from_array

        decoded = decode_from_array(np.asarray(indices, dtype=np.int64), self.facts)
        return np.stack(self.engine.run(decoded.op, decoded.tensors))

    def reconstruct(self, data: bytes) -> Reconstruction:
        from model.pixels import psnr

        from .ops import Op

        image = self._image(data)
        (output,) = self.engine.run(Op.RECONSTRUCT, [image.tensor])
        height, width = image.size
        cropped = output[:height, :width]
        return Reconstruction(cropped, psnr(image.original, cropped))

    def generate(self, draw: Draw) -> Samples:
        import orjson

        from .sampling import draw_in_process, generation_job

        job = generation_job(orjson.dumps(draw.body()), self.facts, max_images=1)
        sampled = draw_in_process(self.engine, job)
        indices = np.stack([grid.numpy() for grid in sampled.grids]).astype(np.int32)
        return Samples(indices, np.stack(sampled.images), sampled.draw.seed)

    def info(self) -> list[dict[str, Any]]:
        from .schemas import ModelInfo

        return [ModelInfo.of(self.facts).model_dump()]


# files
def find_images(paths: Iterable[Path]) -> list[tuple[str, Path]]:
    """(key, path) per image: files as given (key: file name), folders recursively (key: relative path)."""
    found: list[tuple[str, Path]] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((file.relative_to(path).as_posix(), file))
        elif path.is_file():
            found.append((path.name, path))
        else:
            raise SystemExit(f"error: {path} is neither a file nor a folder")
    keys = [key for key, _ in found]
    if len(set(keys)) != len(keys):
        raise SystemExit(
            "error: two inputs map to the same name; pass one folder instead of files from several",
        )
    return found


def run_concurrently(fn: Callable[[T], R], items: list[T], workers: int, desc: str) -> Iterator[tuple[T, R]]:
    """(item, fn(item)) in completion order, with a progress bar on stderr."""
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(items), desc=desc, unit="img", file=sys.stderr, disable=None) as bar,
    ):
        futures = {pool.submit(fn, item): item for item in items}
        for future in as_completed(futures):
            bar.update(1)
            yield futures[future], future.result()


def save_png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(pixels).save(path, "PNG")


def load_indices(path: Path) -> dict[str, np.ndarray]:
    """An .npz (key -> (h, w)) or .npy ((h, w) or (B, h, w)) of indices -> name -> (h, w)."""
    if path.suffix == ".npz":
        with np.load(path) as archive:
            return {key: archive[key] for key in archive.files}
    array = np.load(path)
    if array.ndim == 2:
        return {path.stem: array}
    if array.ndim != 3:
        raise SystemExit(f"error: {path} holds shape {array.shape}; expected (h, w) or (B, h, w) indices")
    return {f"{i:05d}": a for i, a in enumerate(array)}


# commands
def cmd_encode(args: argparse.Namespace, backend: Backend) -> int:
    images = find_images(args.inputs)
    if not images:
        raise SystemExit("error: no images found")
    results = {
        key: indices
        for (key, _), indices in run_concurrently(
            lambda item: backend.encode(item[1].read_bytes()), images, args.concurrency, "encode"
        )
    }
    ordered = {key: results[key] for key, _ in images}
    if args.output.suffix == ".npy":
        if len({a.shape for a in ordered.values()}) != 1:
            raise SystemExit("error: index maps differ in shape; write an .npz instead of an .npy")
        np.save(args.output, np.stack(list(ordered.values())))
    else:
        np.savez_compressed(args.output, **ordered)  # type: ignore[arg-type]
    print(f"encoded {len(ordered)} image(s) -> {args.output}")  # noqa: T201
    return 0


def cmd_decode(args: argparse.Namespace, backend: Backend) -> int:
    maps = list(load_indices(args.indices).items())

    def one(item: tuple[str, np.ndarray]) -> np.ndarray:
        return backend.decode(item[1][None])[0]

    written = 0
    for (key, _), pixels in run_concurrently(one, maps, args.concurrency, "decode"):
        save_png(pixels, args.output / Path(key).with_suffix(".png"))
        written += 1
    print(f"decoded {written} image(s) -> {args.output}")  # noqa: T201
    return 0


def cmd_reconstruct(args: argparse.Namespace, backend: Backend) -> int:
    images = find_images([args.input])
    if not images:
        raise SystemExit("error: no images found")
    scores: dict[str, float] = {}
    for (key, _), result in run_concurrently(
        lambda item: backend.reconstruct(item[1].read_bytes()), images, args.concurrency, "reconstruct"
    ):
        save_png(result.image, args.output / Path(key).with_suffix(".png"))
        scores[key] = result.psnr
    args.output.mkdir(parents=True, exist_ok=True)
    with (args.output / "psnr.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "psnr_db"])
        for key, _ in images:
            writer.writerow([key, f"{scores[key]:.4f}"])
            print(f"{key}\t{scores[key]:.2f} dB")  # noqa: T201
    finite = [v for v in scores.values() if math.isfinite(v)]
    mean = sum(finite) / len(finite) if finite else math.inf
    print(  # noqa: T201
        f"summary: {len(scores)} image(s), PSNR mean {mean:.2f} dB, min {min(scores.values()):.2f} dB, "
        f"max {max(scores.values()):.2f} dB"
    )
    return 0


def cmd_generate(args: argparse.Namespace, backend: Backend) -> int:
    if args.count < 1:
        raise SystemExit("error: -n/--count must be at least 1")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    draws = [Draw(b, seed, args.label, args.temperature, args.top_k) for b in range(args.count)]
    grids: dict[int, np.ndarray] = {}
    for draw, samples in run_concurrently(backend.generate, draws, args.concurrency, "generate"):
        save_png(samples.images[0], args.output / f"{draw.first_sample:05d}.png")
        grids[draw.first_sample] = samples.indices[0]
    np.save(args.output / "indices.npy", np.stack([grids[b] for b in range(args.count)]))
    label = "unconditional" if args.label is None else f"label {args.label}"
    print(  # noqa: T201
        f"generated {args.count} sample(s) ({label}, seed {seed}) -> {args.output} (PNGs and indices.npy)"
    )
    return 0


def cmd_info(args: argparse.Namespace, backend: Backend) -> int:
    print(json.dumps(backend.info(), indent=2))  # noqa: T201
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """A taming-transformers / latent-diffusion `.ckpt` + `.yaml` -> a diffusers-format directory."""
    from model import CheckpointError, ConfigError, VQModel

    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"error: {out} exists and is not an empty directory", file=sys.stderr)  # noqa: T201
        return 2
    try:
        model = VQModel.from_taming(args.checkpoint, args.config)
    except (CheckpointError, ConfigError, OSError, ValueError) as exc:
        print(f"error: cannot convert {args.checkpoint} with {args.config}: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    model.save_pretrained(out)
    config = model.config
    side = config.sample_size // config.downsample_factor
    print(  # noqa: T201
        f"converted {args.checkpoint} -> {out}: {len(config.block_out_channels)} levels "
        f"(downsample factor {config.downsample_factor}), {config.num_vq_embeddings} codes of width "
        f"{config.embed_dim}; a {config.sample_size}x{config.sample_size} image encodes to {side}x{side} indices, "
        f"latents ({config.embed_dim}, {side}, {side})"
    )
    return 0


CONVERT_EPILOG = """\
The output directory (config.json + diffusion_pytorch_model.safetensors) loads with vqserve's and
diffusers' VQModel.from_pretrained and serves with `vqserve serve --model-path DIR`. A directory holding
just the .ckpt and the .yaml (no config.json) can also be served as it is: it is converted in memory at load.

The .ckpt is read with torch.load(weights_only=True): no code in it runs (pickled Lightning bookkeeping loads
as inert placeholders). Both taming's own configs (model.params with ddconfig, n_embed, embed_dim) and full
latent-diffusion configs (model.params.first_stage_config; weights under first_stage_model.) are understood;
loss, discriminator and EMA weights are dropped. What a VQModel cannot express (a Gumbel or EMA quantizer,
remapped indices, linear attention, conv-less resampling, unknown fields) is refused, naming the YAML field.

example: vqserve convert --format taming --checkpoint logs/vqgan_imagenet_f16_1024/checkpoints/last.ckpt \\
             --config logs/vqgan_imagenet_f16_1024/configs/model.yaml --out vqgan-imagenet-f16-1024
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqserve", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "serve",
        help="run the HTTP server (every `python -m service` flag is accepted)",
        add_help=False,
    )

    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("where the model runs")
    url = os.environ.get("VQSERVE_URL", DEFAULT_URL)
    where.add_argument("--url", default=url, help=f"server to use (env VQSERVE_URL; default {DEFAULT_URL})")
    where.add_argument("--model", help="served model name (remote); default: the server's first")
    where.add_argument("--api-key", default=os.environ.get("VQSERVE_API_KEY"), help="env VQSERVE_API_KEY")
    where.add_argument("--timeout", type=float, default=120.0, help="seconds per request (remote)")
    where.add_argument(
        "--model-path",
        type=Path,
        help="run in-process on this checkpoint instead of a server: a directory, or a Hugging Face Hub repo id "
        "org/name[@revision] (fetched into huggingface_hub's cache; a local directory of that name wins)",
    )
    where.add_argument("--model-subfolder", help="subfolder of --model-path or of the repo (e.g. vqvae, movq)")
    where.add_argument("--device", default="auto", help="in-process device: auto, cpu, cuda, cuda:N")
    where.add_argument(
        "--decoder-dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="in-process decoder dtype (codes stay float32's); bfloat16 needs a CPU with native bf16",
    )
    where.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")

    enc = sub.add_parser("encode", parents=[common], help="images (files or folders) -> .npz/.npy of indices")
    enc.add_argument("inputs", nargs="+", type=Path)
    enc.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help=".npz (name -> (h, w)) or .npy (B, h, w)",
    )
    dec = sub.add_parser("decode", parents=[common], help="an .npz/.npy of indices -> PNGs")
    dec.add_argument("indices", type=Path)
    dec.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    rec = sub.add_parser(
        "reconstruct",
        parents=[common],
        help="folder -> folder of reconstructions, with PSNR",
    )
    rec.add_argument("input", type=Path)
    rec.add_argument("-o", "--output", type=Path, required=True, help="output folder (also gets psnr.csv)")
    gen = sub.add_parser(
        "generate",
        parents=[common],
        help="draw new images from the model's prior -> PNGs and indices.npy",
    )
    gen.add_argument("-n", "--count", type=int, default=16, help="samples to draw (default 16)")
    gen.add_argument("--label", type=int, help="class of a conditional prior (default: unconditional)")
    gen.add_argument("--temperature", type=float, default=1.0, help="below 1 sharper, above 1 more varied")
    gen.add_argument("--top-k", type=int, help="draw among the k most likely codes (default: all)")
    gen.add_argument("--seed", type=int, help="the same seed gives the same samples (default: random, printed)")
    gen.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    sub.add_parser(
        "info",
        parents=[common],
        help="what the model is: config, codebook size, downsample factor",
    )
    conv = sub.add_parser(
        "convert",
        help="a taming-transformers / latent-diffusion .ckpt + .yaml -> a diffusers-format checkpoint directory",
        description="Convert a taming-transformers or latent-diffusion VQGAN checkpoint into a diffusers-format "
        "VQModel directory.",
        epilog=CONVERT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conv.add_argument("--format", required=True, choices=["taming"], help="the checkpoint's format")
    conv.add_argument("--checkpoint", type=Path, required=True, help="the .ckpt (a Lightning or bare state dict)")
    conv.add_argument("--config", type=Path, required=True, help="its .yaml (taming's model.yaml or an LDM config)")
    conv.add_argument("--out", type=Path, required=True, help="directory to write (must be new or empty)")
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace, Backend], int]] = {
    "encode": cmd_encode,
    "decode": cmd_decode,
    "reconstruct": cmd_reconstruct,
    "generate": cmd_generate,
    "info": cmd_info,
}


def run_in_process(args: argparse.Namespace) -> int:
    """The command on a model loaded here. Failures read as against a server: one `error:` line, no traceback
    (a model that cannot load exits 2, as `python -m service` does; bad input exits 1 with the server's words)."""
    from pydantic import ValidationError

    from .errors import ModelLoadError, ServiceError, one_line
    from .settings import describe_invalid

    try:
        backend = LocalBackend(args.model_path, args.model_subfolder, args.device, args.decoder_dtype)
    except ModelLoadError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)  # noqa: T201
        return 2
    except ValidationError as exc:
        print(f"error: {describe_invalid(exc)}", file=sys.stderr)  # noqa: T201
        return 2
    try:
        return COMMANDS[args.command](args, backend)
    except ServiceError as exc:
        print(f"error: {exc.status} {exc.code}: {exc.message}", file=sys.stderr)  # noqa: T201 - as VQServeError
        return 1
    finally:
        backend.engine.close()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        from .__main__ import main as serve

        return serve(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "convert":
        return cmd_convert(args)
    if args.model_path is not None:
        return run_in_process(args)
    with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        try:
            return COMMANDS[args.command](args, RemoteBackend(client, args.model))
        except VQServeError as exc:
            print(f"error: {exc}", file=sys.stderr)  # noqa: T201
            return 1
        except httpx.TransportError as exc:
            print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)  # noqa: T201
            return 1


if __name__ == "__main__":
    sys.exit(main())
