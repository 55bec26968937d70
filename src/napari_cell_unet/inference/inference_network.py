"""The network as inference runs it: an eval-mode copy on the device, with each batch norm folded into the
convolution before it when the network computes in fp32. The model's own network is never changed, so training
can go on from it.

Not folded under bf16 autocast: the folded weights' bf16 rounding moved the automatic diameter (LIVECell frame
21.8 -> 25.0 px) and cost 0.036 F1 on the DSB fluorescence test images, where batch norm applied on its own keeps
fp32's result (benchmarks/RESULTS.md, issue 10)."""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# attribute pairs (conv, batch norm) that torchvision's ResNet blocks apply one right after the other
_RESNET_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def inference_network(network: nn.Module, device: torch.device, dtype: torch.dtype = torch.float32,
                      channels_last: bool = False, fold: bool = True) -> nn.Module:
    """An eval-mode copy of `network` on `device`, its weights in `dtype`, batch norms folded if `fold`.

    Folding removes one pass over every feature map per layer (+16 % fp32 forward speed on 1024², bench_speed.py).
    The copy is cached for CPU use and rebuilt whenever a weight or a running statistic has changed since
    (training steps bump the tensors' versions).
    """
    key = (str(device), dtype, channels_last, fold, _weights_version(network))
    cached = _CACHE.get(network)
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        folded = copy.deepcopy(network).eval()
        if fold:
            fold_batch_norms(folded)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        folded = folded.to(device=device, dtype=dtype, memory_format=memory_format)
    for parameter in folded.parameters():
        parameter.requires_grad_(False)
    if device.type == "cpu":  # a GPU copy is not kept: its memory is freed when the predictor closes
        _CACHE[network] = (key, folded)
    return folded


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Fold, in place, every eval-mode batch norm that directly follows a convolution (in an `nn.Sequential`, or
    as a torchvision ResNet's convN/bnN) into that convolution. Others are left as they are."""
    for child in module.children():
        fold_batch_norms(child)
    if isinstance(module, nn.Sequential):
        items = list(module._modules.items())
        for (conv_name, conv), (norm_name, norm) in zip(items, items[1:]):
            if _foldable(conv, norm):
                module._modules[conv_name] = fuse_conv_bn_eval(conv, norm)
                module._modules[norm_name] = nn.Identity()
    elif _is_torchvision_resnet(module):
        for conv_name, norm_name in _RESNET_PAIRS:
            conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
            if _foldable(conv, norm):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(module, norm_name, nn.Identity())
    return module


def _is_torchvision_resnet(module: nn.Module) -> bool:
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet  # smp's resnet encoders subclass these

    return isinstance(module, (ResNet, BasicBlock, Bottleneck))


def _foldable(conv: Any, norm: Any) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and not norm.training
            and norm.track_running_stats and norm.running_mean is not None and conv.out_channels == norm.num_features)


def _weights_version(network: nn.Module) -> tuple:
    return tuple((id(t), t._version) for t in (*network.parameters(), *network.buffers()))
