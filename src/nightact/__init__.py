"""nightact: recognise human actions in night-time video with recurrent networks.

The package is flat, one module per idea, and data flows one way:

    synthetic / download -> videos (decode, sample, letterbox) -> dataset (prepared store)
    -> models -> train -> evaluate -> report

Importing ``nightact`` is cheap: nothing here imports Keras or a deep-learning backend, so the
data commands start fast. Modules that need Keras import it themselves. Importing it does choose
the Keras backend, by setting ``KERAS_BACKEND`` where the user has not (:mod:`nightact.backend`).
"""

from nightact.backend import use_default_backend

__version__ = "0.1.0"

# Before anything imports Keras: the backend measured fastest here, unless the user chose one.
use_default_backend()


def predict(model, paths, **kwargs):
    """Predict the action in each video; see :func:`nightact.inference.predict_videos`."""
    from nightact.inference import predict_videos

    return predict_videos(model, paths, **kwargs)
