"""One module per outside library: what a collapse must keep for that library's models.

Each integration registers a :class:`lacoot.adapters.ModelAdapter` when imported; lacoot imports
it only once the user's code has imported its library (:data:`lacoot.adapters.AUTOLOAD`), so
``import lacoot`` never needs an optional dependency.

* :mod:`lacoot.integrations.hf`: Hugging Face ``transformers`` models.
"""
