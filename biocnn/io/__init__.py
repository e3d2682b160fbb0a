"""Reading, validating and writing the files biocnn works with.

Every reader raises :class:`biocnn.errors.InputError` naming the file and the problem; every
writer goes through :mod:`biocnn.io.atomic` so a crash never leaves a half-written output.
"""
