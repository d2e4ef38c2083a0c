"""Where videos come from: the built-in synthetic night videos and the NoctAct-HAR download.

Both write ``<folder>/<class name>/*.mp4``, the layout ``nightact prepare`` reads.
"""
