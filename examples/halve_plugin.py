"""A complete prunelens plugin in one file: a method that scales a unit's weights by ``factor``.

Use it:   prunelens --plugin examples/halve_plugin.py plugins
          prunelens --plugin examples/halve_plugin.py probe --method halve:factor=0.5 ...
"""

from prunelens import Param, WeightMethod, hookimpl


class Halve(WeightMethod):
    name = "halve"
    params = {"factor": Param(float, 0.5, "multiplier")}

    def compress_weight(self, weight, stats=None):
        return weight * self.factor


@hookimpl
def register_methods(register):
    register(Halve)
