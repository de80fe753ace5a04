"""ImgSmaller: a self-hostable image compression service. `create_app` builds the Flask app.

The factory is imported on first call, not here, so that `import imgsmaller.engine`
(the pure compression library, used alone by the benchmark) does not pull in Flask.
"""


def create_app(test_config=None):
    from .factory import create_app as build_app

    return build_app(test_config)
