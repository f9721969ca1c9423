"""vqserve's HTTP service: routes -> codecs -> batcher -> engine. Never imported by `model/`."""
