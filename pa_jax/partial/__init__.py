"""Everything specific to partial labels (DESIGN.md "The partial-annotation module (exact)").

- `targets`: centerness targets from the annotated instances, balanced pixel sampling over the
  batch, the fixed-size centerness anchors, the median nucleus size, and the two PA losses.
- `pa_boxes`: PA boxes from the centerness map (threshold -> connected components -> peak
  cell -> decoded, clipped box), device or host component labelling.
- `ignore`: background candidates near a PA box become IGNORE; coverage diagnostics.

Submodules are not re-exported here on purpose: `pa_boxes` is both a module and a function.
The baseline model never imports this package unless `config.model.partial.enabled`.
"""
