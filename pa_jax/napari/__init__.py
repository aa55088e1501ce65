"""napari plugin of pa_jax: thin widgets over the library (docs/napari.md).

Registered through the `napari.manifest` entry point (pyproject.toml) with the npe2
manifest `napari.yaml` beside this file:

  reader.py           pa_jax label maps + `.nuclei.json` review states -> Labels layers
  segment_widget.py   segment the active image: classical floor, shipped model or a trained run (+ attention)
  annotate_widget.py  the annotation assistant over `pa_jax.annotate.session.Session`

The napari-free parts (state colours, layer arrays, model choices, the progress adapter)
live in `colors.py`, `layer_image.py`, `engines.py` and `progress.py`, so their rules are
tested without a GUI. Nothing here segments, trains or merges: the widgets call the same
library functions as `run.py`.
"""
