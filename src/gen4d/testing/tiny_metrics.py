"""Tiny random-weight metric networks in the published file layouts, for tests and ``--models tiny``.

:func:`make_tiny_metric_weights` writes, into one folder, the files :mod:`gen4d.eval.lpips` and :mod:`gen4d.eval.fvd`
look for in :func:`~gen4d.eval.common.metrics_dir`, and a CLIP model folder for :mod:`gen4d.eval.clip_score`:

* ``alexnet-owt-7be5be79.pth``: torchvision's AlexNet layout (the five ``features.*`` convolutions; the classifier
  is not written, LPIPS does not use it), random weights;
* ``alex.pth``: the lpips package's v0.1 linear heads (``lin{0..4}.model.1.weight``), random non-negative;
* ``i3d_pretrained_400.pt``: a plain InceptionI3d state dict (Consistent4D's FVD layout) with every channel width
  divided by 16 and 400 classes;
* ``clip/``: a two-layer ``transformers.CLIPModel`` (32-pixel images, 8-pixel patches) saved with
  ``save_pretrained``, loaded back through ``from_pretrained`` like the published model.

LPIPS keeps its real AlexNet shapes (the converter checks them); it is small enough (2.5 M parameters).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from ..eval.fvd import I3D_STATE_DICT_FILE
from ..eval.i3d import I3DWidths, InceptionI3d
from ..eval.lpips import ALEXNET_FILE, LPIPS_ALEX_FILE, expected_torchvision_alexnet_shapes

LPIPS_CHANNELS = (64, 192, 384, 256, 256)


def make_tiny_metric_weights(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny metric weights (see the module docstring) into ``folder``; returns it."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    alex = {}
    for key, shape in expected_torchvision_alexnet_shapes(include_classifier=False).items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        alex[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5 if len(shape) > 1 else torch.zeros(shape)
    torch.save(alex, folder / ALEXNET_FILE)
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) / c for k, c in enumerate(LPIPS_CHANNELS)}
    torch.save(heads, folder / LPIPS_ALEX_FILE)

    torch.manual_seed(seed + 1)
    i3d = InceptionI3d(num_classes=400, widths=I3DWidths().scaled(16))
    with torch.no_grad():
        for m in i3d.modules():
            # He initialisation keeps the signal alive through the ~20 narrow ReLU layers (PyTorch's default conv
            # initialisation shrinks it layer by layer, leaving nearly input-independent features).
            if isinstance(m, torch.nn.Conv3d) and m is not i3d.logits.conv3d:
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, torch.nn.BatchNorm3d):  # non-trivial running statistics, as in a trained network
                m.running_mean.normal_(0.0, 0.05)
                m.running_var.uniform_(0.8, 1.2)
    torch.save(i3d.state_dict(), folder / I3D_STATE_DICT_FILE)

    torch.manual_seed(seed + 2)
    text = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
            "max_position_embeddings": 32, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder / "clip")
    (folder / "done").write_text("tiny metric weights\n")
    return folder
