#!/usr/bin/env bash
# Make the virtual environment in which benchmarks/adapterhub_worker.py runs AdapterHub.
#
# AdapterHub's `adapters` 1.3.0 pins transformers 4.x while pal_adapters needs 5.x, so AdapterHub
# lives in its own venv: benchmarks/.venv-adapterhub (gitignored). torch is installed first from
# the local wheel (pip's find-links) so that `adapters` does not pull another build of it.
#
#   bash benchmarks/adapterhub_env.sh            # ~1-3 minutes; idempotent
#   ADAPTERHUB_VENV=/some/path bash benchmarks/adapterhub_env.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${ADAPTERHUB_VENV:-$here/.venv-adapterhub}"
torch_version="$(python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || echo 2.13.0)"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import adapters, torch" 2>/dev/null; then
    echo "$venv: adapters $("$venv/bin/python" -c 'import adapters; print(adapters.__version__)') ready"
    exit 0
fi
python -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "torch==$torch_version"
"$venv/bin/python" -m pip install -q "adapters==1.3.0"
"$venv/bin/python" -c "import adapters, torch, transformers; print('adapters', adapters.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
