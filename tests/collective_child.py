"""A rank of tests/test_launch.py's jobs: ``python collective_child.py [hang]`` joins the job's process group
(where regrad refuses unsupported accelerate settings), prints its torch thread count, and with ``hang`` leaves
rank 0 waiting in a barrier while rank 1 sleeps far longer than the collective timeout. Its errors reach the
launcher as a step's do (``launch.main``'s error recorder)."""

import sys
import time

import torch

from regrad_lib.io import distributed
from regrad_lib.runner import launch


@launch._record
def main() -> None:
    job = distributed.init("cpu")
    print(f"rank {job.rank} threads={torch.get_num_threads()}", flush=True)
    if "hang" in sys.argv[1:] and job.rank == 1:
        time.sleep(300)
    distributed.barrier()
    distributed.finish()


if __name__ == "__main__":
    main()
