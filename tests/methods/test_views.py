"""Each method's views have the parameters its docstring documents (and cites)."""

from __future__ import annotations

import dataclasses

import pytest

from bench.ssl.config import PretrainConfig
from bench.ssl.registry import get_method

IMAGE = PretrainConfig(crop="image", view_size=224)
WORKING = PretrainConfig(crop="working", view_size=96, zoom_min=0.8, zoom_max=1.25)

# name → {view: (area range of the image, hflip, jitter p, brightness = contrast, blur p, solarize)}
RECIPES = {
    # SimCLR, Chen et al. 2020, Appendix A
    "simclr": {"view": ((0.08, 1.0), 0.5, 0.8, 0.8, 0.5, 0.0)},
    # BYOL, Grill et al. 2020, Table 6: asymmetric blur and solarisation
    "byol": {
        "view1": ((0.08, 1.0), 0.5, 0.8, 0.4, 1.0, 0.0),
        "view2": ((0.08, 1.0), 0.5, 0.8, 0.4, 0.1, 0.2),
    },
    # MoCo-v2 (DenseCL's reference config)
    "densecl": {"view": ((0.2, 1.0), 0.5, 0.8, 0.4, 0.5, 0.0)},
    # the MatSSL seed, ssl_dataset.py
    "matssl": {"view": ((0.2, 1.0), 0.5, 0.8, 0.4, 0.5, 0.0)},
    # the PSCL seed: view 1's crop, both views' jitter ColorJitter(0.16, ...) p 0.8, no blur
    "pscl": {"view1": ((0.25, 1.0), 0.0, 0.8, 0.16, 0.0, 0.0)},
}


@pytest.mark.parametrize("name", RECIPES)
def test_views_have_the_documented_parameters(name: str) -> None:
    method = get_method(name)()
    views = method.views(IMAGE)
    assert set(views) == set(RECIPES[name])
    for key, (scale, hflip, jitter, strength, blur, solarize) in RECIPES[name].items():
        view = views[key]
        assert view.scale == scale and view.area_of == "image" and view.size == 224
        assert (view.hflip, view.jitter, view.blur, view.solarize) == (
            hflip,
            jitter,
            blur,
            solarize,
        )
        assert view.brightness == view.contrast == strength
        assert view.vflip == 0.0 and view.rot90 == 0.0 and view.blur_sigma == (0.1, 2.0)
        ratio = (1.0, 1.0) if name == "pscl" else (3 / 4, 4 / 3)
        assert view.ratio == pytest.approx(ratio)
        # cut in working pixels, only the crop changes: a 96² view of a 77–120 px box
        working = method.views(WORKING)[key]
        assert working.area_of == "view" and working.size == 96
        assert working.scale == pytest.approx((0.64, 1.5625))
        assert dataclasses.replace(working, scale=scale, area_of="image", size=224) == view
