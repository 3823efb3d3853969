"""Datasets on disk: the stereo sample format (synthetic and MADS) and its reader."""
