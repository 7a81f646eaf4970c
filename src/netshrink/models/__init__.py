"""The model zoo: LeNet-300-100, LeNet-5 (classic and Caffe 20-50-500), a small VGG, ResNet-20,
MobileNetV2, and the networks the seed papers compress: VGG-16, GoogLeNet and DenseNet-BC; plus
``ModelSpec`` / ``build_model`` to name and rebuild any architecture."""

from netshrink.models.densenet import densenet
from netshrink.models.googlenet import googlenet
from netshrink.models.lenet import lenet5, lenet5_caffe, lenet300_100
from netshrink.models.mobilenet import mobilenet_v2
from netshrink.models.registry import MODELS, ModelSpec, build_model
from netshrink.models.resnet import resnet20
from netshrink.models.vgg import vgg16, vgg_small

__all__ = [
    "MODELS",
    "ModelSpec",
    "build_model",
    "densenet",
    "googlenet",
    "lenet300_100",
    "lenet5",
    "lenet5_caffe",
    "mobilenet_v2",
    "resnet20",
    "vgg16",
    "vgg_small",
]
