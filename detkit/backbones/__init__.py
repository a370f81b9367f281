"""Backbones: LeNet-5, AlexNet, VGG, GoogLeNet, ResNet, MobileNet V1/V2, a small CPU net and FPN, behind one contract.

Every backbone maps ``Tensor[N, 3, H, W]`` to an OrderedDict of named feature maps and
declares their channels and strides with ``feature_specs()`` (see `base.Backbone`).

    >>> from detkit.backbones import build_backbone
    >>> backbone = build_backbone("resnet50", norm="frozen_bn", freeze_at=2)
    >>> dict(backbone.feature_specs())["c5"]
    FeatureSpec(channels=2048, stride=32)

Importing the architecture modules (alexnet, fpn, googlenet, lenet, mobilenet, resnet, simple, vgg)
registers their variants.
"""

from detkit.backbones.alexnet import AlexNet
from detkit.backbones.base import Backbone, FeatureSpec, StagedBackbone
from detkit.backbones.fpn import FPN, build_fpn_backbone
from detkit.backbones.googlenet import GoogLeNet
from detkit.backbones.lenet import LeNet5
from detkit.backbones.mobilenet import InvertedResidual, MobileNetV1, MobileNetV2
from detkit.backbones.registry import (
    ENTRY_POINT_GROUP,
    build_backbone,
    get_builder,
    list_backbones,
    register_backbone,
    unregister_backbone,
)
from detkit.backbones.resnet import BasicBlock, Bottleneck, ResNet
from detkit.backbones.simple import SimpleConvNet
from detkit.backbones.vgg import VGG
from detkit.backbones.weights import (
    DROPPED_KEYS,
    convert_torchvision_state_dict,
    load_backbone_weights,
    read_checkpoint,
)

__all__ = [
    "AlexNet",
    "GoogLeNet",
    "LeNet5",
    "DROPPED_KEYS",
    "ENTRY_POINT_GROUP",
    "FPN",
    "VGG",
    "Backbone",
    "BasicBlock",
    "Bottleneck",
    "FeatureSpec",
    "InvertedResidual",
    "MobileNetV1",
    "MobileNetV2",
    "ResNet",
    "SimpleConvNet",
    "StagedBackbone",
    "build_backbone",
    "build_fpn_backbone",
    "convert_torchvision_state_dict",
    "get_builder",
    "list_backbones",
    "load_backbone_weights",
    "read_checkpoint",
    "register_backbone",
    "unregister_backbone",
]
