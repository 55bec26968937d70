"""The network inference runs: batch norms folded into convolutions, the model's own network untouched."""

import numpy as np
import torch
from torch import nn

from napari_cell_unet.inference import predict_probabilities
from napari_cell_unet.inference.inference_network import inference_network
from napari_cell_unet.model import load_model


def _with_nontrivial_statistics(model):
    """Batch-norm statistics and affine parameters far from their initial values, so folding them matters."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.network.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.2)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.network.eval()


def test_folded_network_computes_what_the_network_computes(tiny_model):
    network = _with_nontrivial_statistics(tiny_model)
    folded = inference_network(network, torch.device("cpu"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in network.modules()) > 0  # the original keeps its own
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # folding rounds differently: on an AVX2 CPU a few of 16k logits (of magnitude ~10) moved by 1.6e-4
        np.testing.assert_allclose(folded(x).numpy(), network(x).numpy(), atol=1e-3, rtol=1e-4)


def test_the_bundled_model_folds_every_batch_norm_and_agrees_with_fp32():
    model = load_model()
    folded = inference_network(model.network, torch.device("cpu"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        np.testing.assert_allclose(folded(x).numpy(), model.network.eval()(x).numpy(), atol=2e-3, rtol=1e-3)


def test_a_changed_weight_rebuilds_the_copy_and_prediction_follows_it(tiny_model):
    _with_nontrivial_statistics(tiny_model)
    image = np.random.default_rng(3).random((96, 96)).astype(np.float32)
    first = inference_network(tiny_model.network, torch.device("cpu"))
    assert inference_network(tiny_model.network, torch.device("cpu")) is first  # cached while nothing changed
    before = predict_probabilities(image, tiny_model, device="cpu", precision="fp32")
    with torch.no_grad():  # what an optimizer step does: an in-place update
        tiny_model.network.segmentation_head[0].bias.add_(3.0)
    assert inference_network(tiny_model.network, torch.device("cpu")) is not first
    after = predict_probabilities(image, tiny_model, device="cpu", precision="fp32")
    assert after.mean() > before.mean() + 0.01  # the bias raised every logit: the new weights were used
    assert (after >= before - 1e-6).all()


def test_prediction_leaves_the_model_trainable(tiny_model):
    tiny_model.network.train()
    predict_probabilities(np.random.default_rng(4).random((64, 64)), tiny_model, device="cpu")
    assert tiny_model.network.training
    assert all(p.requires_grad and p.dtype == torch.float32 for p in tiny_model.network.parameters())
