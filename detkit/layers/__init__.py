"""Shared CNN layer library: conv blocks, norms, activations and init helpers."""

from detkit.layers.conv import (
    ConvNormAct,
    SeparableConv,
    UpsampleConvTranspose,
    channel_shuffle,
    conv1x1,
    conv_output_size,
    make_divisible,
    same_padding,
)
from detkit.layers.inception import Inception
from detkit.layers.init import init_norms, kaiming_init, normal_init, prior_probability_bias, xavier_init
from detkit.layers.norm import (
    NormSpec,
    build_activation,
    build_norm,
    convert_frozen_batchnorm,
    freeze_module,
    is_norm,
)
from detkit.layers.pool import MaxPool2d, max_pool2d_3x3s2, strided_max_pool_3x3s2

__all__ = [
    "ConvNormAct",
    "SeparableConv",
    "UpsampleConvTranspose",
    "Inception",
    "channel_shuffle",
    "conv1x1",
    "conv_output_size",
    "make_divisible",
    "same_padding",
    "init_norms",
    "kaiming_init",
    "normal_init",
    "prior_probability_bias",
    "xavier_init",
    "NormSpec",
    "build_activation",
    "build_norm",
    "convert_frozen_batchnorm",
    "freeze_module",
    "is_norm",
    "MaxPool2d",
    "max_pool2d_3x3s2",
    "strided_max_pool_3x3s2",
]
