"""Helpers shared by every test package, as plain modules (fixtures stay in the conftest files and call these).

- `checkpoints`: random-weight test checkpoints on disk, one named model size per constant.
- `servers`: the one way to serve the app to a test: a `python -m service` subprocess, a real uvicorn on a thread
  of the test process, or the in-process `TestClient`; plus metrics read-outs and holding the engine busy.
- `constants`: paths and headers many test files use (`ROOT`, `WEIGHTS`, `PNG`).
- `images`: seeded test images as arrays, Pillow images and file bytes.
- `reference`: the pixel <-> [-1, 1] conversions expected values are computed with, independent of `model.pixels`.
"""
