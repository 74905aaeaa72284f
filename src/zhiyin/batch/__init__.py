"""`zhiyin batch`: every piece a jobs file lists, made by the continuous-batching engine (zhiyin/engine.py) on this
machine or by Ray Data actors on a cluster; files written as `zhiyin generate` writes them, a manifest of what is
done, and a run made again finishing what is not (jobs.py, manifest.py, run.py)."""
