#!/usr/bin/env bash
# Wheels the GPU image lacks, for bench/gpu/check.sh (run here, where pip reaches PyPI; the
# GPU machine has no network). .whl/ is git-ignored; the device tool carries it
# (run(carry=[".whl"])). The image has absl-py and PyYAML, ml_collections' only needs.
set -eu
cd "$(dirname "$0")/../.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl ml_collections==1.1.0
ls -la .whl
