"""Synthetic H&E-like cohorts: pyramidal Aperio-style slides with a class signal that is clear
at 20x and faint at 5x (docs/synth.md)."""

from lrmil.synth.cohort import GENERATOR_VERSION, SlideSpec, make_cohort, plan_cohort
from lrmil.synth.scene import Region, Scene, SynthConfig, make_scene
from lrmil.synth.slide import write_slide

__all__ = [
    "GENERATOR_VERSION",
    "Region",
    "Scene",
    "SlideSpec",
    "SynthConfig",
    "make_cohort",
    "make_scene",
    "plan_cohort",
    "write_slide",
]
