"""Qt dock widgets for napari. Thin adapters over the core (inference, training, model).

Importing this package installs the triton guard first (see `napari_cell_unet._torch_guard`): napari imports
a widget module only when the user opens it, which is after its OpenGL context exists.
"""

from .._torch_guard import install_triton_guard

install_triton_guard()
