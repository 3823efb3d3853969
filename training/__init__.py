"""The stereo_pose3d training module: data, augmentation, losses, loops, evaluation and export.

Run as ``python -m training <command>`` from the repository root. It imports ``stereo_pose3d``;
the installed package never imports it.
"""
