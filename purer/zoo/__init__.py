"""The teacher zoo: build, describe, verify and load pre-trained classifiers.

A zoo is a folder with ``zoo.json`` (:mod:`purer.zoo.manifest`, documented
in docs/zoo.md) and one safetensors file per teacher.
"""

from purer.zoo.add import add_teacher
from purer.zoo.build import build_zoo
from purer.zoo.load import load_teachers
from purer.zoo.manifest import Manifest, TeacherEntry, load_manifest, save_manifest

__all__ = ["Manifest", "TeacherEntry", "add_teacher", "build_zoo", "load_manifest",
           "load_teachers", "save_manifest"]
