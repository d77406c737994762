"""The code that the handbook's pages teach.

One module (or subpackage) per chapter; ``runtime`` and ``source`` help the
pages say what they ran on and show the real source of what they teach.
"""

__version__ = "0.1.0"
