"""A CPU stage for tests: it takes a module-level lock (as any library a worker uses may) and reports which
process ran it. Importable by worker processes."""

import os
import threading

from datasets import Value

from charattr_hf.stages.base import Stage

LOCK = threading.Lock()


class Probe(Stage):
    name = "probe"
    cpu_bound = True

    def features(self) -> dict:
        return {"worker_pid": Value("int64"), "worker_parent": Value("int64")}

    def process(self, batch: dict) -> dict:
        with LOCK:  # a forked child of a process whose other thread held LOCK would wait here forever
            n = len(next(iter(batch.values())))
            return {"worker_pid": [os.getpid()] * n, "worker_parent": [os.getppid()] * n}
