"""Synthetic stereo data: pybullet's DeepMimic humanoid and motion clips, rendered over
procedural scenes by a random stereo rig (rectified or raw), written as the stereo dataset format
(``training.data.stereo_dataset``) or as rosbag2 recordings (``training.synth.bag``).

Modules: ``motion`` (clips, slerp, MPII joints), ``cameras`` (rigs), ``textures`` / ``scene``
(procedural backgrounds), ``render`` (compositing), ``generate`` (parallel dataset writer),
``bag`` (rosbag2), ``cli`` (``python -m training synth``). See docs/synthetic_data.md.
"""
