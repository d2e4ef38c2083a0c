"""The Keras-free base: every shared name and on-disk format, and the tools that keep files safe.

``backend`` (the Keras backend, chosen before Keras loads), ``names`` (models, labels, losses),
``files`` (atomic writes), ``locks`` (one writer per folder), ``workers`` (the process pool),
``videos`` (decoding and encoding video files, the videos in a folder), ``store`` (the prepared
and embedding stores), ``runs`` (the run folder) and ``doctor`` (what ``nightact doctor``
reports: the backend, versions, and the devices each backend sees). Nothing here imports a later
stage.
"""
