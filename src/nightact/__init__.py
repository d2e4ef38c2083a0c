"""nightact: recognise human actions in night-time video with recurrent networks.

The package tree is the pipeline, and imports go one way, down it (``make lint`` checks it)::

    core/       the Keras-free base: names, files, locks, video files, the store and run formats
    sources/    synthetic night videos and the NoctAct-HAR download    -> videos/<class>/*.mp4
    data/       split, prepare, leakage, embed, sampling, augment, batches -> STORE/, batches
    nets/       the six models, pretrained frame encoders, the cells explained
    training/   train one model: config, steps, callbacks, checkpoints    -> RUN/
    scoring/    evaluate, robustness, compare                              -> metrics, REPORT/
    serve/      predict, timeline, export                                  -> predictions, files
    demo, study the whole line on synthetic videos; a grid of runs ending in a report
    cli/        the ``nightact`` command, a thin layer over all of the above

Importing ``nightact`` is cheap: nothing here imports Keras or a deep-learning backend, so the
data commands start fast. Modules that need Keras import it themselves. Importing it does choose
the Keras backend, by setting ``KERAS_BACKEND`` where the user has not
(:mod:`nightact.core.backend`).
"""

from nightact.core.backend import use_default_backend
from nightact.core.names import VERSION as __version__

__all__ = ["__version__", "predict"]

# Before anything imports Keras: the backend measured fastest here, unless the user chose one.
use_default_backend()


def predict(model, paths, **kwargs):
    """Predict the action in each video; see :func:`nightact.serve.predict.predict_videos`."""
    # Imported on call: ``import nightact`` stays light for the data commands.
    from nightact.serve.predict import predict_videos

    return predict_videos(model, paths, **kwargs)
