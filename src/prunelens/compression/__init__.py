"""The compression layer: the method interface and compressing a real model with it.

- ``methods``: ``Method``/``WeightMethod`` (the plugin contract, checked at registration) and the method registry;
- ``calibration``: statistics of linear inputs (Hessians, input norms), one layer at a time;
- ``sequential``: whole-model compression layer by layer on compressed activations, drops, checkpoints;
- ``per_unit``: a plan with its own method and level per unit, through the same layer loop;
- ``obs_solver``, ``quant_grid``, ``sparsity_masks``: the tensor math shared by the built-in methods;
- ``resume``: layer-by-layer work kept on disk so that a killed run resumes;
- ``remove_dropped``: load a checkpoint with its dropped sublayers physically removed.

May import ``prunelens.model``, ``prunelens.text`` and the base modules.
"""
