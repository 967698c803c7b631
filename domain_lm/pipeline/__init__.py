"""The pipeline: stages as typed values (``stage``), wired once (``graph``), run with fingerprints,
skip and resume (``run``), stored atomically (``store``) and reported (``report``).

Import the submodules directly; this package imports nothing so that the stage glue modules can
import ``pipeline.stage`` without pulling in the graph that imports them.
"""
