"""Chapter: building U-Net and MobileNet from blocks.

``unet``: the U-Net of Ronneberger et al. (2015) from four small blocks.
``mobilenet``: MobileNet v1 from a config table, and MobileNet v2 with
torchvision's ``state_dict`` keys.
"""
