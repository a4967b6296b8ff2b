"""Device choice (device.py): CUDA asked for where no GPU is visible is a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_uam import pipeline, radiomics
from napari_uam.device import resolve_device
from napari_uam.errors import DeviceError


HAS_CUDA = torch.cuda.is_available()


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without a CUDA GPU")
def test_cuda_requested_without_a_gpu():
    with pytest.raises(DeviceError, match="no GPU is visible.*choose 'cpu'"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="no GPU"):
        pipeline.get_classifier(None, device="cuda")
    lab = np.zeros((32, 32), np.int32)
    lab[8:16, 8:16] = 1
    with pytest.raises(DeviceError, match="no GPU"):
        radiomics.extract(np.full((32, 32, 3), 200, np.uint8), lab, device="cuda")
