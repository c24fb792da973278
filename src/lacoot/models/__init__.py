"""Model zoo: CIFAR ResNets, ResNet-18/34/50, MobileNetV2, ViT-Tiny and Swin-T in pure torch.

Build models by name with :func:`create`; :func:`list_models` gives the names and
:func:`register_model` adds new ones::

    from lacoot import models

    net = models.create("resnet20", num_classes=10)  # (B, 3, 32, 32) -> (B, 10)
    net = models.create("resnet18", num_classes=200, stem="imagenet")
    net = models.create("vit_tiny", in_channels=1, img_size=28, patch_size=7)
"""

from __future__ import annotations

from . import cifar_resnet, mobilenet, resnet, swin, vit
from ._registry import ModelFactory, create, list_models, register_model
from .cifar_resnet import CifarResNet
from .mobilenet import MobileNetV2
from .resnet import ResNet
from .swin import SwinConfig, SwinTransformer
from .vit import VisionTransformer, ViTConfig

__all__ = [
    "CifarResNet",
    "MobileNetV2",
    "ModelFactory",
    "ResNet",
    "SwinConfig",
    "SwinTransformer",
    "ViTConfig",
    "VisionTransformer",
    "cifar_resnet",
    "create",
    "list_models",
    "mobilenet",
    "register_model",
    "resnet",
    "swin",
    "vit",
]
