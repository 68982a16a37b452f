"""Running a pipeline: the stage graph (order, skip, resume), manifests, and the run directory it owns."""
