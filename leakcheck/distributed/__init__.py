"""Tensor-parallel runners: one audit per rank, one verdict.

`launch.py` starts the ranks with torch's elastic launcher (the engine behind torchrun);
`rank.py` is what each rank runs (an isolated `leakcheck run`, so a crashed rank still leaves
a report); `group.py` joins the default process group in the audited process, before
`baseline`; `merge.py` combines the rank reports into one; `to_file.py` is the API for
engines that start their own workers. Reports travel as files, never over the device.
"""

BACKEND_ENV = "LEAKCHECK_DIST_BACKEND"  # set for a rank's processes: join the default group with it
DEVICE_ENV = "LEAKCHECK_DIST_DEVICE"  # "cpu" or "cuda": where each rank runs
