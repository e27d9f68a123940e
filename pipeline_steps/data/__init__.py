"""Image data: the generated shape dataset, ImageNet-style folders, and the sample manifest."""
