import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test models are tiny: one thread is faster than two (no OpenMP hand-offs) and keeps the
# suite's time steady when the machine is shared.
torch.set_num_threads(1)
