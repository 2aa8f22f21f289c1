"""Streamfit's tests. Imported before any conftest, so what is set here holds in every test process.

One OpenMP/BLAS thread in every test process and each process it starts (Dagster runs, scorers):
two xdist workers already fill the two cores, and OpenMP's threads spin while they wait, so on a
loaded machine a gradient-boosting parity check took 33 s instead of 0.3 s. Set before numpy and
scikit-learn load their thread pools. Speed is measured in benchmarks/, not here.
"""

import os

for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")
