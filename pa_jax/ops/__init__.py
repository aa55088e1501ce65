"""Pure, static-shape detection ops (jnp functions, no modules, no state).

One concept per file: `boxes` (area, IoU, encode/decode, clip), `anchors`, `matching`
(`Assignment`), `sampling` (balanced fixed-size sampling), `nms` (padded greedy NMS),
`roi_align` (single image, vmap-lifted, multi-level), `masks` (mask targets from the label map,
paste-back into a label map). Boxes are always float32 `(x0, y0, x1, y1)` absolute pixels and
padding is described by a boolean `valid` (True = real element).
"""
