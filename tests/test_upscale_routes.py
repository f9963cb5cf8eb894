"""The upscale pipeline reaches the right path for each model family through the server."""
from __future__ import annotations

import pytest

from cinegen.common.client import build_request
from cinegen.common.exr import read_exr_frame
from cinegen.common.params import CommonParams, UpscaleParams


def test_wan_models_take_the_dit_path_through_the_server(client, tmp_path):
    request = build_request("upscale", CommonParams(prompt="a red disc", model="tiny-wan", seed=1, steps=3,
                                                    out=str(tmp_path / "wan.####.exr")),
                            UpscaleParams(scale=2.0))
    result = client.run(request)
    assert result.state == "completed", result.message
    frames = sorted(result.outputs)
    assert len(frames) == 5
    pixels, meta = read_exr_frame(frames[0])
    assert pixels.shape[:2] == (64, 64) and meta["cinegen:model"] == "tiny-wan"


def test_wan_request_with_an_impossible_frame_count_is_refused(client, tmp_path):
    from cinegen.common.client import RequestRejected

    request = build_request("upscale", CommonParams(model="tiny-wan", frames=6, steps=3,
                                                    out=str(tmp_path / "wan.####.exr")), UpscaleParams(scale=2.0))
    with pytest.raises(RequestRejected) as err:
        client.submit(request)
    assert err.value.code == "INVALID_ARGUMENT" and "9" in err.value.message
