"""edgec's version, in a module of its own so that any layer (the driver's manifest, the
package's `__version__`) can read it without importing the package's top."""

__all__ = ["__version__"]

__version__ = "0.1.0"
