#!/bin/sh
# Build the runtime virtual environment from the pinned lock.
#
# This one script is what the Dockerfile's builder stage runs and what tests/deploy/test_install.py runs
# outside a container, so the install that is tested is the install that ships. It must stay POSIX sh,
# use only the pinned constraints, and leave no pip cache behind.
#
# usage: install.sh VENV_DIR SOURCE_DIR
#   PYTHON           interpreter that creates the venv (default: python3)
#   TORCH_INDEX_URL  extra index holding the wanted torch build (CPU or CUDA wheels); empty: default index
set -eu

venv="$1"
src="$2"
python="${PYTHON:-python3}"

"$python" -m venv "$venv"
# shellcheck disable=SC2086  # the optional flag pair must split into two words
"$venv/bin/python" -m pip install --no-cache-dir --disable-pip-version-check \
    ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
    -c "$src/constraints.txt" "$src"

# fail the build here, not at the first request, if the package or its data did not install
"$venv/bin/python" -c "import model, service; print('vqserve installed:', model.__file__, service.__file__)"
