"""``gen4d batch``: many gen4d jobs on Ray, one run directory per job (see :mod:`gen4d.batch.run`).

The job list (:mod:`gen4d.batch.jobs`) needs no Ray; running it does (``pip install -e ".[batch]"``).
"""

from .jobs import Job, read_jobs

__all__ = ["Job", "read_jobs"]
