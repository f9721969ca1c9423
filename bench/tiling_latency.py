"""The two latency goals of issue 15 alone, quickly (`python -m bench.tiling --part service` takes ~25 min on 2 cores):
bench.tiling's deadline phase (a 3 s deadline: the 4096² answers 504, then how long a small request takes), then
20 sequential 256² reconstructs starting 5 s into a 4096² reconstruct.

    python -m bench.tiling_latency
"""

import json
import statistics
import time

import numpy as np

from bench.tiling import DEFAULT_CHECKPOINT, RssSampler, Sizes, in_thread, photo, png, post, service


def main() -> None:
    sizes = Sizes()
    flat = png(np.full((sizes.large, sizes.large, 3), (118, 141, 163), dtype=np.uint8))
    small = png(photo("astronaut", sizes.small))
    env = {"VQSERVE_REQUEST_TIMEOUT_S": str(sizes.short_timeout_s), **sizes.server_env}
    with service(DEFAULT_CHECKPOINT, env) as (url, pid), RssSampler(pid):
        alone = [post(f"{url}/reconstruct", small, "image/png") for _ in range(4)]
        large = post(f"{url}/reconstruct", flat, "image/png")
        after = post(f"{url}/reconstruct", small, "image/png")
        print(
            json.dumps(
                {
                    "deadline": {
                        "timeout_s": sizes.short_timeout_s,
                        "small_alone_s": [r.seconds for r in alone],
                        "large_status": large.status,
                        "large_s": large.seconds,
                        "small_status": after.status,
                        "small_s": after.seconds,
                    }
                }
            ),
            flush=True,
        )
    env = {"VQSERVE_REQUEST_TIMEOUT_S": "3600", **sizes.server_env}
    with service(DEFAULT_CHECKPOINT, env) as (url, pid), RssSampler(pid):
        post(f"{url}/reconstruct", small, "image/png")
        thread, _ = in_thread(lambda: post(f"{url}/reconstruct", flat, "image/png"))
        time.sleep(5.0)
        replies = [post(f"{url}/reconstruct", small, "image/png") for _ in range(20)]
        lat = [r.seconds for r in replies]
        print(
            json.dumps(
                {
                    "stream_during_4096": {
                        "statuses": sorted({r.status for r in replies}),
                        "median_s": round(statistics.median(lat), 2),
                        "p90_s": sorted(lat)[17],
                        "max_s": max(lat),
                        "large_running": thread.is_alive(),
                        "latencies_s": lat,
                    }
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
