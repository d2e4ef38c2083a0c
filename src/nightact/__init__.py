"""nightact: recognise human actions in night-time video with recurrent networks.

The package is flat, one module per idea, and data flows one way:

    synthetic / download -> videos (decode, sample, letterbox) -> dataset (prepared store)
    -> models -> train -> evaluate -> report

Importing ``nightact`` is cheap: nothing here imports Keras or a deep-learning backend, so the
data commands start fast. Modules that need Keras import it themselves.
"""

__version__ = "0.1.0"


def predict(model, paths, **kwargs):
    """Predict the action in each video; see :func:`nightact.inference.predict_videos`."""
    from nightact.inference import predict_videos

    return predict_videos(model, paths, **kwargs)
