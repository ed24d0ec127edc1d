"""nn.Modules and their builders. torch is imported here (and in engine/, pseudo/prm.py,
pseudo/ccgr.py) only, so verbs that do not run a model start without it."""

# The detector's choices, here (no torch) so the CLI can check its options without importing torch.
DETECTOR_BACKBONES = ("resnet50", "resnet18", "mobilenet_v3")
CLASSIFIER_BACKBONES = ("resnet50", "resnet18")
IOU_TARGETS = ("iou", "sqrt", "square")  # what the IoU branch regresses: t(IoU)
