"""Helpers for the spawned DDP tests.

Kept out of conftest.py on purpose: spawned workers unpickle these classes by module name, and
`conftest` is not a unique module name once a test folder has its own conftest.py.
"""

import torch.distributed as dist
from lightning.pytorch import Callback


class ReleaseProcessGroup(Callback):
    """Destroys the gloo process group at teardown in spawned DDP workers.

    A worker that exits with its gloo group alive sometimes aborts in C++ teardown
    ("terminate called without an active exception", SIGABRT) after all its work is done,
    which fails the spawn join: seen about once in 6 runs of the DDP predict test, before
    and after this project's changes. Lightning leaves the group alive; this releases it.
    """

    def teardown(self, trainer, pl_module, stage):
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
