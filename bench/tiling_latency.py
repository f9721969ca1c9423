"""The two latency goals of issue 15 alone, quickly (`python -m bench.tiling --part service` takes ~25 min on 2 cores):
bench.tiling's deadline phase (a 3 s deadline: the 4096² answers 504, then how long a small request takes), then
20 sequential 256² reconstructs starting 5 s into a 4096² reconstruct.

    python -m bench.tiling_latency
"""

import json

import numpy as np

from bench.tiling import (
    DEFAULT_CHECKPOINT,
    RssSampler,
    Sizes,
    deadline_phase,
    photo,
    png,
    post,
    service,
    stream_during_large,
)


def main() -> None:
    sizes = Sizes()
    flat = png(np.full((sizes.large, sizes.large, 3), (118, 141, 163), dtype=np.uint8))
    small = png(photo("astronaut", sizes.small))
    print(json.dumps({"deadline": deadline_phase(DEFAULT_CHECKPOINT, sizes, flat, small, alone=4)}), flush=True)
    env = {"VQSERVE_REQUEST_TIMEOUT_S": "3600", **sizes.server_env}
    with service(DEFAULT_CHECKPOINT, env) as (url, pid), RssSampler(pid):
        post(f"{url}/reconstruct", small, "image/png")  # warm-up
        stream = stream_during_large(url, flat, small, count=20, delay_s=5.0, wait=False)
    print(json.dumps({"stream_during_4096": stream}), flush=True)


if __name__ == "__main__":
    main()
