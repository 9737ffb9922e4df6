#!/usr/bin/env bash
# Install cpsample and its dependencies. torch comes first and pinned, so pip takes the local CPU build
# instead of resolving a multi-GB CUDA wheel; on a GPU machine install your CUDA torch before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q -e ".[test,latent,faiss]"
