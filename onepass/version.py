"""The package's version, in a module of its own so that what records it (onepass.records) need not import the
package's ``__init__`` and all it reaches."""

__version__ = "0.1.0"
