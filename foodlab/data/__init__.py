"""Food segmentation data: synthetic plates, folder layouts, fast indexing, the dataset and its loader.

Exports are resolved lazily (PEP 562) so ``foodlab.data.commands`` — imported by the CLI at
start-up — does not pull in torch and OpenCV.
"""
from __future__ import annotations

from foodlab._lazy import lazy_exports

_EXPORTS = {
    "FoodSegDataset": "foodlab.data.dataset",
    "BadSample": "foodlab.data.dataset",
    "read_image": "foodlab.data.dataset",
    "read_mask": "foodlab.data.dataset",
    "make_loader": "foodlab.data.loader",
    "default_num_workers": "foodlab.data.loader",
    "ensure_synthetic": "foodlab.data.synth",
    "generate_synthetic": "foodlab.data.synth",
    "render": "foodlab.data.synth",
    "DecodedCache": "foodlab.data.cache",
    "LAYOUTS": "foodlab.data.layouts",
    "Layout": "foodlab.data.layouts",
    "LayoutError": "foodlab.data.layouts",
    "detect_layout": "foodlab.data.layouts",
    "resolve_layout": "foodlab.data.layouts",
    "STRATEGIES": "foodlab.data.index",
    "DatasetError": "foodlab.data.index",
    "Index": "foodlab.data.index",
    "build_index": "foodlab.data.index",
    "check_file": "foodlab.data.index",
    "manifest_paths": "foodlab.data.manifest",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
